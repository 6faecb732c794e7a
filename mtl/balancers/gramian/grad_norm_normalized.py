"""``grad_norm_normalized``: every task gradient rescaled to unit norm before summing.

Paper: none of its own; this is the "equal gradient magnitudes" target of Z. Chen, V. Badrinarayanan,
C.-Y. Lee & A. Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
Multitask Networks", ICML 2018 (https://arxiv.org/abs/1711.02257) with ``alpha = 0``, solved in closed
form one step at a time.

Formula::

    w_i = 1 / max(||g_i||, eps),      ||g_i|| = sqrt(G_ii)

No task dominates the shared update by the mere size of its gradient; scaling a loss (hence its
gradient) by ``c > 0`` leaves ``w_i g_i`` unchanged, and a constant shift of a loss does not change its
gradient at all. Needs the Gramian's diagonal only, hence every task in every step.

Knobs:
    ``eps`` (1e-8): guards a zero gradient.
    ``source`` ("representation"): representation | parameters: where task gradients are taken.

Deviations from the official code: not applicable.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtl.balancers.base import BalanceInput, Balancer, GradientSource, register_balancer
from mtl.balancers.gramian.base import input_gradient_norms


@register_balancer("grad_norm_normalized")
class GradNormNormalized(Balancer):
    """Each task gradient rescaled to unit norm before summing: ``w_i = 1 / ||g_i||``.

    Why: no task dominates the shared update by the mere size of its gradient; scaling a loss
    (hence its gradient) by ``c > 0`` leaves ``w_i g_i`` unchanged, and a constant shift of a loss
    does not change its gradient at all. This is GradNorm's "equal gradient magnitudes" target
    with alpha = 0 solved in closed form, one step at a time. ``||g_i|| = sqrt(G_ii)`` from the
    Gramian; ``eps`` guards a zero gradient.
    """

    needs_gramian = True

    def __init__(
        self, task_names: Sequence[str], eps: float = 1e-8, source: GradientSource | None = "representation"
    ) -> None:
        super().__init__(task_names, source=source)
        self.eps = float(eps)

    def weights(self, inp: BalanceInput) -> Tensor:
        self.index(inp.tasks)  # reject tasks this balancer was not built for
        return 1.0 / input_gradient_norms(inp).clamp_min(self.eps)

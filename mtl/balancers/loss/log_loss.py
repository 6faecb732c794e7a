"""``log_loss``: minimise ``sum_i log L_i``, i.e. weight each loss by its inverse.

Papers: the scale-invariant "log loss" baseline discussed in V. Kurin, A. De Palma, I. Kostrikov,
S. Whiteson & M. P. Kumar, "In Defense of the Unitary Scalarization for Deep Multi-Task Learning",
NeurIPS 2022 (https://arxiv.org/abs/2201.04122), and in B. Liu, Y. Feng, P. Stone & Q. Liu, "FAMO:
Fast Adaptive Multitask Optimization", NeurIPS 2023, Sec. 3 (https://arxiv.org/abs/2306.03792).

Formula::

    grad sum_i log L_i = sum_i grad L_i / L_i      =>      w_i = 1 / max(L_i, eps)

The weight is a constant in the backward (gradient stopped), so ``w_i * L_i`` is 1 in value and the
update is ``sum_i grad(L_i) / L_i``: multiplying a loss by a constant changes nothing (scale invariance).

Knobs:
    ``eps`` (1e-8): guards a zero loss, ``w_i = 1 / max(L_i, eps)``.

Deviations from the official code: none known (no official code of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from mtl.balancers._common import step_losses
from mtl.balancers.base import BalanceInput, Balancer, register_balancer


@register_balancer("log_loss")
class LogLoss(Balancer):
    """Minimise ``sum_i log L_i``: its gradient is ``sum_i grad L_i / L_i``, so ``w_i = 1/L_i``.

    The weight is a constant in the backward (gradient stopped), so ``w_i * L_i`` is 1 in value and
    the update is ``sum_i grad(L_i) / L_i``: multiplying a loss by a constant changes nothing
    (scale invariance; cf. "log loss" in Kurin et al. 2022, "In Defense of the Unitary
    Scalarization"; Liu et al. 2023, FAMO, Sec. 3). ``eps`` guards a zero loss.
    """

    def __init__(self, task_names: Sequence[str], eps: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(task_names, **kwargs)
        self.eps = float(eps)

    def weights(self, inp: BalanceInput) -> Tensor:
        self.index(inp.tasks)  # reject tasks this balancer was not built for
        return 1.0 / step_losses(inp).clamp_min(self.eps)

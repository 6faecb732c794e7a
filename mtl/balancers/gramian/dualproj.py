"""``dualproj``: DualProj, the mean gradient projected onto the dual cone of the task gradients.

Paper: P. Quinton & V. Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232,
2024. https://arxiv.org/abs/2406.16232 (official code: the torchjd library,
https://github.com/TorchJD/torchjd, ``torchjd.aggregation.DualProj``). The projection is that of GEM
(D. Lopez-Paz & M. Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017, Eq. 11).

Formula, ``pi_J`` the projection onto the dual cone ``{d : <d, g_s> >= 0 for all s}``::

    d = pi_J((1/T) sum_t g_t) = J^T w,     w = argmin_{w >= 1/T} w^T G' w,     G' = G / tr(G) + reg_eps * I

one ``T``-dimensional quadratic programme on the Gramian, solved exactly by non-negative least squares
(:func:`~mtl.balancers.gramian.linalg.dual_cone_weights`). When the mean conflicts with no task it is kept
(``w = 1/T``); otherwise the update is the closest non-conflicting direction to it. Weights do not depend
on the scale of the gradients.

Knobs:
    ``reg_eps`` (1e-4): added to the diagonal of ``G / tr(G)``, torchjd's default (a numerical safeguard
    that makes the weights unique when gradients are linearly dependent); 0 gives the exact projection.
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code (torchjd 0.18, ``DualProj()`` with its default ``QuadprogProjector``):

* The QP is solved by exact NNLS (scipy) instead of quadprog, which is not a dependency here.
* torchjd replaces the Gramian by zero when its trace is below ``norm_eps = 1e-4`` (absolute), so its
  result depends on the scale of the gradients; we always divide by the trace, and only an all-zero
  Gramian gives the mean. For traces above ``1e-4`` the two agree.
* No ``pref_vector`` option (the mean, torchjd's default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer
from mtl.balancers.gramian.linalg import dual_cone_weights


@register_balancer("dualproj")
class DualProj(GramianBalancer):
    """DualProj (Quinton & Rey 2024): ``w = argmin_{w >= 1/T} w^T G' w``, the mean projected onto the
    dual cone.

    ``G' = G / tr(G) + reg_eps I`` (torchjd's regularisation; ``reg_eps = 0``: the exact projection).
    """

    def __init__(
        self,
        task_names: Sequence[str],
        reg_eps: float = 1e-4,
        source: GradientSource | None = "representation",
    ) -> None:
        super().__init__(task_names, source=source)
        if reg_eps < 0:
            raise ValueError(f"dualproj reg_eps must be >= 0, got {reg_eps}")
        self.reg_eps = float(reg_eps)

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        u = torch.full((t,), 1.0 / t, dtype=gramian.dtype)
        return dual_cone_weights(gramian, u, reg_eps=self.reg_eps)

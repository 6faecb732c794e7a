"""``upgrad``: UPGrad, each task gradient projected onto the dual cone of all of them, then averaged.

Paper: P. Quinton & V. Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232,
2024. https://arxiv.org/abs/2406.16232 (official code: the torchjd library,
https://github.com/TorchJD/torchjd, ``torchjd.aggregation.UPGrad``)

Formula (Eq. 5 and Prop. 1), ``pi_J`` the projection onto the dual cone ``{d : <d, g_s> >= 0 for all s}``::

    d = (1/T) sum_t pi_J(g_t),      pi_J(J^T u) = J^T v(u),   v(u) = argmin_{v >= u} v^T G' v
    w = (1/T) sum_t v(e_t)           G' = G / tr(G) + reg_eps * I

Each ``v(e_t)`` is a ``T``-dimensional quadratic programme on the Gramian alone, solved exactly by
non-negative least squares (:func:`~mtl.balancers.gramian.linalg.dual_cone_weights`). The update never
conflicts with a task (``<d, g_s> >= 0`` for every ``s``, exactly when ``reg_eps = 0``); when no two
gradients conflict (all ``G_st >= 0``) it is the mean, ``w = 1/T``. The weights do not depend on the scale
of the gradients; scaling one task's gradient scales its own projection only.

Knobs:
    ``reg_eps`` (1e-4): added to the diagonal of ``G / tr(G)``, torchjd's default (a numerical safeguard
    that makes the weights unique when gradients are linearly dependent); 0 gives the exact projection.
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code (torchjd 0.18, ``UPGrad()`` with its default ``QuadprogProjector``):

* The QP is solved by exact NNLS (scipy) instead of quadprog, which is not a dependency here.
* torchjd replaces the Gramian by zero when its trace is below ``norm_eps = 1e-4`` (absolute), so its
  result depends on the scale of the gradients (tiny gradients get the plain mean); we always divide by
  the trace, and only an all-zero Gramian gives the mean. For traces above ``1e-4`` the two agree.
* No ``pref_vector`` option (the uniform 1/T average of the paper and of torchjd's default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer
from mtl.balancers.gramian.linalg import dual_cone_weights


@register_balancer("upgrad")
class UPGrad(GramianBalancer):
    """UPGrad (Quinton & Rey 2024): ``w = (1/T) sum_t v(e_t)``, ``v(u) = argmin_{v >= u} v^T G' v``.

    ``J^T v(e_t)`` is the projection of ``g_t`` onto the dual cone of the task gradients, so the update,
    their average, conflicts with no task. ``G' = G / tr(G) + reg_eps I`` (torchjd's regularisation;
    ``reg_eps = 0``: exact projections).
    """

    def __init__(
        self,
        task_names: Sequence[str],
        reg_eps: float = 1e-4,
        source: GradientSource | None = "representation",
    ) -> None:
        super().__init__(task_names, source=source)
        if reg_eps < 0:
            raise ValueError(f"upgrad reg_eps must be >= 0, got {reg_eps}")
        self.reg_eps = float(reg_eps)

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        u = torch.eye(t, dtype=gramian.dtype) / t
        return dual_cone_weights(gramian, u, reg_eps=self.reg_eps).sum(dim=0)

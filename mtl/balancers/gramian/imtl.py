"""``imtl``: IMTL-G, impartial gradient balancing: an update with equal projections on every unit gradient.

Paper: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao & W. Zhang, "Towards Impartial
Multi-task Learning", ICLR 2021 (the gradient part, IMTL-G). https://openreview.net/forum?id=IMPnRXEWpvr

Formula (Eq. 9), ``u_t = g_t / ||g_t||``, ``D = [g_1 - g_t]_{t>=2}``, ``U = [u_1 - u_t]_{t>=2}``::

    alpha_{2..T} = g_1 U^T (D U^T)^-1,      alpha_1 = 1 - sum alpha_{2..T},      w = alpha

Every entry is an inner product taken from ``G`` (``<g_a, u_b> = G_ab / ||g_b||``). The update
``d = sum alpha_t g_t`` has equal projections ``<d, u_t>`` on all unit gradients.

Knobs:
    ``rcond`` (1e-10): below this relative singular value of ``D U^T`` the closed form falls back to
    ``pinv(G) ||g||``.
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code (none was released; checked against torchjd's IMTLG): when ``D U^T``
is singular (duplicated or zero gradients) we use the equivalent generalisation of torchjd's IMTLG,
``alpha ∝ pinv(G) ||g||`` normalised to sum 1 (uniform if that sum vanishes); zero gradients then get
weight 0. Only the gradient part of IMTL (no loss balancing of the task-specific parameters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer
from mtl.balancers.gramian.linalg import gradient_norms, nonzero_mask


@register_balancer("imtl")
class IMTLG(GramianBalancer):
    """IMTL-G, impartial gradient balancing (Liu et al. 2021, Eq. 9).

    With ``u_t = g_t / ||g_t||``, ``D = [g_1 - g_t]_{t>=2}``, ``U = [u_1 - u_t]_{t>=2}``:
    ``alpha_{2..T} = g_1 U^T (D U^T)^-1`` and ``alpha_1 = 1 - sum alpha_{2..T}``; every entry is
    an inner product taken from ``G`` (``<g_a, u_b> = G_ab / ||g_b||``). The update
    ``d = sum alpha_t g_t`` has equal projections ``<d, u_t>`` on all unit gradients. When
    ``D U^T`` is singular (duplicated or zero gradients) we use the equivalent generalisation
    of torchjd's IMTLG, ``alpha ∝ pinv(G) ||g||`` normalised to sum 1 (uniform if that sum
    vanishes); zero gradients then get weight 0.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        rcond: float = 1e-10,
        source: GradientSource | None = "representation",
    ) -> None:
        super().__init__(task_names, source=source)
        self.rcond = float(rcond)

    def _closed_form(self, gramian: Tensor) -> Tensor | None:
        norms = gradient_norms(gramian)
        if not bool(nonzero_mask(gramian).all()):
            return None
        inv = 1.0 / norms
        gu = gramian * inv.unsqueeze(0)  # gu[a, b] = <g_a, u_b>
        rhs = gu[0, 0] - gu[0, 1:]  # g_1 (u_1 - u_t)
        # M[s, t] = <g_1 - g_s, u_1 - u_t>
        m = gu[0, 0] - gu[0, 1:].unsqueeze(0) - gu[1:, 0].unsqueeze(1) + gu[1:, 1:]
        sv = torch.linalg.svdvals(m)
        if float(sv.min()) <= self.rcond * float(sv.max()):
            return None
        rest = torch.linalg.solve(m.T, rhs)
        alpha = torch.cat([(1.0 - rest.sum()).reshape(1), rest])
        return alpha if bool(torch.isfinite(alpha).all()) else None

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        if t == 1:
            return torch.ones(1, dtype=gramian.dtype)
        alpha = self._closed_form(gramian)
        if alpha is not None:
            return alpha
        v = torch.linalg.pinv(gramian, hermitian=True) @ gradient_norms(gramian)
        s = float(v.sum())
        if abs(s) < 1e-12 * max(float(v.abs().sum()), 1e-300) or not math.isfinite(s):
            return torch.full((t,), 1.0 / t, dtype=gramian.dtype)
        return v / s

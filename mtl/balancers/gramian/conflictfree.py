"""``conflictfree``: ConFIG, the direction with equal cosine to every task gradient, at the projections' sum.

Paper: Q. Liu, M. Chu & N. Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks", ICLR 2025. https://arxiv.org/abs/2408.11104 (official code: https://github.com/tum-pbs/ConFIG,
``conflictfree.grad_operator.ConFIG_update``; also ``torchjd.aggregation.ConFIG``)

Formula (Eq. 2), ``u_t = g_t / ||g_t||`` the unit gradients (rows of ``U``)::

    b = pinv(U) 1,      d = (sum_t <g_t, b / ||b||>) b / ||b||

``b`` (the minimum-norm solution of ``U b = 1``) has the same cosine ``1 / ||b||`` with every task gradient
when the gradients are linearly independent. From the Gramian alone, with ``n = sqrt(diag G)``,
``D = diag(n)`` and the cosine matrix ``C = D^-1 G D^-1 = U U^T``: ``pinv(U) = U^T pinv(U U^T)``, so
``b = J^T beta`` with ``beta = D^-1 pinv(C) 1``, ``||b||^2 = beta^T G beta`` and
``sum_t <g_t, b> = 1^T G beta``. Hence the weights::

    w = (1^T G beta / beta^T G beta) beta,      beta = D^-1 pinv(C) 1

With two tasks this is ``d = (n_1 + n_2)/2 (u_1 + u_2)``, i.e. ``w_t = (n_1 + n_2) / (2 n_t)``; for
independent gradients ``G beta = n`` and ``w = (sum_t n_t / beta^T n) beta``. The direction of ``d`` does
not change when one task's gradient is scaled (only its unit vector enters), its length does (sum of
projections); the weights do not depend on the common scale of the gradients.

Knobs:
    ``rcond`` (1e-10): relative cutoff of the pseudo-inverse of ``C`` (linearly dependent gradients).
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code:

* The weights come from the ``T x T`` Gramian (the identity above) instead of a least-squares solve on the
  ``T x P`` matrix of unit gradients; identical up to round-off (and to the pseudo-inverse cutoff when
  the gradients are linearly dependent).
* Only the default ``EqualWeight`` (``U b = 1``) and ``ProjectionLength``; the official weight and length
  models and its momentum variant (M-ConFIG, which keeps per-task gradient EMAs) are not available.
* Zero gradients get weight 0 (the official ``nan_to_num`` makes their unit vector 0, so they contribute
  nothing either); when ``b = 0`` (e.g. exactly opposite gradients) the update is 0 and so are the weights;
  all-zero gradients give weights 1 (the update is 0 whatever the weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer
from mtl.balancers.gramian.linalg import gradient_norms, nonzero_mask


@register_balancer("conflictfree")
class ConFIG(GramianBalancer):
    """ConFIG (Liu, Chu & Thuerey, ICLR 2025) from the Gramian: ``w = (1^T G beta / beta^T G beta) beta``.

    ``beta = D^-1 pinv(D^-1 G D^-1) 1`` with ``D = diag(||g_t||)``, so that ``b = J^T beta = pinv(U) 1``
    is ConFIG's equal-cosine direction and ``J^T w`` is ``b`` rescaled to the sum of the projections of
    the task gradients on it.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        rcond: float = 1e-10,
        source: GradientSource | None = "representation",
    ) -> None:
        super().__init__(task_names, source=source)
        if rcond < 0:
            raise ValueError(f"conflictfree rcond must be >= 0, got {rcond}")
        self.rcond = float(rcond)

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        ok = nonzero_mask(gramian)
        if not bool(ok.any()):
            return torch.ones(t, dtype=gramian.dtype)
        inv = torch.zeros(t, dtype=gramian.dtype)
        inv[ok] = 1.0 / gradient_norms(gramian)[ok]
        cos = gramian * inv.unsqueeze(0) * inv.unsqueeze(1)  # zero rows/columns for zero gradients
        ones = torch.ones(t, dtype=gramian.dtype)
        beta = inv * (torch.linalg.pinv(cos, rtol=self.rcond, hermitian=True) @ ones)
        norm2 = float(beta @ gramian @ beta)
        if norm2 <= 1e-20 * float(torch.diagonal(gramian).max()) * float((beta * beta).sum()):
            return torch.zeros(t, dtype=gramian.dtype)  # b = 0: ConFIG's update is 0
        return (float(gramian.sum(dim=0) @ beta) / norm2) * beta

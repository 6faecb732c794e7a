"""``mgda``: MGDA, the min-norm point of the convex hull of the task gradients.

Paper: O. Sener & V. Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
https://arxiv.org/abs/1810.04650 (official code: https://github.com/isl-org/MultiObjectiveOptimization)

Formula::

    w = argmin_{w >= 0, sum w = 1}  w^T G~ w,      G~ = D^-1 G D^-1,  D = diag(n_t)

``n_t`` the official code's ``gradient_normalizers``: ``none`` (1), ``l2`` (``||g_t||``), ``loss``
(``L_t``), ``loss+`` (``L_t ||g_t||``). As in the official training loop, the weights found for the
normalised gradients are applied to the raw losses. Solved by Frank-Wolfe with the closed-form
two-gradient line search (:func:`~mtl.balancers.gramian.linalg.min_norm_simplex`). ``mgda`` takes the
gradients on all shared parameters; ``mgda_ub`` (:mod:`mtl.balancers.gramian.mgda_ub`) is the same on
the shared representation.

Knobs:
    ``normalization`` ("none"): none | l2 | loss | loss+ (the official code's gradient_normalizers).
    ``max_iter`` (250): Frank-Wolfe iterations (official MAX_ITER).
    ``tol`` (1e-5): stop when a step moves the weights by less than this (L1; official STOP_CRIT).
    ``polish`` (True): exact active-set refinement of the Frank-Wolfe point.
    ``source`` ("parameters"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code:

* The two-point line search clips ``gamma`` to the exact ``[0, 1]``; the official code clips to
  ``[0.001, 0.999]``.
* Frank-Wolfe also stops when the duality gap ``a^T G a - min_t (G a)_t`` falls below
  ``tol**2 * max_t G_tt``, and with ``polish`` its point is refined by an exact active-set solve
  (accepted only when feasible and not worse), so the result meets the KKT conditions to round-off.
* A (numerically) zero normaliser is replaced by 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer
from mtl.balancers.gramian.linalg import gradient_norms, min_norm_simplex

MGDANormalization = Literal["none", "l2", "loss", "loss+"]


@register_balancer("mgda")
class MGDA(GramianBalancer):
    """MGDA: the min-norm point of the convex hull of the task gradients (Sener & Koltun 2018).

    ``w = argmin_{w in simplex} w^T G~ w`` by Frank-Wolfe with the closed-form two-gradient line
    search (:func:`~mtl.balancers.gramian.linalg.min_norm_simplex`), where ``G~ = D^-1 G D^-1`` are the
    inner products of the normalised gradients ``g_t / n_t`` of the official code's
    ``gradient_normalizers``: ``none`` (``n_t = 1``), ``l2`` (``||g_t||``), ``loss``
    (``L_t``), ``loss+`` (``L_t ||g_t||``). As in the official training loop, the weights
    found for the normalised gradients are applied to the raw losses.
    """

    default_source: GradientSource = "parameters"

    def __init__(
        self,
        task_names: Sequence[str],
        normalization: MGDANormalization = "none",
        max_iter: int = 250,
        tol: float = 1e-5,
        polish: bool = True,
        source: GradientSource | None = "parameters",
    ) -> None:
        super().__init__(task_names, source=source)
        if normalization not in ("none", "l2", "loss", "loss+"):
            raise ValueError(f"mgda normalization must be none|l2|loss|loss+, got {normalization!r}")
        if max_iter < 1 or tol <= 0:
            raise ValueError("mgda needs max_iter >= 1 and tol > 0")
        self.normalization = normalization
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.polish = bool(polish)

    def _normalizers(self, gramian: Tensor, losses: Tensor) -> Tensor:
        norms = gradient_norms(gramian)
        loss = losses.detach().to("cpu", torch.float64).abs()
        if self.normalization == "l2":
            n = norms
        elif self.normalization == "loss":
            n = loss
        elif self.normalization == "loss+":
            n = loss * norms
        else:
            n = torch.ones_like(norms)
        return torch.where(n > 1e-12, n, torch.ones_like(n))

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        if self.normalization != "none":
            n = self._normalizers(gramian, inp.losses)
            gramian = gramian / (n.unsqueeze(0) * n.unsqueeze(1))
        return min_norm_simplex(gramian, max_iter=self.max_iter, tol=self.tol, polish=self.polish)

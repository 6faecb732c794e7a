"""``aligned_mtl``: Aligned-MTL, independent component alignment: make the gradient system well conditioned.

Paper: D. Senushkin, N. Patakin, A. Kuznetsov & A. Konushin, "Independent Component Alignment for
Multi-Task Learning", CVPR 2023. https://arxiv.org/abs/2305.19000 (official code:
https://github.com/SamsungLabs/MTL)

Formula (Alg. 1), eigendecomposition ``G = V diag(lambda) V^T`` restricted to the eigenvalues above
``max(lambda) T eps_float32`` (the official rank cut)::

    B = sqrt(s) V diag(lambda)^-1/2 V^T,       w = B p

``J^T B`` (the aligned gradients) has Gramian ``s`` times the identity on the gradients' span (condition
number 1); ``s`` is the smallest eigenvalue (``scale_mode=min``), the median (``median``) or the mean
(``rmse``); ``p`` the preference vector.

Knobs:
    ``scale_mode`` ("min"): min (paper) | median | rmse: which eigenvalue sets the common scale.
    ``pref`` (None): per-task preference weights over all tasks; None = 1 each (official sum).
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code: none known. As in the official code and LibMTL the aligned gradients
are summed, ``p = 1`` (torchjd uses ``p = 1/T``, i.e. ``1/T`` of these weights). All-zero gradients give
``w = p``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer

ScaleMode = Literal["min", "median", "rmse"]


@register_balancer("aligned_mtl")
class AlignedMTL(GramianBalancer):
    """Aligned-MTL, independent component alignment (Senushkin et al. 2023, Alg. 1).

    Eigendecomposition ``G = V diag(lambda) V^T`` restricted to the eigenvalues above
    ``max(lambda) T eps_float32`` (the official rank cut). The balance transformation
    ``B = sqrt(s) V diag(lambda)^-1/2 V^T`` maps the gradients to ``J^T B``, whose Gramian is
    ``s`` times the identity on the gradients' span (condition number 1; ``s`` = smallest
    eigenvalue for ``scale_mode=min``, the median for ``median``, the mean for ``rmse``). As in
    the official code and LibMTL the aligned gradients are summed, ``w = B p`` with the
    preference ``p = 1`` (torchjd uses ``p = 1/T``, i.e. ``1/T`` of these weights). All-zero
    gradients give ``w = p``.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        scale_mode: ScaleMode = "min",
        pref: Sequence[float] | None = None,
        source: GradientSource | None = "representation",
    ) -> None:
        super().__init__(task_names, source=source)
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"aligned_mtl scale_mode must be min|median|rmse, got {scale_mode!r}")
        self.scale_mode = scale_mode
        self.pref = None if pref is None else [float(p) for p in pref]
        if self.pref is not None and len(self.pref) != len(self.task_names):
            raise ValueError(f"aligned_mtl pref needs one value per task {self.task_names}")

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        if self.pref is None:
            p = torch.ones(t, dtype=gramian.dtype)
        else:
            p = torch.tensor(self.pref, dtype=gramian.dtype)[self.index(inp.tasks)]
        lam, vec = torch.linalg.eigh(gramian)
        tol = float(lam.max()) * t * torch.finfo(torch.float32).eps
        keep = lam > tol
        if not bool(keep.any()):
            return p
        lam, vec = lam[keep], vec[:, keep]
        if self.scale_mode == "min":
            scale = lam.min()
        elif self.scale_mode == "median":
            scale = torch.median(lam)
        else:
            scale = lam.mean()
        b = scale.sqrt() * (vec / lam.sqrt().unsqueeze(0)) @ vec.T
        return b @ p

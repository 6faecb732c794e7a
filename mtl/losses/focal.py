"""``focal``: focal loss, cross-entropy down-weighting the rows the model already gets right.

Paper: Lin, Goyal, Girshick, He & Dollár, "Focal Loss for Dense Object Detection", ICCV 2017,
https://arxiv.org/abs/1708.02002 (the α-balanced form, eq. 5; here its softmax / multi-class form). The
α from class counts is the "class-balanced focal loss" of Cui et al., CVPR 2019,
https://arxiv.org/abs/1901.05555.

Formula (``p_i = softmax(z_i)_{y_i}``)::

    ℓ_i = −α_{y_i} · (1 − p_i)^γ · log p_i ;   L = mean_i ℓ_i

The mean is the plain mean over rows (the paper normalises by the number of anchors, not by Σα; unlike
``class_balanced``, whose mean is torch's weighted mean). ``γ = 0`` without α is ``ce``. ``1 − p`` is
computed as ``−expm1(log p)`` and floored at 1e-12, so ``γ < 1`` keeps a finite gradient when ``p = 1``.

Knobs:
    ``gamma`` (2.0, ≥ 0): the focusing parameter (the paper's best: 2).
    ``alpha`` (none): per-class weights, a list of ``num_labels`` non-negative numbers, e.g.
    ``loss.alpha=[1,1,4]``; none: every α is 1.
    ``alpha_mode`` (``"none"``): ``"effective_number"`` or ``"inverse_frequency"`` set α from the
    training counts as ``class_balanced`` does (weights averaging 1; zero counts count as 1), and then
    need ``class_counts``; not together with ``alpha``.
    ``beta`` (0.9999): β of ``alpha_mode="effective_number"``.
    ``flood`` (0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.losses.base import WEIGHT_MODES, TaskLoss, class_balanced_weights, register_loss

ALPHA_MODES = ("none", *WEIGHT_MODES)


@register_loss("focal")
class Focal(TaskLoss):
    """Softmax focal loss with focusing ``gamma`` and optional per-class ``alpha``."""

    def __init__(self, num_labels: int, class_counts: Sequence[int] | None = None, gamma: float = 2.0,
                 alpha: list[float] | None = None, alpha_mode: str = "none", beta: float = 0.9999,
                 **kwargs) -> None:
        super().__init__(num_labels, class_counts, **kwargs)
        if not (math.isfinite(float(gamma)) and float(gamma) >= 0):
            raise ValueError(f"loss 'focal': gamma must be a finite number >= 0, got {gamma}")
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"loss 'focal': alpha_mode must be one of {list(ALPHA_MODES)}, got {alpha_mode!r}")
        self.gamma, self.alpha_mode, self.beta = float(gamma), alpha_mode, float(beta)
        given = None if alpha is None else [float(a) for a in alpha]
        if given is not None and alpha_mode != "none":
            raise ValueError(f"loss 'focal': give alpha or alpha_mode={alpha_mode!r}, not both")
        if given is not None:
            if len(given) != self.num_labels or not all(math.isfinite(a) and a >= 0 for a in given):
                raise ValueError(
                    f"loss 'focal': alpha must be {self.num_labels} finite non-negative numbers, got {given}"
                )
            weight: Tensor | None = torch.tensor(given, dtype=torch.float32)
        elif alpha_mode != "none":
            counts = self.require_counts(f"alpha_mode={alpha_mode!r}")
            weight = class_balanced_weights(counts, alpha_mode, self.beta).float()
        else:
            weight = None
        self.register_buffer("alpha", weight, persistent=False)
        self.alpha: Tensor | None

    def compute(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        logp = F.log_softmax(logits, dim=-1).gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
        rows = -logp
        if self.gamma != 0:
            rows = (-torch.expm1(logp)).clamp(min=1e-12).pow(self.gamma) * rows
        if self.alpha is not None:
            rows = self._on(self.alpha, logits)[targets] * rows
        if reduction == "none":
            return rows
        return rows.sum() if reduction == "sum" else rows.mean()

    def extra_repr(self) -> str:
        alpha = None if self.alpha is None else [round(a, 4) for a in self.alpha.tolist()]
        return f"{super().extra_repr()}, gamma={self.gamma}, alpha={alpha}"

"""``class_balanced``: class-weighted cross-entropy, weights from the training label counts.

Paper: Cui, Jia, Lin, Song & Belongie, "Class-Balanced Loss Based on Effective Number of Samples",
CVPR 2019, https://arxiv.org/abs/1901.05555 (``mode="effective_number"``); ``mode="inverse_frequency"`` is
the classic re-weighting it generalises (β → 1).

Formula (``n_c`` the training count of class ``c``, ``C`` classes)::

    effective_number:   w̃_c = (1 − β) / (1 − β^{n_c})
    inverse_frequency:  w̃_c = 1 / n_c
    w_c = C · w̃_c / Σ_k w̃_k                                  (the weights average 1 over the classes)
    ℓ_i = w_{y_i} · CE_i ;   L = Σ_i w_{y_i} CE_i / Σ_i w_{y_i}      (torch's weighted mean)

so ``reduction="none"`` gives ``w_{y_i}·CE_i`` and the mean is ``F.cross_entropy(weight=w)``'s (note: the
mean of the rows is *not* the weighted mean). A class with zero training count is weighted as if it had
one example (the largest weight; no division by zero).

Knobs: ``mode`` (``"effective_number"``) or ``"inverse_frequency"``; ``beta`` (0.9999) in [0, 1), used by
``effective_number`` only (β = 0: all weights 1, i.e. ``ce``; β → 1: inverse frequency); ``flood`` (0).
Needs ``class_counts``.

Deviations from the official code: the paper applies the weights to softmax, sigmoid or focal losses;
here to softmax cross-entropy (α of ``focal`` can take the same weights: ``focal`` ``alpha_mode``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from mtl.losses.base import WEIGHT_MODES, TaskLoss, class_balanced_weights, register_loss


@register_loss("class_balanced")
class ClassBalanced(TaskLoss):
    """Cross-entropy weighted per class by effective number or inverse frequency."""

    needs_class_counts = True

    def __init__(self, num_labels: int, class_counts: Sequence[int] | None = None,
                 mode: str = "effective_number", beta: float = 0.9999, **kwargs) -> None:
        super().__init__(num_labels, class_counts, **kwargs)
        if mode not in WEIGHT_MODES:
            raise ValueError(f"loss 'class_balanced': mode must be one of {list(WEIGHT_MODES)}, got {mode!r}")
        self.mode, self.beta = mode, float(beta)
        counts = self.require_counts(f"mode={mode!r}")
        self.register_buffer("weight", class_balanced_weights(counts, mode, self.beta).float(), persistent=False)
        self.weight: Tensor

    def compute(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        return F.cross_entropy(logits, targets, weight=self._on(self.weight, logits), reduction=reduction)

    def extra_repr(self) -> str:
        w = ", ".join(f"{x:.4g}" for x in self.weight.tolist())
        return f"{super().extra_repr()}, mode={self.mode!r}, beta={self.beta}, weight=[{w}]"


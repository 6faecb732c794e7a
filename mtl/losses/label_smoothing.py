"""``label_smoothing``: cross-entropy against targets smoothed towards the uniform distribution.

Paper: Szegedy, Vanhoucke, Ioffe, Shlens & Wojna, "Rethinking the Inception Architecture for Computer
Vision", CVPR 2016, https://arxiv.org/abs/1512.00567 (section 7); on when it helps: Müller, Kornblith &
Hinton, "When Does Label Smoothing Help?", NeurIPS 2019, https://arxiv.org/abs/1906.02629.

Formula (``C`` classes, smoothing ``ε``)::

    q_c = (1 − ε)·[c = y] + ε / C
    ℓ_i = −Σ_c q_c log softmax(z_i)_c = (1 − ε)·CE_i + ε · mean_c(−log softmax(z_i)_c)

Knobs: ``epsilon`` (0.1) in [0, 1]; ``flood`` (0). Equals ``F.cross_entropy(label_smoothing=ε)`` (the same
call); ``epsilon=0`` is ``ce``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from mtl.losses.base import TaskLoss, register_loss


@register_loss("label_smoothing")
class LabelSmoothing(TaskLoss):
    """Cross-entropy with label smoothing ``epsilon``."""

    def __init__(self, num_labels: int, class_counts: Sequence[int] | None = None, epsilon: float = 0.1,
                 **kwargs) -> None:
        super().__init__(num_labels, class_counts, **kwargs)
        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"loss 'label_smoothing': epsilon must lie in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)

    def compute(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        return F.cross_entropy(logits, targets, reduction=reduction, label_smoothing=self.epsilon)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, epsilon={self.epsilon}"

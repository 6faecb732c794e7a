"""``ce``: plain softmax cross-entropy, the default task loss (what the engine computes today).

Paper: none (the standard multinomial log-loss).

Formula (row ``i``, logits ``z``, label ``y``)::

    ℓ_i = −log softmax(z_i)_{y_i} = −z_{i,y} + log Σ_c exp(z_{i,c});   L = mean_i ℓ_i

Knobs: only ``flood`` (0: off; every loss has it, see :mod:`mtl.losses.flooding`). With ``flood=0`` the
result is exactly ``F.cross_entropy(logits, labels, reduction=...)`` (the same call).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mtl.losses.base import TaskLoss, register_loss


@register_loss("ce")
class CrossEntropy(TaskLoss):
    """Plain cross-entropy: ``F.cross_entropy``."""

    def compute(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        return F.cross_entropy(logits, targets, reduction=reduction)

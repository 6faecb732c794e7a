"""``logit_adjusted``: the logit-adjusted softmax cross-entropy for long-tailed labels.

Paper: Menon, Jayasumana, Rawat, Jain, Veit & Kumar, "Long-tail learning via logit adjustment",
ICLR 2021, https://arxiv.org/abs/2007.07314 (eq. 10); official code:
https://github.com/google-research/google-research/tree/master/logit_adjustment.

Formula (``π`` the training label prior from ``class_counts``, ``τ`` the temperature)::

    ℓ_i = −log [ exp(z_{i,y} + τ log π_y) / Σ_c exp(z_{i,c} + τ log π_c) ]
        = CE(z_i + τ log π, y_i)

Training with it makes the *plain* argmax of ``z`` approximate the balanced-error Bayes rule; no
adjustment is needed at prediction time (the post-hoc alternative, for a model trained with ``ce``, is
``mtl.evaluation.decision.logit_adjusted_predictions``: argmax of ``z − τ log π``). τ = 0 is ``ce``.

Knobs: ``tau`` (1.0, the paper's default); ``flood`` (0). Needs ``class_counts``.

Deviations from the official code: a class with zero training count is counted as one example
(``class_prior(counts, min_count=1)``) where the official code adds 1e-12 to the prior before the log;
both keep ``log π`` finite, ours keeps the offset within ``log(1/N)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from mtl.losses.base import TaskLoss, class_prior, register_loss


@register_loss("logit_adjusted")
class LogitAdjusted(TaskLoss):
    """Cross-entropy on ``logits + tau * log(prior)``."""

    needs_class_counts = True

    def __init__(self, num_labels: int, class_counts: Sequence[int] | None = None, tau: float = 1.0,
                 **kwargs) -> None:
        super().__init__(num_labels, class_counts, **kwargs)
        if not math.isfinite(float(tau)):
            raise ValueError(f"loss 'logit_adjusted': tau must be finite, got {tau}")
        self.tau = float(tau)
        counts = self.require_counts(f"tau={self.tau}")
        offset = self.tau * class_prior(counts, min_count=1).log()
        self.register_buffer("offset", offset.float(), persistent=False)
        self.offset: Tensor

    def compute(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        return F.cross_entropy(logits + self._on(self.offset, logits), targets, reduction=reduction)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau={self.tau}"

"""``zlpr``: multi-label "softmax + cross-entropy" (Su Jianlin's loss, also called ZLPR) for multi-hot targets.

Paper: Su Jianlin, "将"softmax+交叉熵"推广到多标签分类问题" (Generalising "softmax + cross-entropy" to
multi-label classification), blog post, 2020, https://kexue.fm/archives/7359; written up as ZLPR in Su, Zhu,
Murtadha, Pan, Wen & Liu, "ZLPR: A Novel Loss for Multi-label Classification", arXiv 2022,
https://arxiv.org/abs/2208.02955.

Formula (row ``i``, scores ``s``, positives ``Ω_pos`` = classes with target 1, negatives the rest)::

    ℓ_i = log(1 + Σ_{j ∈ Ω_neg} e^{s_j}) + log(1 + Σ_{j ∈ Ω_pos} e^{−s_j})

It pushes every positive score above 0 and every negative below 0, so the decision rule is
``s_j > 0``, and the number of labels per row is not fixed. Computed as two ``logsumexp`` over the
masked scores with an appended 0 (stable for large scores; a row with no positives or no negatives
gets ``log 1 = 0`` for that half).

Knobs: ``flood`` (0). Targets are ``[N, C]`` multi-hot (0/1, any dtype); ``multi_label = True`` tells the
caller so (the single-label tasks keep class indices).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.losses.base import TaskLoss, register_loss


@register_loss("zlpr")
class ZLPR(TaskLoss):
    """Multi-label softmax cross-entropy over multi-hot targets."""

    multi_label = True

    def compute(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        if targets.shape != logits.shape:
            raise ValueError(
                f"loss 'zlpr': targets must be multi-hot with the logits' shape {list(logits.shape)}, "
                f"got {list(targets.shape)}"
            )
        pos = targets.to(torch.bool) if targets.dtype == torch.bool else targets > 0.5
        zero = logits.new_zeros(logits.shape[0], 1)
        neg_scores = torch.cat([zero, logits.masked_fill(pos, float("-inf"))], dim=-1)
        pos_scores = torch.cat([zero, (-logits).masked_fill(~pos, float("-inf"))], dim=-1)
        rows = torch.logsumexp(neg_scores, dim=-1) + torch.logsumexp(pos_scores, dim=-1)
        if reduction == "none":
            return rows
        return rows.sum() if reduction == "sum" else rows.mean()

"""``pcgrad``: PCGrad, gradient surgery: project each task gradient off the ones it conflicts with.

Paper: T. Yu, S. Kumar, A. Gupta, S. Levine, K. Hausman & C. Finn, "Gradient Surgery for Multi-Task
Learning", NeurIPS 2020. https://arxiv.org/abs/2001.06782 (official code: https://github.com/tianheyu927/PCGrad)

Formula (Alg. 1), for every task ``i`` and the other tasks ``j`` in random order::

    if <g_i^PC, g_j> < 0:   g_i^PC <- g_i^PC - <g_i^PC, g_j> / ||g_j||^2 g_j
    d = sum_i g_i^PC   (reduction=sum)   or   (1/T) sum_i g_i^PC   (reduction=mean)

Through the Gramian: keeping ``g_i^PC = sum_k C[i, k] g_k``, the inner product is ``(C[i] G)_j`` and the
projection is ``C[i, j] -= (C[i] G)_j / G_jj``; then ``w = 1^T C`` (or ``/ T``).

Knobs:
    ``seed`` (0): seed of the random projection orders (generator state is checkpointed).
    ``reduction`` ("sum"): sum (paper) | mean of the projected gradients.
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code:

* The random orders come from a private seeded ``torch.Generator`` (checkpointed), drawn per task as
  ``randperm(T)`` skipping ``i`` (the order semantics of torchjd's PCGrad), not from Python's
  ``random.shuffle``.
* Zero gradients are never projected against (no division by zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer, SeededMixin
from mtl.balancers.gramian.linalg import nonzero_mask


@register_balancer("pcgrad")
class PCGrad(SeededMixin, GramianBalancer):
    """PCGrad, gradient surgery (Yu et al. 2020, Alg. 1).

    For every task ``i`` (own random order of the other tasks ``j``, drawn from a seeded
    generator as ``randperm(T)`` skipping ``i``, the order semantics of torchjd's PCGrad): if
    ``<g_i^PC, g_j> < 0`` then ``g_i^PC <- g_i^PC - <g_i^PC, g_j> / ||g_j||^2 g_j`` (projection
    against the *original* ``g_j``). Keeping ``g_i^PC = sum_k C[i, k] g_k``, the inner product is
    ``(C[i] G)_j`` and the projection is ``C[i, j] -= (C[i] G)_j / G_jj``. The update is
    ``sum_i g_i^PC`` (``reduction=sum``, the paper) or its mean, so ``w = 1^T C`` (or ``/ T``).
    Zero gradients are never projected against.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        seed: int = 0,
        reduction: Literal["sum", "mean"] = "sum",
        source: GradientSource | None = "representation",
    ) -> None:
        super().__init__(task_names, source=source)
        if reduction not in ("sum", "mean"):
            raise ValueError(f"pcgrad reduction must be sum|mean, got {reduction!r}")
        self.reduction = reduction
        self._init_generator(seed)

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        ok = nonzero_mask(gramian)
        coef = torch.eye(t, dtype=gramian.dtype)
        for i in range(t):
            order = torch.randperm(t, generator=self._gen).tolist()
            for j in order:
                if j == i or not bool(ok[j]):
                    continue
                inner = float(coef[i] @ gramian[:, j])
                if inner < 0.0:
                    coef[i, j] -= inner / float(gramian[j, j])
        w = coef.sum(dim=0)
        return w / t if self.reduction == "mean" else w

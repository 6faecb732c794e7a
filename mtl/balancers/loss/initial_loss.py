"""``initial_loss``: each loss divided by its initial value, ``L_i / L_i(0)``.

Paper: none of its own; this is the loss ratio ``L_i(t) / L_i(0)`` of Z. Chen, V. Badrinarayanan,
C.-Y. Lee & A. Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
Multitask Networks", ICML 2018 (https://arxiv.org/abs/1711.02257), used directly as the weighting,
without GradNorm's learning.

Formula::

    w_i = 1 / max(L_i(0), eps)        L_i(0): the task's loss at the first call that contains it

Puts every task on the same starting scale. Scale invariant: ``c L_i`` gives ``c L_i(0)``, so
``w_i * c L_i`` is unchanged.

Knobs:
    ``eps`` (1e-8): guards a zero initial loss.

Deviations from the official code: not applicable. A non-finite first loss (a step the trainer skips)
is not recorded; the task's next finite loss is its ``L_i(0)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl.balancers._common import record_first_losses, step_losses
from mtl.balancers.base import BalanceInput, Balancer, register_balancer


@register_balancer("initial_loss")
class InitialLoss(Balancer):
    """Each loss divided by its initial value: ``w_i = 1 / L_i(0)`` (loss ratio ``L_i / L_i(0)``).

    Why: puts every task on the same starting scale, like GradNorm's inverse training rate
    (Chen et al. 2018) without the learning. ``L_i(0)`` is the task's loss at the first call
    that contains it (the first call of a step), per task, kept in a buffer.
    Scale invariant: ``c L_i`` gives ``c L_i(0)``, so ``w_i * c L_i`` is unchanged.
    """

    def __init__(self, task_names: Sequence[str], eps: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(task_names, **kwargs)
        self.eps = float(eps)
        n = len(self.task_names)
        self.register_buffer("initial_losses", torch.ones(n))
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool))

    def weights(self, inp: BalanceInput) -> Tensor:
        idx = self.index(inp.tasks).to(self.initial_losses.device)
        record_first_losses(self.initial_losses, self.seen, idx, step_losses(inp, self.initial_losses))
        return 1.0 / self.initial_losses[idx].clamp_min(self.eps)

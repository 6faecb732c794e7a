"""``igb``: Improvable Gap Balancing (IGBv1): log losses weighted by a softmax of the loss relative to a base.

Paper: Y. Dai, N. Fei & Z. Lu, "Improvable Gap Balancing for Multi-Task Learning", UAI 2023.
https://arxiv.org/abs/2307.15429 (official code: https://github.com/YanqiDai/IGB4MTL,
``methods/loss_weight_methods.py``, class ``ImprovableGapBalancing_v1``; IGBv2, the reinforcement-learning
variant, is not implemented)

Formula (the official IGBv1), ``b_t`` the base loss of task ``t`` (its mean training loss over a window
early in training; the official code uses the second epoch)::

    before the base is known:  objective = sum_t log L_t                     w_t = 1 / L_t
    afterwards:                v = K softmax(L / b),  objective = sum_t v_t log L_t   (v stopped)
                               w_t = v_t / L_t

``K`` the number of tasks in the step. ``L_t / b_t`` estimates how much of the task's improvable gap is
left (1: as far from done as in the base window); the softmax gives the tasks with more left to improve
a larger share of the scale-invariant (log-loss) objective.

Knobs:
    ``warmup_steps`` (200): optimiser steps of plain log-loss training before the base window.
    ``base_steps`` (50): the following steps (still log loss) whose mean loss per task is the base ``b_t``.
    ``eps`` (1e-8): losses are clamped to at least ``eps`` (the log and the ratio).

Deviations from the official code:

* Steps instead of epochs: the official code trains epoch 0 and 1 on log losses and takes epoch 1's mean
  training losses as the base (``base_epoch = 1``); here ``warmup_steps`` then ``base_steps`` steps, since
  epochs differ with the sampler.
* A task with no finite loss in the base window takes its first finite loss afterwards as its base
  (log-loss weight until then); non-finite losses are left out of the base. The softmax runs over the
  step's tasks (with one task per step IGB reduces to ``log_loss``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl.balancers._common import step_losses
from mtl.balancers.base import BalanceInput, Balancer, register_balancer


@register_balancer("igb")
class ImprovableGapBalancing(Balancer):
    """IGBv1 (Dai, Fei & Lu, UAI 2023): ``w_t = K softmax(L / b)_t / L_t`` once the base losses ``b`` are known.

    Steps ``[0, warmup_steps)``: ``w_t = 1 / L_t``; steps ``[warmup_steps, warmup_steps + base_steps)``: the
    same, and every finite loss is averaged into the task's base ``b_t``; later steps: IGB.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        warmup_steps: int = 200,
        base_steps: int = 50,
        eps: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_names, **kwargs)
        if warmup_steps < 0 or base_steps < 1 or eps <= 0:
            raise ValueError("igb needs warmup_steps >= 0, base_steps >= 1 and eps > 0")
        self.warmup_steps = int(warmup_steps)
        self.base_steps = int(base_steps)
        self.eps = float(eps)
        n = len(self.task_names)
        self.register_buffer("base_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("base_count", torch.zeros(n, dtype=torch.long))

    def base(self) -> Tensor:
        """The base loss of every task (``task_names`` order; NaN while a task has none)."""
        count = self.base_count.to(torch.float64)
        return torch.where(count > 0, self.base_sum / count.clamp_min(1.0), torch.full_like(count, float("nan")))

    def weights(self, inp: BalanceInput) -> Tensor:
        idx = self.index(inp.tasks).to(self.base_sum.device)
        losses = step_losses(inp, self.base_sum).to(torch.float64)
        ok = torch.isfinite(losses)
        safe = losses.clamp_min(self.eps)
        log_loss = (1.0 / safe).to(torch.float32)
        if inp.step < self.warmup_steps:
            return log_loss
        end = self.warmup_steps + self.base_steps
        late = (self.base_count[idx] == 0) & ok  # no loss in the base window: its first one afterwards
        take = ok if inp.step < end else late
        if bool(take.any()):
            self.base_sum.index_add_(0, idx[take], losses[take])
            self.base_count.index_add_(0, idx[take], torch.ones_like(idx[take]))
        if inp.step < end:
            return log_loss
        base = self.base()[idx]
        if not (bool(ok.all()) and bool((torch.isfinite(base) & (base > 0)).all())):
            return log_loss  # a non-finite step (skipped by the trainer) or a base of 0
        v = len(inp.tasks) * torch.softmax(safe / base, dim=0)
        return (v / safe).to(torch.float32)

"""``stch``: smooth Tchebycheff scalarisation of the log losses, after a log-loss warm-up.

Paper: X. Lin, X. Zhang, Z. Yang, F. Liu, Z. Wang & Q. Zhang, "Smooth Tchebycheff Scalarization for
Multi-Objective Optimization", ICML 2024. https://arxiv.org/abs/2402.19078 (official code:
https://github.com/Xi-L/STCH, ``STCH_MTL/LibMTL/weighting/STCH.py``)

Formula (the official multi-task code), ``n_t`` the nadir (reference) loss of task ``t``::

    warm-up:     objective = sum_t log L_t                          w_t = 1 / L_t
    afterwards:  l_t = log(L_t / n_t),  objective = K mu log sum_t exp(l_t / mu)
                 w_t = K softmax(l / mu)_t / L_t                    (gradient stopped)

``K`` the number of tasks in the step. The smooth maximum concentrates the weight on the task that is
furthest above its reference (``mu -> 0``: Tchebycheff, the worst task only; ``mu -> inf``: ``log_loss``).

Knobs:
    ``mu`` (1.0): the smoothing temperature (official default).
    ``warmup_steps`` (200): optimiser steps of plain log-loss training before the nadir is measured.
    ``nadir_steps`` (50): the following steps (still log-loss) whose mean loss per task is the nadir ``n_t``.
    ``eps`` (1e-20): inside the logs, as the official code (``log(L/n + eps)``).

Deviations from the official code:

* The official warm-up counts epochs (``STCH_warmup_epoch = 4`` epochs of log loss, then one more whose
  mean losses are the nadir); we count optimiser steps (``warmup_steps``, then ``nadir_steps``), since
  epochs differ with the sampler.
* A task with no finite loss during the nadir window takes its first finite loss afterwards as its nadir
  (log-loss weight until then). The softmax runs over the step's tasks (all of them with
  ``sampler=all_tasks``; with one task per step STCH reduces to ``log_loss``).
* Non-finite losses (steps the trainer skips) are left out of the nadir.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl.balancers._common import step_losses
from mtl.balancers.base import BalanceInput, Balancer, register_balancer


@register_balancer("stch")
class SmoothTchebycheff(Balancer):
    """Smooth Tchebycheff (Lin et al., ICML 2024): ``w_t = K softmax(log(L/n) / mu)_t / L_t`` after a warm-up.

    Steps ``[0, warmup_steps)``: ``w_t = 1 / L_t``; steps ``[warmup_steps, warmup_steps + nadir_steps)``:
    the same, and every finite loss is averaged into the task's nadir ``n_t``; later steps: STCH.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        mu: float = 1.0,
        warmup_steps: int = 200,
        nadir_steps: int = 50,
        eps: float = 1e-20,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_names, **kwargs)
        if mu <= 0 or warmup_steps < 0 or nadir_steps < 1 or eps < 0:
            raise ValueError("stch needs mu > 0, warmup_steps >= 0, nadir_steps >= 1 and eps >= 0")
        self.mu = float(mu)
        self.warmup_steps = int(warmup_steps)
        self.nadir_steps = int(nadir_steps)
        self.eps = float(eps)
        n = len(self.task_names)
        self.register_buffer("nadir_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("nadir_count", torch.zeros(n, dtype=torch.long))

    def nadir(self) -> Tensor:
        """The nadir of every task (``task_names`` order; NaN while a task has none)."""
        count = self.nadir_count.to(torch.float64)
        nan = torch.full_like(count, float("nan"))
        return torch.where(count > 0, self.nadir_sum / count.clamp_min(1.0), nan)

    def weights(self, inp: BalanceInput) -> Tensor:
        idx = self.index(inp.tasks).to(self.nadir_sum.device)
        losses = step_losses(inp, self.nadir_sum).to(torch.float64)
        ok = torch.isfinite(losses)
        log_loss = 1.0 / (losses + self.eps).clamp_min(1e-300)
        start = self.warmup_steps + self.nadir_steps
        late = (self.nadir_count[idx] == 0) & ok  # no loss in the nadir window: the first one afterwards
        if inp.step < self.warmup_steps:
            return log_loss.to(torch.float32)
        if inp.step < start or bool(late.any()):
            take = ok if inp.step < start else late
            self.nadir_sum.index_add_(0, idx[take], losses[take])
            self.nadir_count.index_add_(0, idx[take], torch.ones_like(idx[take]))
            if inp.step < start:
                return log_loss.to(torch.float32)
        nadir = self.nadir()[idx]
        have = torch.isfinite(nadir) & (nadir > 0)
        if not bool(have.all()) or not bool(ok.all()):
            return log_loss.to(torch.float32)  # a non-finite step (skipped by the trainer) or no nadir yet
        rel = torch.log(losses / nadir + self.eps)
        soft = torch.softmax(rel / self.mu, dim=0)
        return (len(inp.tasks) * soft / (losses + self.eps * nadir)).to(torch.float32)

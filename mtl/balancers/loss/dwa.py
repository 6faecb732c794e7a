"""``dwa``: Dynamic Weight Average, weights from the rate at which each loss falls.

Paper: S. Liu, E. Johns & A. J. Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019.
https://arxiv.org/abs/1803.10704 (official code: https://github.com/lorenmt/mtan)

Formula::

    w_i = K exp(r_i / T) / sum_j exp(r_j / T),      r_i = L_i(t-1) / L_i(t-2)

``K`` the number of tasks (with history, see below), ``T`` the temperature, ``L_i(t-1), L_i(t-2)`` the
task's mean loss over the last two completed windows.

Knobs:
    ``temperature`` (2.0): ``T``; larger flattens the weights towards 1.
    ``window`` (50): optimiser steps per window (the paper's "epoch").

Deviations from the official code:

* The paper's ``L(t-1), L(t-2)`` are the average losses of the last two epochs. We have steps, not
  epochs: steps are cut into windows of ``window`` optimiser steps (window k = steps
  ``[k*window, (k+1)*window)``), every loss a task reports in a window (every call) is averaged, and
  ``r_i`` is the ratio of the task's last two completed window means.
* A task absent from a whole window (rare with one-task sampling) keeps its previous two means. While no
  task has two completed windows, all weights are 1 (the paper's first two epochs). When only some tasks
  have (tasks H), those get ``|H| exp(r_i/T) / sum_{j in H} exp(r_j/T)`` and the others 1 (this is the
  paper's rule whenever all or none have history).
* The softmax runs over all tasks with history, not only those in the step, so the weights of a one-task
  step are the same as that task's weight in an all-task step.
* A non-finite loss (a step the trainer skips) is left out of the window means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl.balancers._common import step_losses
from mtl.balancers.base import BalanceInput, Balancer, register_balancer


@register_balancer("dwa")
class DynamicWeightAverage(Balancer):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, "End-to-End Multi-Task Learning
    with Attention"): ``w_i = K exp(r_i/T) / sum_j exp(r_j/T)``, ``r_i = L_i(t-1) / L_i(t-2)``.

    The paper's ``L(t-1), L(t-2)`` are the average losses of the last two epochs. We have steps,
    not epochs: steps are cut into windows of ``window`` optimiser steps (window k = steps
    ``[k*window, (k+1)*window)``), every loss a task reports in a window (every call) is
    averaged, and ``r_i`` is the ratio of the task's last two completed window means. A task
    absent from a whole window (rare with one-task sampling) keeps its previous two means.
    While no task has two completed windows, all weights are 1 (the paper's first two epochs).
    When only some tasks have (tasks H), those get ``|H| exp(r_i/T) / sum_{j in H} exp(r_j/T)`` and
    the others 1 (this is the paper's rule whenever all or none have history). The softmax runs
    over all tasks with history, not only those in the step, so the weights of a one-task step
    are the same as that task's weight in an all-task step.
    """

    def __init__(
        self, task_names: Sequence[str], temperature: float = 2.0, window: int = 50, **kwargs: Any
    ) -> None:
        super().__init__(task_names, **kwargs)
        if temperature <= 0:
            raise ValueError(f"dwa temperature must be > 0, got {temperature}")
        if int(window) < 1:
            raise ValueError(f"dwa window must be >= 1, got {window}")
        n = len(self.task_names)
        self.temperature = float(temperature)
        self.window = int(window)
        self.register_buffer("current_window", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("window_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("window_count", torch.zeros(n, dtype=torch.long))
        # prev_means[:, 0] is the mean of window t-2, prev_means[:, 1] that of window t-1
        self.register_buffer("prev_means", torch.zeros(n, 2, dtype=torch.float64))
        self.register_buffer("completed", torch.zeros(n, dtype=torch.long))  # non-empty windows, capped at 2

    def _roll(self, step: int) -> None:
        """Close the current window if ``step`` lies in a later one."""
        k = step // self.window
        if k == int(self.current_window):
            return
        if int(self.current_window) >= 0:
            done = self.window_count > 0
            if bool(done.any()):
                means = self.window_sum[done] / self.window_count[done]
                self.prev_means[done, 0] = self.prev_means[done, 1]
                self.prev_means[done, 1] = means
                self.completed[done] = (self.completed[done] + 1).clamp_max(2)
        self.window_sum.zero_()
        self.window_count.zero_()
        self.current_window.fill_(k)

    def all_weights(self) -> Tensor:
        """Weights of every task (in ``task_names`` order) from the completed windows."""
        out = torch.ones(len(self.task_names), dtype=torch.float64, device=self.prev_means.device)
        ready = self.completed >= 2
        if bool(ready.any()):
            ratio = self.prev_means[ready, 1] / self.prev_means[ready, 0].clamp_min(1e-12)
            out[ready] = int(ready.sum()) * torch.softmax(ratio / self.temperature, dim=0)
        return out

    def weights(self, inp: BalanceInput) -> Tensor:
        self._roll(inp.step)
        idx = self.index(inp.tasks).to(self.window_sum.device)
        w = self.all_weights()[idx].to(torch.float32)
        losses = step_losses(inp, self.window_sum).to(torch.float64)
        ok = torch.isfinite(losses)  # a non-finite loss (a skipped step) must not poison the window
        self.window_sum.index_add_(0, idx[ok], losses[ok])
        self.window_count.index_add_(0, idx[ok], torch.ones_like(idx[ok]))
        return w

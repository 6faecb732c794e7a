"""``dtp``: Dynamic Task Prioritization, a focal-loss-like weight on each task's running accuracy.

Paper: M. Guo, A. Haque, D.-A. Huang, S. Yeung & L. Fei-Fei, "Dynamic Task Prioritization for
Multitask Learning", ECCV 2018. https://doi.org/10.1007/978-3-030-01270-0_17

Formula (task-level part of the paper)::

    w_i = -(1 - k_i)^gamma log k_i,      k_i = clip(acc_i, eps, 1 - eps)
    acc_i <- c_i / max(n_i, 1)                         at the task's first applied step
    acc_i <- m acc_i + (1 - m) c_i / max(n_i, 1)       at each later applied step with the task

``c_i, n_i`` are the correct predictions and rows of the task's batches in the step
(``BalanceInput.counts``, summed over ranks) and ``m`` the momentum. Tasks the model is bad at get more
weight; ``gamma`` sharpens that. A task without a KPI yet gets weight 1. The weights are below 1 for
any accuracy above ~0.43 (gamma=1), i.e. a smaller effective learning rate than ``equal``, as in the
paper.

The balancer keeps the running accuracy itself: ``after_optimizer_step()`` folds in the counts of the
step just applied (so a step skipped for a non-finite loss does not count, and the weights at step N
use the accuracy after steps < N); it is a buffer, so checkpoints resume it exactly.

Knobs:
    ``gamma`` (1.0): focusing exponent; larger pushes harder towards the tasks with low accuracy.
    ``eps`` (1e-3): the KPI is clipped to ``[eps, 1 - eps]`` (must lie in (0, 0.5)).
    ``momentum`` (0.9): of the running train accuracy (EMA) used as the KPI.

Deviations from the official code (none was released; compared with the paper): only the task-level
weighting (no example-level focal loss); the KPI is the running train accuracy of each task, an EMA
over the steps in which the task had a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, Balancer, register_balancer


@register_balancer("dtp")
class DynamicTaskPrioritization(Balancer):
    """Dynamic task prioritisation (Guo et al., ECCV 2018): ``w_i = -(1 - k_i)^gamma log k_i``.

    A focal-loss-like weight on the task KPI ``k_i`` (here the running train accuracy, an EMA with
    momentum ``momentum`` in [0, 1], clipped to ``[eps, 1 - eps]``): tasks the model is bad at get more
    weight, ``gamma`` sharpens that. Only the task-level part of the paper (no example-level focal
    loss). A task without a KPI yet (never in an applied step) gets weight 1. Note the weights are
    below 1 for any accuracy above ~0.43 (gamma=1), i.e. a smaller effective learning rate than
    ``equal``, as in the paper.

    The EMA (buffers ``accuracy_ema``, ``accuracy_seen``) is updated in :meth:`after_optimizer_step`
    from ``last_input.counts``: ``acc = correct / max(rows, 1)``, the first value as is, then
    ``momentum * prev + (1 - momentum) * acc``.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        gamma: float = 1.0,
        eps: float = 1e-3,
        momentum: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_names, **kwargs)
        if not 0.0 < eps < 0.5:
            raise ValueError(f"dtp eps must be in (0, 0.5), got {eps}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"dtp momentum must be in [0, 1], got {momentum}")
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.momentum = float(momentum)
        n = len(self.task_names)
        self.register_buffer("accuracy_ema", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("accuracy_seen", torch.zeros(n, dtype=torch.bool))

    def running_accuracy(self) -> dict[str, float]:
        """The KPI: each task's running train accuracy (only tasks seen in an applied step)."""
        ema, seen = self.accuracy_ema.tolist(), self.accuracy_seen.tolist()
        return {t: ema[i] for i, t in enumerate(self.task_names) if seen[i]}

    def weights(self, inp: BalanceInput) -> Tensor:
        self.index(inp.tasks)  # reject tasks this balancer was not built for
        kpis = self.running_accuracy()
        out = []
        for task in inp.tasks:
            kpi = kpis.get(task)
            if kpi is None or not math.isfinite(float(kpi)):
                out.append(1.0)
                continue
            k = min(max(float(kpi), self.eps), 1.0 - self.eps)
            out.append(-((1.0 - k) ** self.gamma) * math.log(k))
        return torch.tensor(out, dtype=torch.float32)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Fold the applied step's (correct, rows) counts into the running accuracy."""
        inp = self.last_input
        if inp is None or not inp.counts:
            return
        idx = self.index(list(inp.counts)).tolist()
        ema, seen = self.accuracy_ema.tolist(), self.accuracy_seen.tolist()
        m = self.momentum
        for i, (correct, n) in zip(idx, inp.counts.values(), strict=True):
            acc = correct / max(n, 1)
            ema[i] = m * ema[i] + (1 - m) * acc if seen[i] else acc
            seen[i] = True
        self.accuracy_ema.copy_(torch.tensor(ema, dtype=torch.float64))
        self.accuracy_seen.copy_(torch.tensor(seen, dtype=torch.bool))

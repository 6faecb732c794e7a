"""``rlw``: Random Loss Weighting, fresh random weights every step.

Paper: B. Lin, F. Ye, Y. Zhang & I. W. Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus
Test for Multi-Task Learning", TMLR 2022. https://arxiv.org/abs/2111.10603 (official code: LibMTL,
https://github.com/median-research-group/LibMTL)

Formula (the normal-distribution variant)::

    w = T * softmax(z),      z ~ N(0, I_T) drawn afresh each optimiser step, T the number of tasks

Knobs:
    ``seed`` (0): seed of the balancer's own generator (its state is checkpointed).

Deviations from the official code:

* The paper's weights sum to 1; we scale by ``T`` so they sum to ``T`` and average 1 per task, i.e. the
  same overall scale as ``equal`` (the paper's scale would divide the effective lr by T).
* ``z`` is drawn for *all* tasks and the step's tasks read their entries, so with one task per step its
  weight is still random (mean 1). The draw is cached per ``inp.step`` (calls within one step share it).
* A private seeded ``torch.Generator`` (checkpointed via ``extra_state``), not the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, Balancer, register_balancer


@register_balancer("rlw")
class RandomLossWeighting(Balancer):
    """Random loss weighting (Lin et al., TMLR 2022, "Reasonable Effectiveness of Random
    Weighting"): ``w = T * softmax(z)``, ``z ~ N(0, I_T)`` drawn afresh each optimiser step.

    The paper's weights sum to 1; we scale by the number of tasks ``T`` so they sum to ``T`` and
    average 1 per task, i.e. the same overall scale as ``equal`` (the paper's scale would divide
    the effective lr by T). ``z`` is drawn for *all* tasks and the step's tasks read their entries,
    so with one task per step its weight is still random (mean 1); with all tasks the weights sum
    to ``T``. The draw is cached per ``inp.step`` (calls within one step share it). The
    generator is seeded with ``seed`` and its state is checkpointed (``extra_state``).
    """

    def __init__(self, task_names: Sequence[str], seed: int = 0, **kwargs: Any) -> None:
        super().__init__(task_names, **kwargs)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.register_buffer("cached_step", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("cached_z", torch.zeros(len(self.task_names)))

    def weights(self, inp: BalanceInput) -> Tensor:
        if int(self.cached_step) != inp.step:
            z = torch.randn(len(self.task_names), generator=self.generator)
            self.cached_z.copy_(z)
            self.cached_step.fill_(inp.step)
        w = len(self.task_names) * torch.softmax(self.cached_z.cpu(), dim=0)
        return w[self.index(inp.tasks)]

    def get_extra_state(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator_state": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator_state"])

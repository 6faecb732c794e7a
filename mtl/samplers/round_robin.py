"""``round_robin``: tasks in the config's order, cyclically, one per step; sizes are ignored.

Rule: step k (the k-th draw) takes task ``k mod #tasks``; each task's share is ``1 / #tasks`` over every
whole cycle.

Knobs:
    ``max_examples_per_task`` (None = no cap): only affects the epoch length here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mtl.samplers.base import TaskSampler, register_sampler


@register_sampler("round_robin")
class RoundRobin(TaskSampler):
    """Tasks in the config's order, cyclically, one per step; ignores sizes entirely.

    The position is a cursor advanced per draw (not ``step % #tasks``), so the cycle stays
    intact even if the trainer draws more than once per step; it is checkpointed.
    """

    def __init__(
        self, task_sizes: Mapping[str, int], seed: int = 0, max_examples_per_task: int | None = None
    ) -> None:
        super().__init__(task_sizes, seed=seed, max_examples_per_task=max_examples_per_task)
        self.cursor = 0

    def tasks_for_step(self, step: int, max_steps: int) -> list[str]:
        task = self.task_names[self.cursor]
        self.cursor = (self.cursor + 1) % len(self.task_names)
        return [task]

    def probabilities(self, step: int, max_steps: int) -> np.ndarray:
        """Each task's fraction of one cycle (exact over every whole cycle)."""
        k = len(self.task_names)
        return np.full(k, 1.0 / k)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "cursor": self.cursor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.cursor = int(state["cursor"]) % len(self.task_names)

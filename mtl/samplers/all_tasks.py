"""``all_tasks``: one batch of every task each step (what the Gramian-level balancers need).

Rule: every step carries all tasks (``one_task_per_step = False``). An epoch is
``ceil(max_i n_i / batch_size)`` steps: the largest task is seen once, smaller ones are cycled more often.

Knobs:
    ``max_examples_per_task`` (None = no cap): the cap applied to ``n_i`` (epoch length only).
"""

from __future__ import annotations

import numpy as np

from mtl.samplers.base import TaskSampler, register_sampler


@register_sampler("all_tasks")
class AllTasks(TaskSampler):
    """One batch of every task each step (what gradient-level balancers need)."""

    one_task_per_step = False

    def tasks_for_step(self, step: int, max_steps: int) -> list[str]:
        return list(self.task_names)

    def probabilities(self, step: int, max_steps: int) -> np.ndarray:
        """Every task has one of the step's batches, so each holds ``1/#tasks`` of them."""
        k = len(self.task_names)
        return np.full(k, 1.0 / k)

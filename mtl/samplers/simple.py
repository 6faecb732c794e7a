"""The built-in samplers. ``n_i`` is task i's size after the cap, ``T`` a temperature.

============== ==========================================================================
name           rule
============== ==========================================================================
proportional   one task per step, ``p_i = n_i / sum_j n_j`` (the Tianchi baseline)
uniform        one task per step, ``p_i = 1 / #tasks``
temperature    one task per step, ``p_i ∝ n_i^(1/T)`` (T=1 proportional, T->inf uniform)
annealed       ``temperature`` with T moving linearly from ``t_start`` to ``t_end``
round_robin    tasks in the config's order, cyclically, one per step
all_tasks      one batch of every task each step (``one_task_per_step = False``)
============== ==========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mtl.samplers.base import ProbabilitySampler, TaskSampler, register_sampler, tempered


@register_sampler("proportional")
class Proportional(ProbabilitySampler):
    """``p_i ∝ n_i``: every (capped) example equally likely, so an epoch sees each about once."""

    def __init__(
        self, task_sizes: Mapping[str, int], seed: int = 0, max_examples_per_task: int | None = None
    ) -> None:
        super().__init__(task_sizes, seed=seed, max_examples_per_task=max_examples_per_task)
        sizes = self._sizes_array()
        self._p = sizes / sizes.sum()

    def probabilities(self, step: int, max_steps: int) -> np.ndarray:
        return self._p.copy()


@register_sampler("uniform")
class Uniform(ProbabilitySampler):
    """``p_i = 1/#tasks``: small tasks get as many steps as big ones (and are repeated more)."""

    def probabilities(self, step: int, max_steps: int) -> np.ndarray:
        k = len(self.task_names)
        return np.full(k, 1.0 / k)


@register_sampler("temperature")
class Temperature(ProbabilitySampler):
    """``p_i ∝ n_i^(1/T)``: interpolates proportional (T=1) and uniform (T->inf).

    The usual multilingual/multi-task compromise (mBERT/XLM, T5 ablations): big tasks
    still get more steps, but sub-linearly, so small tasks are not starved.
    """

    def __init__(
        self,
        task_sizes: Mapping[str, int],
        seed: int = 0,
        max_examples_per_task: int | None = None,
        temperature: float = 2.0,
    ) -> None:
        super().__init__(task_sizes, seed=seed, max_examples_per_task=max_examples_per_task)
        self.temperature = float(temperature)
        self._p = tempered(self._sizes_array(), self.temperature)

    def probabilities(self, step: int, max_steps: int) -> np.ndarray:
        return self._p.copy()


@register_sampler("annealed")
class Annealed(ProbabilitySampler):
    """``p_i ∝ n_i^(1/T(step))`` with ``T(step) = t_start + (t_end - t_start) * min(1, step / H)``.

    ``H`` is ``anneal_steps`` or, by default, ``max_steps`` (all of training); steps count
    from 0, so step 0 uses ``t_start`` and steps >= H use ``t_end``.

    Direction: the defaults go 1.0 -> 5.0, i.e. from size-proportional towards nearly
    uniform, as in the annealed sampling of Stickland & Murray (2019, "BERT and PALs"),
    used by jiant. Early on the shared encoder learns from the data-rich tasks without
    the small tasks being repeated (and over-fitted) many times; late in training, where
    checkpoints are selected, the small tasks get a fair share instead of being
    overwritten by the big ones. Set ``t_start > t_end`` for the opposite schedule.
    (Stickland & Murray anneal the exponent ``1/T`` linearly; here ``T`` is linear.)
    """

    def __init__(
        self,
        task_sizes: Mapping[str, int],
        seed: int = 0,
        max_examples_per_task: int | None = None,
        t_start: float = 1.0,
        t_end: float = 5.0,
        anneal_steps: int | None = None,
    ) -> None:
        super().__init__(task_sizes, seed=seed, max_examples_per_task=max_examples_per_task)
        if not (t_start > 0 and t_end > 0):
            raise ValueError(f"t_start and t_end must be > 0, got {t_start}, {t_end}")
        if anneal_steps is not None and int(anneal_steps) < 1:
            raise ValueError(f"anneal_steps must be >= 1 or null (all of training), got {anneal_steps}")
        self.t_start = float(t_start)
        self.t_end = float(t_end)
        self.anneal_steps = None if anneal_steps is None else int(anneal_steps)
        self._sizes = self._sizes_array()

    def temperature_at(self, step: int, max_steps: int) -> float:
        """The temperature used at ``step`` (also worth logging)."""
        horizon = self.anneal_steps if self.anneal_steps is not None else max_steps
        if horizon < 1:
            raise ValueError(f"annealed sampler needs max_steps >= 1 (or anneal_steps), got {max_steps}")
        frac = min(max(step / horizon, 0.0), 1.0)
        return self.t_start + (self.t_end - self.t_start) * frac

    def probabilities(self, step: int, max_steps: int) -> np.ndarray:
        return tempered(self._sizes, self.temperature_at(step, max_steps))


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

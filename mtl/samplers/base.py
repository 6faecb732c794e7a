"""The task-sampler interface: which tasks feed each optimisation step.

A sampler sees only task sizes (examples per task after any cap) and the step counter; it
owns a seeded generator whose state is checkpointed, so a resumed run draws the same tasks.

Sizes and the cap
    ``n_i`` is task *i*'s training-set size after the per-task cap ``max_examples_per_task``
    (``n_i = min(N_i, K)``, T5's "examples-proportional mixing with cap K"). Every
    size-based rule and the epoch length use the capped sizes, so one huge task cannot
    dominate the mixture or stretch an epoch.

Epoch definition (:meth:`TaskSampler.steps_per_epoch`)
    One epoch is the number of steps that presents, in expectation, as many training
    examples as all tasks hold together (after caps):

    - one-task-per-step samplers: ``ceil(sum_i n_i / batch_size)``; each step presents one
      batch of one task, whatever the task, so the step count is the same for every rule.
      Only under ``proportional`` does this also mean "each task is seen about once";
      under ``uniform``/``temperature`` small tasks are repeated and large ones under-seen.
    - ``all_tasks`` (one batch of *every* task per step): ``ceil(max_i n_i / batch_size)``,
      i.e. the largest task is seen once and smaller tasks are cycled more often.

    ``batch_size`` is the number of examples of one task in one optimisation step (the
    effective batch: per-device batch x gradient accumulation x devices). The trainer
    uses this to turn ``trainer.max_epochs`` into ``max_steps``.

Probability-based samplers subclass :class:`ProbabilitySampler` and only define
:meth:`~TaskSampler.probabilities`; the draw and its checkpointing are shared. :func:`tempered`
is the size-temperature rule shared by ``temperature`` and ``annealed``; :func:`sampler_options`
lists what a sampler's constructor takes from the config.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from mtl.registry import Registry


class TaskSampler:
    """Base class. Subclasses implement :meth:`tasks_for_step`.

    ``one_task_per_step`` tells the trainer (and the start-up check that refuses gradient
    balancers with such samplers) whether a step ever carries more than one task.

    Subclasses that keep state besides the generator and counts (a cursor, a schedule)
    extend :meth:`state_dict` / :meth:`load_state_dict` so a resumed run continues the
    same sequence.
    """

    registry_name: ClassVar[str] = ""
    one_task_per_step: ClassVar[bool] = True

    def __init__(
        self,
        task_sizes: Mapping[str, int],
        seed: int = 0,
        max_examples_per_task: int | None = None,
    ) -> None:
        if not task_sizes:
            raise ValueError("a task sampler needs at least one task")
        empty = [t for t, n in task_sizes.items() if n <= 0]
        if empty:
            raise ValueError(f"tasks with no training examples: {empty}")
        cap = max_examples_per_task
        if cap is not None and int(cap) < 1:
            # 0 used to silently mean "no cap"; make the intent explicit instead.
            raise ValueError(f"max_examples_per_task must be >= 1 or null (no cap), got {cap}")
        self.task_names = list(task_sizes)
        self.raw_sizes = {t: int(n) for t, n in task_sizes.items()}
        self.max_examples_per_task = None if cap is None else int(cap)
        self.sizes = {
            t: n if self.max_examples_per_task is None else min(n, self.max_examples_per_task)
            for t, n in self.raw_sizes.items()
        }
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.counts = {t: 0 for t in self.task_names}

    # -- the rule ---------------------------------------------------------------------------
    def tasks_for_step(self, step: int, max_steps: int) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def probabilities(self, step: int, max_steps: int) -> np.ndarray:
        """Expected share of task batches at ``step``, in ``task_names`` order (sums to 1).

        The trainer logs it next to :meth:`proportions` (the realised share). Samplers
        that cannot state it leave this unimplemented (it raises ``NotImplementedError``).
        """
        raise NotImplementedError(
            f"sampler {self.registry_name or type(self).__name__!r} has no probabilities"
        )

    # -- what the trainer calls -------------------------------------------------------------
    def draw(self, step: int, max_steps: int) -> list[str]:
        """What the trainer calls: the step's tasks, with realised counts recorded."""
        tasks = self.tasks_for_step(step, max_steps)
        for t in tasks:
            self.counts[t] += 1
        return tasks

    def proportions(self) -> dict[str, float]:
        """Realised share of task batches so far (logged and saved in metrics)."""
        total = sum(self.counts.values())
        return {t: (c / total if total else 0.0) for t, c in self.counts.items()}

    def steps_per_epoch(self, batch_size: int) -> int:
        """Steps in one epoch (see the module docstring for the definition and why)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sizes = self.sizes.values()
        examples = sum(sizes) if self.one_task_per_step else max(sizes)
        return max(1, math.ceil(examples / batch_size))

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain Python values only (ints, strs, dicts), so it pickles and JSON-dumps."""
        return {
            "sampler": self.registry_name,
            "rng": self.rng.bit_generator.state,
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        counts = {t: int(c) for t, c in state["counts"].items()}
        if set(counts) != set(self.task_names):
            # Resuming with another task set would silently mis-attribute counts.
            raise ValueError(
                f"sampler state is for tasks {sorted(counts)}, but this run has {sorted(self.task_names)}"
            )
        saved = state.get("sampler")
        if saved and self.registry_name and saved != self.registry_name:
            raise ValueError(f"sampler state was saved by {saved!r}, not {self.registry_name!r}")
        self.rng.bit_generator.state = state["rng"]
        self.counts = {t: counts[t] for t in self.task_names}


class ProbabilitySampler(TaskSampler):
    """One task per step, drawn from :meth:`probabilities`; subclasses only define those.

    The draw is inverse-CDF sampling on one ``rng.random()`` (what ``Generator.choice``
    does internally, minus its per-call overhead), so the sequence is a pure function of
    the seed and the probabilities: a resumed run with the restored generator continues
    identically.
    """

    def probabilities(self, step: int, max_steps: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def tasks_for_step(self, step: int, max_steps: int) -> list[str]:
        cdf = np.cumsum(self.probabilities(step, max_steps))
        u = self.rng.random() * cdf[-1]  # rescale guards against rounding in the sum
        i = min(int(np.searchsorted(cdf, u, side="right")), len(cdf) - 1)
        return [self.task_names[i]]

    def _sizes_array(self) -> np.ndarray:
        return np.array([self.sizes[t] for t in self.task_names], dtype=np.float64)


def tempered(sizes: np.ndarray, temperature: float) -> np.ndarray:
    """``p_i ∝ n_i^(1/T)``, computed in log space so large sizes / small T cannot overflow.

    ``T = 1`` is size-proportional; ``T = inf`` gives exactly uniform.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = np.log(sizes) / temperature
    w = np.exp(logits - logits.max())
    return w / w.sum()


#: constructor arguments that the run supplies, not the ``sampler`` config group
RUN_SUPPLIED = ("self", "task_sizes", "seed")


def sampler_options(cls: type[TaskSampler]) -> dict[str, Any] | None:
    """The config options ``cls``'s constructor takes (``task_sizes`` and ``seed`` come from the run),
    with their defaults (``inspect.Parameter.empty`` when required); ``None`` when it takes ``**kwargs``."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n: p.default for n, p in params.items() if n not in RUN_SUPPLIED}


SAMPLERS: Registry[TaskSampler] = Registry("sampler")
register_sampler = SAMPLERS.register

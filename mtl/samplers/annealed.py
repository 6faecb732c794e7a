"""``annealed``: ``temperature`` sampling with the temperature moving linearly over training.

Reference: the annealed sampling of A. C. Stickland & I. Murray, "BERT and PALs: Projected Attention
Layers for Efficient Adaptation in Multi-Task Learning", ICML 2019 (https://arxiv.org/abs/1902.02671),
as used by jiant.

Rule::

    p_i ∝ n_i^(1/T(step)),      T(step) = t_start + (t_end - t_start) * min(1, step / H)

``H`` is ``anneal_steps`` or, by default, ``max_steps`` (all of training); steps count from 0, so step 0
uses ``t_start`` and steps >= H use ``t_end``.

Default 1 -> 5: proportional early, near-uniform late. Early on the shared encoder learns from the
data-rich tasks without the small tasks being repeated (and over-fitted) many times; late in training,
where checkpoints are chosen, the small tasks get a fair share instead of being overwritten by the big
ones. Swap the two (``t_start > t_end``) for the opposite schedule.

Knobs:
    ``t_start`` (1.0), ``t_end`` (5.0): the temperatures at step 0 and at step ``H`` (both > 0).
    ``anneal_steps`` (None = all of training, ``max_steps``): ``H``, the steps to reach ``t_end``.
    ``max_examples_per_task`` (None = no cap): the cap applied to ``n_i`` first.

Deviation from Stickland & Murray: they anneal the exponent ``1/T`` linearly; here ``T`` is linear.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mtl.samplers.base import ProbabilitySampler, register_sampler, tempered


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

"""``uniform``: one task per step, every task equally likely (small tasks are repeated more).

Rule::

    p_i = 1 / #tasks

Knobs:
    ``max_examples_per_task`` (None = no cap): only affects the epoch length here.
"""

from __future__ import annotations

import numpy as np

from mtl.samplers.base import ProbabilitySampler, register_sampler


@register_sampler("uniform")
class Uniform(ProbabilitySampler):
    """``p_i = 1/#tasks``: small tasks get as many steps as big ones (and are repeated more)."""

    def probabilities(self, step: int, max_steps: int) -> np.ndarray:
        k = len(self.task_names)
        return np.full(k, 1.0 / k)

"""``proportional``: one task per step, drawn in proportion to its (capped) size: the Tianchi baseline.

Reference: the "examples-proportional mixing with cap K" of C. Raffel et al., "Exploring the Limits of
Transfer Learning with a Unified Text-to-Text Transformer", JMLR 2020. https://arxiv.org/abs/1910.10683

Rule::

    p_i = n_i / sum_j n_j,        n_i = min(N_i, K)  (the task's training size after the cap)

Every (capped) example is equally likely, so an epoch sees each about once.

Knobs:
    ``max_examples_per_task`` (None = no cap): ``K``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mtl.samplers.base import ProbabilitySampler, register_sampler


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

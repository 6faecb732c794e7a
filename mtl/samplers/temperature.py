"""``temperature``: one task per step, ``p_i ∝ n_i^(1/T)``, between proportional (T=1) and uniform (T->inf).

Reference: temperature-based sampling of N. Arivazhagan et al., "Massively Multilingual Neural Machine
Translation in the Wild: Findings and Challenges", 2019 (https://arxiv.org/abs/1907.05019), also used by
mBERT/XLM and in the T5 ablations.

Rule::

    p_i = n_i^(1/T) / sum_j n_j^(1/T)        (computed in log space: no overflow for large n or small T)

Big tasks still get more steps, but sub-linearly, so small tasks are not starved.

Knobs:
    ``temperature`` (2.0): ``T`` (> 0); 1 is proportional, ``inf`` exactly uniform.
    ``max_examples_per_task`` (None = no cap): the cap applied to ``n_i`` first.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mtl.samplers.base import ProbabilitySampler, register_sampler, tempered


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

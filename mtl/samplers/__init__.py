"""Task samplers: a registry of rules for which tasks feed each step.

One module per built-in (formula and knobs in its docstring):

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

``n_i`` is task i's size after the cap. Users add their own with ``@register_sampler("name")`` on a
:class:`TaskSampler` (or :class:`ProbabilitySampler`) subclass. The contract and the epoch definition
are in :mod:`mtl.samplers.base`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtl.registry import check_options
from mtl.samplers import (  # noqa: F401  (each module registers its sampler)
    all_tasks,
    annealed,
    proportional,
    round_robin,
    temperature,
    uniform,
)
from mtl.samplers.base import SAMPLERS, ProbabilitySampler, TaskSampler, register_sampler, sampler_options

__all__ = ["SAMPLERS", "ProbabilitySampler", "TaskSampler", "register_sampler", "build_sampler", "sampler_options"]


def build_sampler(name: str, task_sizes: Mapping[str, int], seed: int = 0, **kwargs: Any) -> TaskSampler:
    """Instantiate a registered sampler by name (unknown names list the registered ones).

    ``kwargs`` are the rest of the ``sampler`` config group; a key the sampler does not
    take (a typo such as ``temprature``) is an error naming the keys it does take, rather
    than a bare ``TypeError`` from deep inside Hydra's call.
    """
    cls = SAMPLERS.get(name)
    options = sampler_options(cls)
    if options is not None:
        check_options("sampler", name, kwargs, options)
    return cls(task_sizes, seed=seed, **kwargs)

"""Task samplers: a registry of rules for which tasks feed each step.

Built-ins (see :mod:`mtl.samplers.simple`): ``proportional``, ``uniform``, ``temperature``,
``annealed``, ``round_robin``, ``all_tasks``. Users add their own with
``@register_sampler("name")`` on a :class:`TaskSampler` (or :class:`ProbabilitySampler`)
subclass. The epoch definition is in :mod:`mtl.samplers.base`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from mtl.samplers import simple  # noqa: F401  (registers the built-in samplers)
from mtl.samplers.base import SAMPLERS, ProbabilitySampler, TaskSampler, register_sampler

__all__ = ["SAMPLERS", "ProbabilitySampler", "TaskSampler", "register_sampler", "build_sampler"]


def build_sampler(name: str, task_sizes: Mapping[str, int], seed: int = 0, **kwargs: Any) -> TaskSampler:
    """Instantiate a registered sampler by name (unknown names list the registered ones).

    ``kwargs`` are the rest of the ``sampler`` config group; a key the sampler does not
    take (a typo such as ``temprature``) is an error naming the keys it does take, rather
    than a bare ``TypeError`` from deep inside Hydra's call.
    """
    cls = SAMPLERS.get(name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any:
        accepted = [p for p in params if p not in ("self", "task_sizes", "seed")]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(f"sampler {name!r} got unknown option(s) {unknown}; it takes {accepted}")
    return cls(task_sizes, seed=seed, **kwargs)

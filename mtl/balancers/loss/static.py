"""``static``: fixed per-task weights given in the config; tasks not named get ``default``.

Paper: none (hand-tuned task weights, the classic alternative to ``equal``).

Formula::

    w_i = weights[i] if task i is named in ``weights`` else ``default``

Knobs:
    ``weights`` (none: every task gets ``default``): ``{task: weight}``, finite non-negative numbers, e.g. on
    the command line ``balancer=static 'balancer.weights={ocnli:1.0,tnews:0.5}'``.
    ``default`` (1.0): the weight of every task not named in ``weights``.

Deviations from the official code: not applicable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, Balancer, register_balancer


def _usable(value: object) -> bool:
    """A finite, non-negative number (NaN and inf would make every step non-finite)."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return math.isfinite(x) and x >= 0.0


@register_balancer("static")
class Static(Balancer):
    """Fixed per-task weights given in the config; unnamed tasks get ``default``."""

    def __init__(
        self,
        task_names: Sequence[str],
        weights: Mapping[str, float] | None = None,
        default: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(task_names, **kwargs)
        given = dict(weights or {})
        unknown = sorted(set(given) - set(self.task_names))
        if unknown:
            raise ValueError(f"static balancer weights name unknown tasks {unknown}; tasks are {self.task_names}")
        bad = {k: v for k, v in given.items() if not _usable(v)}
        if bad:
            raise ValueError(f"static balancer weights must be finite non-negative numbers, got {bad}")
        if not _usable(default):
            raise ValueError(f"static balancer default must be a finite non-negative number, got {default!r}")
        self.register_buffer(
            "fixed", torch.tensor([float(given.get(t, default)) for t in self.task_names])
        )

    def weights(self, inp: BalanceInput) -> Tensor:
        return self.fixed[self.index(inp.tasks)].clone()

"""Averaged weights for evaluation: an exponential moving average (EMA) or stochastic weight averaging (SWA).

The average is kept for the trainable parameters only (a frozen embedding matrix never changes, so its
average is itself) and updated after every optimiser step. Evaluation and ``best.pt`` use the averaged
weights (:meth:`WeightAverage.swapped`); training continues from the raw ones. ``last.pt`` keeps both.

**EMA** (Polyak & Juditsky 1992; the form of TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``): ``s_t = d_t · s_{t−1} + (1 − d_t) · θ_t`` from ``s_0 = θ_0``, with
``d_t = min(d, (1 + t) / (10 + t))`` at the ``t``-th update (``t = 1, 2, …``): a short warm-up, so that a
run of a few hundred steps is not dominated by its random initial heads (with a fixed ``d = 0.999`` the
average after 360 steps still holds ``0.999^360 ≈ 70 %`` of the initial weights).

**SWA** (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization", UAI 2018,
https://arxiv.org/abs/1803.05407): the equal-weight average of the iterates from ``start`` on,
``s = (1/n) Σ θ``. Deviation: every step's weights are averaged (the paper averages once per epoch under a
cyclical or constant learning rate); the run's own schedule (linear decay) is kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["WeightAverage", "ema_decay_at"]


def ema_decay_at(decay: float, t: int) -> float:
    """The EMA decay used at the ``t``-th update: ``min(decay, (1 + t) / (10 + t))``."""
    return min(float(decay), (1.0 + t) / (10.0 + t))


class WeightAverage:
    """EMA (``ema_decay``) or SWA (``swa_start``: the first step averaged) of ``params``."""

    def __init__(self, params: Sequence[nn.Parameter], *, ema_decay: float | None = None,
                 swa_start: int | None = None) -> None:
        if (ema_decay is None) == (swa_start is None):
            raise ValueError("give exactly one of ema_decay (EMA) and swa_start (SWA)")
        if ema_decay is not None and not 0.0 < float(ema_decay) < 1.0:
            raise ValueError(f"trainer.ema_decay={ema_decay}: must lie in (0, 1)")
        self.params = [p for p in params if p.requires_grad]
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.swa_start = None if swa_start is None else int(swa_start)
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0  # EMA: updates so far; SWA: iterates averaged so far

    @property
    def kind(self) -> str:
        return "ema" if self.ema_decay is not None else "swa"

    @property
    def active(self) -> bool:
        """Whether the average differs from nothing yet (SWA before its start holds no iterate)."""
        return self.kind == "ema" or self.updates > 0

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After the optimiser step that made the run's step count ``step`` (1-based)."""
        current = [p.detach() for p in self.params]
        if self.ema_decay is not None:
            self.updates += 1
            torch._foreach_lerp_(self.shadow, current, 1.0 - ema_decay_at(self.ema_decay, self.updates))
            return
        assert self.swa_start is not None
        if step < self.swa_start:
            return
        self.updates += 1
        if self.updates == 1:
            for s, p in zip(self.shadow, current, strict=True):
                s.copy_(p)
        else:
            torch._foreach_lerp_(self.shadow, current, 1.0 / self.updates)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside: the parameters hold the averaged weights (when :attr:`active`); restored on exit."""
        if not self.active:
            yield
            return
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw, strict=True):
                    p.copy_(r)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "updates": self.updates, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind or len(state.get("shadow", [])) != len(self.shadow):
            raise ValueError(f"the checkpoint's weight average ({state.get('kind')}, {len(state.get('shadow', []))} "
                             f"tensors) does not fit this run's ({self.kind}, {len(self.shadow)} tensors)")
        self.updates = int(state["updates"])
        with torch.no_grad():
            for s, t in zip(self.shadow, state["shadow"], strict=True):
                s.copy_(t.to(s.device, s.dtype))


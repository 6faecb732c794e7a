"""Small helpers shared by the stateful methods of both families (loss history, first-seen losses).

Conventions of the stateful methods:

* Per-task state is indexed by position in ``task_names`` (``self.index(inp.tasks)``), so a
  step that carries a strict subset of the tasks (one-task-per-step samplers) reads and updates
  only its own tasks' entries.
* All state lives in buffers (or ``extra_state`` for an RNG), so ``state_dict()`` round-trips.
* The trainer calls ``compute`` once per optimiser step with full-batch losses, however the batch
  was split into micro-batches. A caller may still call it more than once with the same
  ``inp.step`` (e.g. per chunk); each method says what it does then.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput


def step_losses(inp: BalanceInput, like: Tensor | None = None) -> Tensor:
    """The step's losses as a detached float32 tensor (on ``like``'s device when given)."""
    out = inp.losses.detach().to(torch.float32)
    return out.to(like.device) if like is not None else out


def record_first_losses(first: Tensor, seen: Tensor, idx: Tensor, losses: Tensor) -> None:
    """Store ``losses`` as the first-seen loss of the tasks at ``idx`` that have none yet.

    Non-finite losses are not recorded (the trainer skips such a step; the next finite loss counts).
    """
    new = ~seen[idx] & torch.isfinite(losses)
    if bool(new.any()):
        first[idx[new]] = losses[new]
        seen[idx[new]] = True


class LazyBuffersMixin:
    """Buffers whose shape is known only at the first step (per-coordinate statistics ``[T, D]``).

    They are registered empty in ``__init__`` (so ``.to(device)`` moves them and ``state_dict`` holds them),
    allocated at the first step, and re-shaped to the checkpoint's shape on load (``load_state_dict`` would
    otherwise refuse an empty buffer against a filled one). List their names in ``lazy_buffers``; put the
    mixin before :class:`~mtl.balancers.base.Balancer` in the bases.
    """

    lazy_buffers: tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        for name in self.lazy_buffers:
            value = state_dict.get(prefix + name)
            current = getattr(self, name)
            if value is not None and current.shape != value.shape:
                setattr(self, name, torch.empty(value.shape, dtype=current.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]

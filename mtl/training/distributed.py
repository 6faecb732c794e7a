"""torch.distributed without a DDP wrapper: start-up under ``torchrun``, rank-0-only side effects,
and the few collectives the trainer needs.

Design (see ``docs/scale.md``):

* ``torchrun`` (or ``srun torchrun`` under SLURM) sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
  ``MASTER_ADDR``/``MASTER_PORT``; :func:`init_distributed` joins the group with ``env://``
  (``nccl`` when CUDA is there, ``gloo`` on CPU; ``MTL_DIST_BACKEND`` overrides).
* The model is *not* wrapped in ``DistributedDataParallel``: the gradient engine calls backward
  several times per step (once per task in the gradient modes, once per micro-batch with
  accumulation) and sometimes sets ``.grad`` itself, which fits DDP's one-backward hooks badly
  (``no_sync`` juggling, ``find_unused_parameters`` for the heads of absent tasks). Instead, after
  the engine has produced the step's gradients, :func:`all_reduce_gradients` averages every
  parameter gradient in a few flattened buckets. Trade-off: no overlap of communication with the
  backward pass (DDP's main speed trick), in exchange for exact, simple semantics with every
  balancer. The gradient modes already average each task's gradient vectors (representation) or
  Jacobian rows (parameters) across ranks before forming the Gramian, so every rank computes the
  same weights; per-task losses and accuracy counts are averaged too (loss-weighting balancers
  and their state stay identical on every rank).
* Rank 0 alone writes files (config, logs, checkpoints, metrics); every rank agrees on rank 0's
  run directory (:func:`agree_run_dir`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)

BACKEND_ENV = "MTL_DIST_BACKEND"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False  # True when init_distributed started the group (and cleanup should end it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return get_rank() == 0


def init_distributed(backend: str | None = None, timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``); otherwise a no-op.

    An already initialised group (e.g. created by a test harness) is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank(), created=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():  # pragma: no cover - every supported torch build has it
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    lrank = local_rank()
    backend = backend or os.environ.get(BACKEND_ENV) or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        if torch.cuda.device_count() <= lrank:
            raise RuntimeError(
                f"LOCAL_RANK={lrank} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                "use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(lrank)
    dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(minutes=timeout_minutes))
    info = DistInfo(dist.get_rank(), dist.get_world_size(), lrank, created=True)
    if info.is_main:
        log.info("torch.distributed: %d processes, backend %s", info.world_size, backend)
    return info


def cleanup(info: DistInfo) -> None:
    """End the group if :func:`init_distributed` started it."""
    if info.created and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def quiet_other_ranks() -> None:
    """Only rank 0 logs at INFO; the others keep warnings and errors (one readable log)."""
    if not is_main():
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("mtl").setLevel(logging.WARNING)


# ----------------------------------------------------------------------------- collectives


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s value of ``obj`` on every rank (identity when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_(tensor: Tensor, op: str = "mean") -> Tensor:
    """In-place sum/mean over ranks (moves through the backend's device when needed)."""
    if not is_distributed():
        return tensor
    dev = _collective_device()
    buf = tensor if tensor.device == dev else tensor.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if op == "mean":
        buf /= dist.get_world_size()
    elif op != "sum":
        raise ValueError(f"op must be 'sum' or 'mean', got {op!r}")
    if buf is not tensor:
        tensor.copy_(buf)
    return tensor


def agree_run_dir(run_dir: str | Path) -> Path:
    """Rank 0's run directory on every rank (Hydra's ``${now:...}`` may differ by a second between ranks)."""
    chosen = broadcast_object(str(run_dir))
    if str(chosen) != str(run_dir):
        log.warning("rank %d: using rank 0's run directory %s (this rank's Hydra chose %s)", get_rank(), chosen, run_dir)
    return Path(chosen)


@torch.no_grad()
def broadcast_parameters(module: nn.Module, src: int = 0) -> None:
    """Start every rank from rank 0's weights and floating-point buffers (what DDP does at construction).

    Integer/bool buffers (position ids, counters) are deterministic and left alone.
    """
    if not is_distributed():
        return
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            if t.device == _collective_device():
                dist.broadcast(t.data, src=src)
            else:
                buf = t.data.to(_collective_device())
                dist.broadcast(buf, src=src)
                t.data.copy_(buf)


@torch.no_grad()
def all_reduce_gradients(params: Iterable[nn.Parameter], bucket_numel: int = 1 << 25) -> int:
    """Average ``.grad`` over ranks in flattened buckets; returns the number of elements reduced.

    Only parameters whose ``.grad`` is set take part. Every rank must have gradients on the same
    parameters, which holds by construction: all ranks draw the same tasks each step (the task
    sampler is seeded identically) and run the same engine code.
    """
    if not is_distributed():
        return 0
    grads = [p.grad for p in params if p.grad is not None]
    by_kind: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for g in grads:
        by_kind.setdefault((g.dtype, g.device), []).append(g)
    total = 0
    for group in by_kind.values():
        for bucket in _buckets(group, bucket_numel):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            all_reduce_(flat, "mean")
            offset = 0
            for g in bucket:
                n = g.numel()
                g.copy_(flat[offset : offset + n].view_as(g))
                offset += n
            total += flat.numel()
    return total


def _buckets(tensors: Sequence[Tensor], limit: int) -> Iterable[list[Tensor]]:
    bucket: list[Tensor] = []
    size = 0
    for t in tensors:
        if bucket and size + t.numel() > limit:
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket

"""The one device resolver: ``trainer.device`` / ``mtl-predict --device`` strings to a ``torch.device``."""

from __future__ import annotations

import os

import torch


def _local_rank() -> int:
    """This process's GPU index under ``torchrun`` (``LOCAL_RANK``), read from the environment."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(name: str) -> torch.device:
    """``auto``: this process's GPU if CUDA is available (``cuda:LOCAL_RANK`` under torchrun), else the CPU.

    ``cuda`` means the same GPU as ``auto``; ``cuda:N`` and ``cpu`` are taken as written. Asking for CUDA
    where there is none is an error that names the setting.
    """
    name = str(name)
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", _local_rank() if _under_torchrun() else torch.cuda.current_device())
    if name == "auto":
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available here; use cpu or auto")
    return device

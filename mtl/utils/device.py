"""The one device resolver: ``trainer.device`` / ``mtl-predict --device`` strings to a ``torch.device``."""

from __future__ import annotations

import os
from pathlib import Path

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


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (x86 ``avx512_bf16`` or ``amx_bf16``; Arm ``bf16``).

    oneDNN runs bf16 on any AVX-512 CPU, but without these instructions it converts to fp32 and is
    slower than fp32 itself, so only native support counts. Read from ``/proc/cpuinfo`` (Linux);
    elsewhere ``False``.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(name: str, device: torch.device) -> str:
    """``trainer.precision`` to the precision used: ``auto`` is bf16 on GPUs and CPUs that compute it natively,
    fp16 with a loss scaler on older GPUs, fp32 on other CPUs."""
    if name == "auto":
        if device.type == "cuda":
            # native bf16 only (Ampere+): pre-Ampere GPUs merely emulate it, slowly; fp16 + loss scaler there
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        # CPU: bf16 autocast where the CPU has it natively (measured on the quickstart: 1.65x the samples/s,
        # dev macro-F1 within the seed spread; docs/scale.md), fp32 elsewhere
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if name not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"trainer.precision must be auto, fp32, bf16 or fp16, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("fp16 with a loss scaler needs a CUDA device; use bf16 or fp32 on CPU")
    return name

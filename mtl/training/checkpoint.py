"""Resumable checkpoints: atomic writes, finding the checkpoint to resume from, RNG states.

The trainer's complete state (model, optimiser, scheduler, loss scaler, balancer, sampler, every
task stream's position, RNG states, counters, history) goes to ``<run_dir>/checkpoints/last.pt``
every ``trainer.checkpoint_every`` steps and at the end (see :meth:`Trainer.state_dict`).

``trainer.resume``:

* ``auto``: ``<run_dir>/checkpoints/last.pt`` if it exists, else start fresh. Point a new Hydra
  run at the old directory to continue it in place::

      mtl-train <same overrides> hydra.run.dir=outputs/2025-01-01/12-00-00_train trainer.resume=auto

* a file (``.../last.pt``) or a run directory: resume from that checkpoint; the new run writes
  to its own run directory.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl.utils.files import atomic_save, load_checkpoint_file

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT", "LAST", "atomic_save", "capture_rng", "config_differences", "load", "load_optimizer_state",
    "preserve_torch_rng", "resolve_resume", "restore_rng",
]

FORMAT = "mtl-trainer-checkpoint/1"
LAST = "last.pt"


def load(path: str | Path) -> dict[str, Any]:
    """Load a trainer checkpoint on the CPU; errors name the file."""
    return load_checkpoint_file(path)


#: optimiser settings that follow the device this run is on, not the checkpoint
IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, keeping this run's choice of implementation.

    torch restores every param group's ``fused``/``foreach``/``capturable`` from the checkpoint, so a
    run written on the CPU and resumed on a GPU would lose fused AdamW (and under fp16 crash: the
    GradScaler still treats the optimiser as fused and hands its step an inf flag the unfused
    implementation refuses), and a GPU run resumed on the CPU would switch to the CPU's fused kernel.
    The step counters go where the kept implementation wants them: float32 on the parameter's
    device (fused, capturable), a CPU scalar otherwise.
    """
    chosen = [{k: g[k] for k in IMPLEMENTATION_KEYS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, impl in zip(optimizer.param_groups, chosen, strict=True):
        group.update(impl)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                optimizer.state[p]["step"] = (
                    step.to(device=p.device, dtype=torch.float32) if on_device else step.to("cpu")
                )


def resolve_resume(spec: Any, run_dir: str | Path) -> Path | None:
    """The checkpoint file ``trainer.resume`` points at, or None to start fresh."""
    if spec is None or spec is False or str(spec).strip().lower() in ("", "none", "null", "false", "no"):
        return None
    run_dir = Path(run_dir)
    if str(spec).strip().lower() in ("auto", "true", "yes"):
        cand = run_dir / "checkpoints" / LAST
        if cand.is_file():
            return cand
        log.info("trainer.resume=auto: no checkpoint in %s, starting from scratch", cand.parent)
        return None
    p = Path(str(spec)).expanduser()
    if p.is_file():
        return p
    for cand in (p / "checkpoints" / LAST, p / LAST):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"trainer.resume={spec!r}: no checkpoint there (looked for {p}, {p / 'checkpoints' / LAST}, {p / LAST}). "
        "Pass a checkpoint file, a run directory holding checkpoints/last.pt, or trainer.resume=auto "
        "with hydra.run.dir=<the old run directory>."
    )


# ----------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


class preserve_torch_rng:  # noqa: N801 - used like contextlib helpers
    """Leave the global torch CPU RNG as it was: data loading and evaluation must not shift dropout.

    (A ``DataLoader`` draws a base seed from the global generator each time an iterator starts;
    without this, a resumed run, which restarts its iterators, would see different dropout masks.)
    """

    def __enter__(self) -> None:
        self._state = torch.get_rng_state()

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self._state)


def config_differences(old: Any, new: Any, ignore: tuple[str, ...] = ("trainer.resume",)) -> list[str]:
    """Dotted keys whose values differ between two plain config dicts (for a warning on resume)."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if prefix in ignore:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}.{k}" if prefix else str(k))
        elif a != b:
            out.append(prefix)

    walk(old, new, "")
    return out

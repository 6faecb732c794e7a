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

A checkpoint is written beside ``last.pt`` first, verified (its zip directory read back), and only then
does the old ``last.pt`` become ``prev.pt`` and the new file ``last.pt``: a resume whose ``last.pt`` is
unreadable (truncated by a copy, an empty file) falls back to ``prev.pt`` with a warning. Every error
names the file.
"""

from __future__ import annotations

import logging
import os
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl.utils.files import CheckpointError, atomic_save, load_checkpoint_file

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT", "LAST", "PREV", "CheckpointError", "ResumePoint", "atomic_save", "capture_rng", "config_differences",
    "find_resume", "load", "load_for_resume", "load_optimizer_state", "preserve_torch_rng", "previous_of",
    "resolve_resume", "restore_rng", "save_rotating", "verify",
]

FORMAT = "mtl-trainer-checkpoint/1"
LAST = "last.pt"
PREV = "prev.pt"


def load(path: str | Path) -> dict[str, Any]:
    """Load a trainer checkpoint on the CPU; errors name the file."""
    return load_checkpoint_file(path)


def previous_of(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``last.pt`` -> ``prev.pt``, ``x.pt`` -> ``x.prev.pt``."""
    path = Path(path)
    return path.with_name(PREV) if path.name == LAST else path.with_name(f"{path.stem}.prev{path.suffix}")


def verify(path: str | Path) -> None:
    """A cheap completeness check of a torch zip checkpoint: its zip directory (at the end of the file)
    reads and lists the pickle. Raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise CheckpointError(f"checkpoint {path} is empty (a write that never finished?)")
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except CheckpointError:
        raise
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupt: {type(exc).__name__}: {exc}") from exc
    if not any(n.endswith("data.pkl") for n in names):
        raise CheckpointError(f"checkpoint {path} holds no torch pickle (data.pkl): not a complete checkpoint")


def save_rotating(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` keeping the checkpoint it replaces as :func:`previous_of` ``path``.

    The new file is written beside ``path`` (atomically) and verified before anything is renamed, so at
    every moment a complete checkpoint exists: ``path``, or (between the two renames) its previous one.
    """
    path = Path(path)
    new = path.with_name(f".{path.name}.new")
    try:
        atomic_save(state, new)
        verify(new)
        if path.exists():
            try:
                verify(path)
            except CheckpointError as exc:  # an unreadable old one does not replace a good previous one
                log.warning("%s; replacing it (keeping %s)", exc, previous_of(path).name)
            else:
                os.replace(path, previous_of(path))
        os.replace(new, path)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot write checkpoint {path} ({exc}); the checkpoint before it is kept") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    finally:
        new.unlink(missing_ok=True)
    return path


@dataclass
class ResumePoint:
    """A loaded trainer checkpoint and the file it came from."""

    path: Path
    state: dict[str, Any]


def load_for_resume(path: str | Path) -> ResumePoint:
    """Load the trainer checkpoint ``path``; an unreadable one falls back to :func:`previous_of` it (warning).

    Errors are :class:`CheckpointError` naming every file tried; a model-only checkpoint (``best.pt``) is
    refused with a ``ValueError`` naming it.
    """
    path = Path(path)
    try:
        point = ResumePoint(path, load(path))
    except (CheckpointError, FileNotFoundError) as exc:
        prev = previous_of(path)
        if not prev.is_file():
            raise CheckpointError(f"{exc}; no previous checkpoint ({prev.name}) to fall back to") from exc
        try:
            point = ResumePoint(prev, load(prev))
        except (CheckpointError, FileNotFoundError) as exc2:
            raise CheckpointError(f"{exc}; the previous checkpoint is unreadable too: {exc2}") from exc2
        log.warning("%s; resuming from the previous checkpoint %s (step %s) instead",
                    exc, prev, point.state.get("step", "?"))
    if point.state.get("format") != FORMAT:
        raise ValueError(
            f"{point.path} is not a resumable trainer checkpoint (best.pt holds only the model; "
            "resume from checkpoints/last.pt)"
        )
    return point


def find_resume(spec: Any, run_dir: str | Path) -> ResumePoint | None:
    """The loaded checkpoint ``trainer.resume`` points at (:func:`resolve_resume`), or None to start fresh."""
    path = resolve_resume(spec, run_dir)
    return load_for_resume(path) if path is not None else None


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
        if previous_of(cand).is_file():  # stopped between the two renames of save_rotating
            log.warning("trainer.resume=auto: no %s, resuming from %s", cand, previous_of(cand))
            return previous_of(cand)
        log.info("trainer.resume=auto: no checkpoint in %s, starting from scratch", cand.parent)
        return None
    p = Path(str(spec)).expanduser()
    if p.is_file():
        return p
    for cand in (p / "checkpoints" / LAST, p / LAST, p / "checkpoints" / PREV, p / PREV):
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


def config_differences(
    old: Any, new: Any, ignore: tuple[str, ...] = ("trainer.resume", "trainer.overwrite")
) -> list[str]:
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

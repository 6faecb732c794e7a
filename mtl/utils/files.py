"""Atomic writes and checkpoint reads that name the file when something is wrong."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (missing, truncated, not a torch file)."""


def _temp_beside(path: Path) -> Path:
    """A unique temporary file in ``path``'s folder (same file system, so the final rename is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A run killed mid-write leaves the previous file intact (and at most a stray ``.tmp``). A full disk
    raises ``OSError(ENOSPC)`` naming the file and the space left (torch's own error for it is an opaque
    "unexpected pos" from its zip writer).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        full = _disk_full_error(exc)
        if full is None:
            raise
        tmp.unlink(missing_ok=True)  # free what the partial file took before measuring
        free = shutil.disk_usage(path.parent).free
        raise OSError(
            full.errno,
            f"no space left on the device while writing {path} ({free / 2**20:.0f} MiB free in {path.parent}): "
            "free some space (old runs' checkpoints/last.pt are the big files) or write fewer checkpoints "
            "(checkpoint_every: mtl-train's trainer.checkpoint_every=0 keeps only best.pt)",
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _disk_full_error(exc: BaseException) -> OSError | None:
    """The ``ENOSPC``/``EDQUOT`` ``OSError`` behind ``exc``, if any: torch's zip writer reports a failed write
    as a ``RuntimeError`` ("unexpected pos") raised while the ``OSError`` is being handled."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return current
        current = current.__cause__ or current.__context__
    return None


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8", newline="")  # written as given (csv brings its own \r\n)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Atomic JSON write: readers never see a half-written metrics file."""
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=float))


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load one of our checkpoint files on the CPU; every failure names the file.

    Our own run directories' files are unpickled in full (they hold label lists and the resolved config).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (a write that never finished?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle, ...: say which file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not an mtl checkpoint dict")
    return state

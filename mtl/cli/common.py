"""What the ``mtl-*`` console scripts (other than the Hydra app ``mtl-train``) share."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


class OutputDirError(OSError):
    """An output folder that cannot be created or written to; the message names it and says why."""


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The script's argument parser (``prog`` also starts its error lines, see :func:`fail`)."""
    return argparse.ArgumentParser(prog=prog, description=description)


def fail(prog: str, message: object, status: int) -> int:
    """Report an input error as one ``<prog>: <message>`` line on stderr (no traceback); returns ``status``."""
    print(f"{prog}: {message}", file=sys.stderr)
    return status


def os_error_message(exc: OSError) -> str:
    """``[Errno 13] Permission denied: '/x'`` -> ``/x: permission denied`` (the path first, no errno)."""
    reason = (exc.strerror or str(exc)).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    name = exc.filename if exc.filename is not None else ""
    return f"{name}: {reason}" if name else reason


def ensure_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Create ``path`` (and its parents) and check that a file can be written in it (a real write, so that
    read-only mounts and, for root, read-only file systems are caught too); :class:`OutputDirError` else."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{what} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputDirError(
            f"cannot write to the {what} {path} ({os_error_message(exc)}); choose another with --out"
        ) from exc
    return path

"""What the ``mtl-*`` console scripts (other than the Hydra app ``mtl-train``) share."""

from __future__ import annotations

import argparse
import sys


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The script's argument parser (``prog`` also starts its error lines, see :func:`fail`)."""
    return argparse.ArgumentParser(prog=prog, description=description)


def fail(prog: str, message: object, status: int) -> int:
    """Report an input error as one ``<prog>: <message>`` line on stderr (no traceback); returns ``status``."""
    print(f"{prog}: {message}", file=sys.stderr)
    return status

"""Tianchi text normalisation.

The Tianchi train files (TNEWS in particular) were normalised by the organisers, while the test files and
the CLUE releases were not. Applying the same function everywhere removes that train/test shift
(e.g. full-width ``，？！`` become ``,?!``).
"""

from __future__ import annotations

import unicodedata

__all__ = ["tianchi_normalize"]


def tianchi_normalize(text: str) -> str:
    """NFKD, drop combining marks, lower-case, collapse whitespace runs to one space, strip.

    The order matters and matches the organisers' pipeline: compatibility decomposition first (full-width
    forms -> ASCII, ``が`` -> ``か`` + dakuten), then the combining marks (accents, dakuten) are removed.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.lower().split())

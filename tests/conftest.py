"""Shared fixtures: small data written by the tests themselves, and the real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_root() -> Path | None:
    """``MTL_DATA_DIR`` or ``../shared/data/raw`` when they hold the Tianchi files."""
    for cand in (os.environ.get("MTL_DATA_DIR"), REPO.parent / "shared" / "data" / "raw"):
        if cand and (Path(cand) / "tianchi" / "OCNLI_train1128.csv").exists():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def fixture_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mtl.data.fixtures import write_fixture_data

    return write_fixture_data(tmp_path_factory.mktemp("data"), rows_per_task=120, seed=0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tokenisation caches out of the user's home; keep the converted encoder cache if set."""
    if not os.environ.get("MTL_CACHE_DIR"):
        monkeypatch.setenv("MTL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mtl-cache"))

"""The real Tianchi/CLUE files (skipped when absent): row counts, dev sizes and labels from the data README."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from mtl.data import load_task

CONFIGS = Path(__file__).resolve().parents[1] / "mtl" / "conf"


def real_root() -> Path | None:
    candidates = [os.environ.get("MTL_DATA_DIR"), Path(__file__).resolve().parents[2] / "shared/data/raw"]
    for c in candidates:
        if c and (Path(c) / "tianchi" / "OCNLI_train1128.csv").is_file():
            return Path(c)
    return None


ROOT = real_root()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        ROOT is None, reason="real data not found (set MTL_DATA_DIR or put it in ../shared/data/raw)"
    ),
]


def load(file: str, **data_overrides: object):
    cfg = OmegaConf.load(CONFIGS / "tasks" / f"{file}.yaml")
    assert isinstance(cfg, DictConfig)
    name = str(next(iter(cfg)))
    data = {
        "root": str(ROOT),
        "on_bad_row": "error",
        "normalize": True,
        "dev_fraction": 0.1,
        **data_overrides,
    }
    start = time.perf_counter()
    task = load_task(name, cfg[name], data, seed=0)
    print(f"{file}: {time.perf_counter() - start:.2f}s  {task.report.summary()}")
    return task


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTL_DATA_DIR", raising=False)  # ROOT already took it into account


def test_real_tianchi_files() -> None:
    ocnli = load("ocnli")
    assert ocnli.report.rows == 53_387 and ocnli.report.skipped == {}
    assert (len(ocnli.train), len(ocnli.dev)) == (50_437, 2_950)
    assert Counter(e.label for e in ocnli.train + ocnli.dev) == {0: 17_726, 1: 18_285, 2: 17_376}

    tnews = load("tnews")
    assert tnews.report.rows == 63_360 and tnews.report.skipped == {}
    assert (len(tnews.train), len(tnews.dev)) == (53_360, 10_000)
    assert Counter(tnews.labels[e.label] for e in tnews.dev if e.label is not None)["114"] == 45

    emotion = load("ocemotion")
    assert emotion.report.rows == 35_694 and emotion.report.skipped == {}
    assert len(emotion.train) + len(emotion.dev) == 35_694 and len(emotion.dev) == 3_570
    counts = Counter(emotion.labels[e.label] for e in emotion.train + emotion.dev if e.label is not None)
    assert counts["sadness"] == 12_604 and counts["fear"] == 594
    assert sum('"' in t for e in emotion.train + emotion.dev for t in e.texts) >= 300  # the quoting trap


def test_clue_releases_match_tianchi_after_normalisation() -> None:
    """Tianchi TNEWS is CLUE TNEWS train+dev passed through the Tianchi normalisation: our function reproduces it."""
    clue = load("tnews_clue")
    tianchi = load("tnews")
    assert [(e.texts, e.label) for e in clue.dev] == [(e.texts, e.label) for e in tianchi.dev]
    assert [(e.texts, e.label) for e in clue.train] == [(e.texts, e.label) for e in tianchi.train]

    ocnli = load("ocnli_clue")
    assert ocnli.report.unlabelled == 99  # 49 in train, 50 in dev
    assert (len(ocnli.train), len(ocnli.dev)) == (50_437, 2_950)

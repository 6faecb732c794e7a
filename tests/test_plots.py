"""Per-run plots: written at the end of run(), from the run's files; a failing plot never loses the run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from mtl.evaluation import plots
from mtl.training.run import run
from tests.helpers import tiny_run_cfg, tiny_run_env

PNGS = ("curves.png", "balancer_weights.png", "sampler_proportions.png", "confusion_matrices.png",
        "confusion_matrices_tuned_biases.png")


def tiny(data_root: Path, *extra: str):
    return tiny_run_cfg(data_root, "data.batch_size=16", "trainer.max_steps=10", "trainer.eval_every=5",
                        "trainer.log_every=2", *extra)


@pytest.fixture(autouse=True)
def _fixture_data_only(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch)


def test_run_writes_plots_and_best_dev_predictions(fixture_data_root: Path, tmp_path: Path) -> None:
    metrics = run(tiny(fixture_data_root, "sampler=all_tasks", "balancer=pcgrad"), tmp_path)
    for name in PNGS:
        path = tmp_path / name
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    preds = json.loads((tmp_path / "dev_predictions.json").read_text())
    assert preds["step"] == metrics["best_step"]
    for task, s in metrics["tasks"].items():
        d = preds["tasks"][task]
        assert len(d["labels"]) == len(d["predictions"]) == s["n"]
        assert d["label_names"]  # names for the axes (OCNLI: entailment/neutral/contradiction)
        # the confusion matrices are of the best checkpoint: its accuracy is the reported one
        acc = sum(a == b for a, b in zip(d["labels"], d["predictions"], strict=True)) / len(d["labels"])
        assert acc == pytest.approx(s["accuracy"])
    # re-drawing a finished run from its files
    for name in PNGS:
        (tmp_path / name).unlink()
    assert sorted(p.name for p in plots.write_run_plots(tmp_path)) == sorted(PNGS)


def test_a_failing_plot_only_warns(fixture_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("no plotting today")

    monkeypatch.setattr(plots, "plot_curves", boom)
    monkeypatch.setattr(plots, "write_dev_predictions", boom)
    with caplog.at_level(logging.WARNING):
        metrics = run(tiny(fixture_data_root, "trainer.max_steps=4", "trainer.eval_every=4"), tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["avg_macro_f1"] == metrics["avg_macro_f1"]
    assert not (tmp_path / "curves.png").exists() and not (tmp_path / "confusion_matrices.png").exists()
    assert (tmp_path / "sampler_proportions.png").is_file()
    assert "no plotting today" in caplog.text


def test_read_log_fills_missing_cells_with_nan(tmp_path: Path) -> None:
    (tmp_path / "train_log.csv").write_text("step,loss/a,loss/b\n1,0.5,\n2,,0.7\n")
    cols = plots.read_log(tmp_path / "train_log.csv")
    assert cols["step"].tolist() == [1.0, 2.0]
    assert cols["loss/a"][0] == 0.5 and cols["loss/a"][1] != cols["loss/a"][1]  # NaN
    assert plots.read_log(tmp_path / "missing.csv") == {}

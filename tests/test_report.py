"""mtl-report: finds run dirs, groups by configuration, mean ± std over seeds, writes md/json/png."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from mtl.cli.report import main as report_main
from mtl.evaluation.report import (
    NoRunsFoundError,
    build_report,
    find_run_dirs,
    group_runs,
    load_run,
    write_report,
)

TASKS = ("ocnli", "ocemotion", "tnews")
BALANCERS = {"equal": {}, "dwa": {"temperature": 2.0, "window": 50}, "pcgrad": {"seed": 0, "reduction": "sum"}}


def fake_run(root: Path, job: str, balancer: str, seed: int, f1: dict[str, float], *, sps: float = 100.0,
             finished: bool = True, extra: dict | None = None) -> Path:
    d = root / job
    d.mkdir(parents=True)
    config = {
        "name": "sweep", "seed": seed, "imports": [],
        "encoder": {"name_or_path": "tiny_random", "max_length": 64, "kwargs": {"hidden_size": 32}},
        "data": {"root": f"/somewhere/{job}", "cache_dir": "/tmp/cache", "batch_size": 16},
        "sampler": {"name": "all_tasks", "max_examples_per_task": None},
        "balancer": {"name": balancer, **BALANCERS[balancer]},
        "optim": {"lr": 1e-4}, "trainer": {"max_steps": 100, "progress": False},
        "logger": {"csv": {"flush_every": 20}},
    }
    for k, v in (extra or {}).items():
        config[k] = v
    (d / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    if finished:
        metrics = {
            "avg_macro_f1": statistics.fmean(f1.values()),
            "best_step": 100,
            "tasks": {t: {"macro_f1": f1[t], "accuracy": 0.5, "loss": 1.0, "n": 10} for t in TASKS},
            "samples_per_second": sps,
            "wall_seconds": 120.0,
        }
        (d / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (d / "checkpoints").mkdir()
    return d


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "12-00-00_sweep"
    job = 0
    for b, base in (("equal", 0.50), ("dwa", 0.55), ("pcgrad", 0.60)):
        for seed, delta in ((1, -0.02), (2, 0.02)):
            fake_run(root, str(job), b, seed, {t: base + delta + i * 0.1 for i, t in enumerate(TASKS)},
                     sps=100.0 + job)
            job += 1
    fake_run(root, "6", "equal", 3, {t: 0.0 for t in TASKS}, finished=False)  # crashed / still running
    return root


def test_finds_finished_and_unfinished_runs(sweep: Path) -> None:
    finished, unfinished = find_run_dirs([sweep.parent])
    assert len(finished) == 6 and len(unfinished) == 1
    assert all((p / "metrics.json").is_file() for p in finished)


def test_groups_by_configuration_and_aggregates_over_seeds(sweep: Path) -> None:
    report = build_report([sweep])
    assert report["n_runs"] == 6 and len(report["groups"]) == 3
    labels = [g["label"] for g in report["groups"]]
    # sorted best first; seed, name, data.root and logger options never split groups; balancer sub-keys
    # (dwa's window, pcgrad's seed) are explained by balancer.name and stay out of the label
    assert labels == ["balancer.name=pcgrad", "balancer.name=dwa", "balancer.name=equal"]
    top = report["groups"][0]
    assert top["n"] == 2 and top["seeds"] == [1, 2]
    assert top["avg_macro_f1"]["mean"] == pytest.approx(0.60 + 0.1)
    assert top["avg_macro_f1"]["std"] == pytest.approx(statistics.stdev([0.68, 0.72]))
    assert top["tasks"]["tnews"]["mean"] == pytest.approx(0.80)
    assert top["samples_per_second"]["mean"] == pytest.approx(104.5)
    assert report["common"]["encoder.name_or_path"] == "tiny_random"
    assert report["unfinished"] and report["unfinished"][0].endswith("/6")


def test_sub_key_varying_within_one_name_is_shown(tmp_path: Path) -> None:
    runs = []
    for job, (window, seed) in enumerate([(50, 1), (50, 2), (10, 1)]):
        d = fake_run(tmp_path, str(job), "dwa", seed, dict.fromkeys(TASKS, 0.5))
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg["balancer"]["window"] = window
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        runs.append(load_run(d))
    groups = group_runs(runs)
    assert sorted(g.label for g in groups) == ["balancer.window=10", "balancer.window=50"]
    assert sorted(len(g.runs) for g in groups) == [1, 2]


def test_dev_standard_error_column_from_each_runs_dev_predictions(sweep: Path) -> None:
    from mtl.evaluation.bootstrap import run_dev_standard_errors

    rng = np.random.default_rng(0)
    for job in ("4", "5"):  # the two pcgrad runs keep their dev predictions; the others have none
        labels = rng.integers(0, 3, 60).tolist()
        tasks = {t: {"label_names": ["a", "b", "c"], "labels": labels, "predictions": labels[:40] + [0] * 20}
                 for t in TASKS}
        (sweep / job / "dev_predictions.json").write_text(json.dumps({"step": 100, "tasks": tasks}))
    rows = {g["label"]: g for g in build_report([sweep])["groups"]}
    want = [run_dev_standard_errors(sweep / j)["average"] for j in ("4", "5")]  # type: ignore[index]
    assert rows["balancer.name=pcgrad"]["dev_standard_error"]["mean"] == pytest.approx(statistics.fmean(want))
    assert rows["balancer.name=pcgrad"]["dev_standard_error"]["mean"] > 0
    assert rows["balancer.name=equal"]["dev_standard_error"]["mean"] is None
    md = write_report([sweep])["files"]["markdown"]
    assert f"| {statistics.fmean(want):.4f} |" in Path(md).read_text()


def test_an_option_added_after_older_runs_counts_as_off_there(tmp_path: Path) -> None:
    """A key an older run's config lacks equals None (the option's "off"), not a setting of its own."""
    old = fake_run(tmp_path, "old", "equal", 1, dict.fromkeys(TASKS, 0.5))
    new = fake_run(tmp_path, "new", "equal", 2, dict.fromkeys(TASKS, 0.6), extra={"trainer": {
        "max_steps": 100, "progress": False, "ema_decay": None}})
    on = fake_run(tmp_path, "on", "equal", 1, dict.fromkeys(TASKS, 0.7), extra={"trainer": {
        "max_steps": 100, "progress": False, "ema_decay": 0.999}})
    groups = group_runs([load_run(d) for d in (old, new, on)])
    assert sorted((g.label, len(g.runs)) for g in groups) == [("trainer.ema_decay=0.999", 1),
                                                              ("trainer.ema_decay=None", 2)]
    rep = build_report([tmp_path], baseline="trainer.ema_decay=None")
    assert {r["vs_baseline"] for r in rep["groups"]} == {"(baseline)", "trainer.ema_decay=0.999"}


def test_write_report_files_and_cli(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = write_report([sweep])  # default: into the first path
    for name in ("report.md", "report.json", "report.png"):
        assert (sweep / name).is_file(), name
    md = (sweep / "report.md").read_text()
    assert "| balancer.name=pcgrad | 2 | 1,2 | **0.7000 ± 0.0283** |" in md
    assert "![comparison](report.png)" in md
    saved = json.loads((sweep / "report.json").read_text())
    assert [g["label"] for g in saved["groups"]] == [g["label"] for g in report["groups"]]

    out = tmp_path / "rep"
    assert report_main([str(sweep), "--out", str(out), "--ignore", "balancer.*"]) == 0
    assert (out / "report.md").is_file()
    assert "(all runs)" in (out / "report.md").read_text()  # balancer ignored: one group of 6
    assert "report.md" in capsys.readouterr().out


def test_no_runs_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoRunsFoundError, match="no finished runs found"):
        build_report([tmp_path / "empty"])
    assert report_main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no finished runs found" in err and "metrics.json" in err
    assert report_main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err

"""mtl-report: a resumed run groups with its twin, labels stay short, averages over different task sets
carry a note, unreadable inputs and unwritable folders are one-line errors (item 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtl.cli.report import main as report_main
from mtl.evaluation.report import build_report, to_markdown
from tests.test_reliability_predict import error_lines, read_only_dir


def task_block(task: str) -> dict:
    return {
        "reader": "tianchi_tsv", "train_file": f"tianchi/{task.upper()}_train1128.csv",
        "columns": ["id", "sentence", "label"], "text_columns": ["sentence"], "labels": [str(i) for i in range(15)],
        "split": {"method": "id_at_least", "threshold": 53360},
        "test_files": {"a": f"tianchi/test_unlabelled/{task.upper()}_a.csv"}, "submission_file": f"{task}.json",
    }


def run_dir(root: Path, job: str, *, seed: int = 1, tasks: tuple[str, ...] = ("ocnli", "tnews"),
            f1: float = 0.5, trainer: dict | None = None, extra: dict | None = None) -> Path:
    d = root / job
    d.mkdir(parents=True)
    config = {
        "name": "x", "seed": seed,
        "encoder": {"name_or_path": "tiny_random", "max_length": 64},
        "tasks": {t: task_block(t) for t in tasks},
        "data": {"batch_size": 16}, "balancer": {"name": "equal"},
        "trainer": {"max_steps": 100, "progress": True, **(trainer or {})},
        **(extra or {}),
    }
    (d / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    metrics = {"avg_macro_f1": f1, "tasks": {t: {"macro_f1": f1} for t in tasks}, "wall_seconds": 60.0}
    (d / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return d


def test_resumed_run_and_its_twin_are_one_group(tmp_path: Path) -> None:
    run_dir(tmp_path, "plain", seed=1)
    run_dir(tmp_path, "resumed", seed=2, trainer={"resume": "auto", "progress": False, "checkpoint_every": 50},
            extra={"hydra": {"run": {"dir": "outputs/x"}}})
    report = build_report([tmp_path])
    assert len(report["groups"]) == 1 and report["groups"][0]["n"] == 2
    assert report["groups"][0]["label"] == "(all runs)"


def test_labels_show_only_what_differs_and_stay_short(tmp_path: Path) -> None:
    run_dir(tmp_path, "two", tasks=("ocnli", "tnews"))
    run_dir(tmp_path, "three", tasks=("ocnli", "ocemotion", "tnews"))
    report = build_report([tmp_path])
    labels = sorted(g["label"] for g in report["groups"])
    assert labels == ["tasks=ocnli,ocemotion,tnews", "tasks=ocnli,tnews"]


def test_a_label_of_many_long_differences_is_cut(tmp_path: Path) -> None:
    long = {f"knob_{i:02d}": "v" * 200 for i in range(30)}
    run_dir(tmp_path, "a", extra={"model": {"name": "m", **long}})
    run_dir(tmp_path, "b", extra={"model": {"name": "m", **{k: "w" * 200 for k in long}}})
    report = build_report([tmp_path])
    for g in report["groups"]:
        assert len(g["label"]) <= 200 and "more" not in g["label"] and "keys)" in g["label"]
        assert len(g["config"]) == 30 and all(len(v) == 200 for v in g["config"].values())  # json keeps all


def test_different_task_sets_get_a_note(tmp_path: Path) -> None:
    run_dir(tmp_path, "two", tasks=("ocnli", "tnews"), f1=0.6)
    run_dir(tmp_path, "three", tasks=("ocnli", "ocemotion", "tnews"), f1=0.5)
    report = build_report([tmp_path])
    assert report["notes"] and "different task sets" in report["notes"][0]
    md = to_markdown(report)
    assert "**Note:**" in md and "ocemotion" in md
    run_dir(tmp_path / "same", "x", seed=1)
    run_dir(tmp_path / "same", "y", seed=2, extra={"balancer": {"name": "dwa"}})
    assert build_report([tmp_path / "same"])["notes"] == []


def test_unreadable_metrics_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = run_dir(tmp_path, "broken")
    (d / "metrics.json").write_text('{"avg_macro_f1": 0.5, ', encoding="utf-8")
    assert report_main([str(tmp_path), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert str(d / "metrics.json") in err and len(error_lines(err)) == 1


def test_unknown_sort_key_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir(tmp_path, "a")
    assert report_main([str(tmp_path), "--sort-by", "nope", "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "tnews" in err and len(error_lines(err)) == 1


def test_unwritable_report_folder_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir(tmp_path, "a")
    out = read_only_dir(tmp_path)
    assert report_main([str(tmp_path / "a"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "cannot write" in err and len(error_lines(err)) == 1

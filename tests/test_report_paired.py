"""Paired differences over seeds (mtl/evaluation/paired.py) and mtl-report --baseline, against hand-computed
intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mtl.cli.report import main as report_main
from mtl.evaluation.paired import paired_difference, t_quantile
from mtl.evaluation.report import RunReadError, build_report, write_report
from tests.test_report import fake_run

T_975_2 = 4.302652729749464  # Student t, 97.5 % quantile, 2 degrees of freedom (tables)
T_975_1 = 12.706204736174707


def test_t_quantile_matches_tables() -> None:
    assert t_quantile(0.975, 2) == pytest.approx(T_975_2, rel=1e-9)
    assert t_quantile(0.975, 1) == pytest.approx(T_975_1, rel=1e-9)


def test_paired_difference_by_hand() -> None:
    # d = (0.1, 0.2, 0.1): mean 2/15, sample sd sqrt(((1/30)^2 * 2 + (1/15)^2) / 2) = sqrt(1/300)
    out = paired_difference({1: 0.5, 2: 0.6, 3: 0.7}, {1: 0.4, 2: 0.4, 3: 0.6})
    mean, sd = 2 / 15, math.sqrt(1 / 300)
    half = T_975_2 * sd / math.sqrt(3)
    assert out["n"] == 3 and out["seeds"] == [1, 2, 3]
    assert out["differences"] == pytest.approx([0.1, 0.2, 0.1])
    assert out["mean"] == pytest.approx(mean) and out["std"] == pytest.approx(sd)
    assert out["low"] == pytest.approx(mean - half) and out["high"] == pytest.approx(mean + half)
    assert out["low"] < 0 < out["high"] and out["verdict"] == "within noise"
    # d = (0.10, 0.11, 0.12): sd 0.01, half 4.3027 * 0.01 / sqrt 3 = 0.02484 -> [0.0852, 0.1348]: better
    better = paired_difference({1: 0.60, 2: 0.61, 3: 0.62}, {1: 0.5, 2: 0.5, 3: 0.5})
    assert better["low"] == pytest.approx(0.11 - T_975_2 * 0.01 / math.sqrt(3)) and better["verdict"] == "better"
    worse = paired_difference({1: 0.5, 2: 0.5, 3: 0.5}, {1: 0.60, 2: 0.61, 3: 0.62})
    assert worse["verdict"] == "worse" and worse["high"] == pytest.approx(-better["low"])
    # only the shared seeds with finite values pair up; one pair: no interval
    two = paired_difference({1: 0.5, 2: 0.7, 9: 0.1}, {1: 0.4, 2: 0.4, 3: 0.3})
    assert two["seeds"] == [1, 2] and two["high"] - two["mean"] == pytest.approx(T_975_1 * math.sqrt(0.02) / math.sqrt(2))
    one = paired_difference({1: 0.5, 2: float("nan")}, {1: 0.4, 2: 0.4})
    assert one["n"] == 1 and one["low"] is None and one["verdict"] == "too few seeds"
    with pytest.raises(ValueError, match="confidence"):
        paired_difference({}, {}, confidence=1.0)


def _decision(argmax: float, tuned: float) -> dict:
    return {"rule": "argmax", "averages": {"argmax": argmax, "logit_adjusted": argmax, "tuned_biases": tuned}, "tasks": {}}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    base = {1: 0.40, 2: 0.45, 3: 0.50}
    job = 0
    for balancer, gain in (("equal", 0.0), ("dwa", 0.03), ("pcgrad", None)):
        for seed, b in base.items():
            g = {1: 0.10, 2: 0.11, 3: 0.12}[seed] if gain is None else gain
            f1 = {"ocnli": b + g, "ocemotion": b + g, "tnews": b + g}
            d = fake_run(root, f"{job}", balancer, seed, f1)
            m = json.loads((d / "metrics.json").read_text())
            m["decision"] = _decision(b + g, b + g + 0.05)
            (d / "metrics.json").write_text(json.dumps(m))
            job += 1
    return root


def test_report_pairs_each_group_with_the_baseline(runs: Path) -> None:
    rep = build_report([runs], baseline="balancer.name=equal")
    rows = {r["label"]: r for r in rep["groups"]}
    base = rows["balancer.name=equal"]
    assert base["is_baseline"] and base["paired"]["average"]["mean"] == pytest.approx(0.0)
    dwa = rows["balancer.name=dwa"]["paired"]
    assert dwa["average"]["mean"] == pytest.approx(0.03) and dwa["average"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert dwa["average"]["verdict"] == "better"  # a constant gain: zero spread
    pc = rows["balancer.name=pcgrad"]["paired"]
    assert pc["average"]["low"] == pytest.approx(0.11 - T_975_2 * 0.01 / math.sqrt(3))
    assert pc["tasks"]["tnews"]["mean"] == pytest.approx(0.11)
    # decision rules: each rule's average against the baseline's argmax average
    assert base["paired"]["rules"]["tuned_biases"]["mean"] == pytest.approx(0.05)
    assert pc["rules"]["tuned_biases"]["mean"] == pytest.approx(0.16)


def test_report_writes_the_paired_table_and_plot(runs: Path, tmp_path: Path) -> None:
    rep = write_report([runs], tmp_path / "out", baseline="balancer.name=equal")
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "## Paired differences against `balancer.name=equal`" in md
    assert "| balancer.name=dwa | 3 | +0.0300 [+0.0300, +0.0300] | better |" in md
    assert (tmp_path / "out" / "report_paired.png").read_bytes()[:4] == b"\x89PNG"
    assert rep["files"]["paired_plot"].endswith("report_paired.png")


def test_baseline_must_select_one_configuration(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="3 configurations match"):
        build_report([runs], baseline="sampler.name=all_tasks")
    with pytest.raises(ValueError, match="0 configurations match"):
        build_report([runs], baseline="balancer.name=famo")
    assert report_main([str(runs), "--baseline", "balancer.name"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_two_runs_with_one_seed_are_refused(runs: Path) -> None:
    fake_run(runs, "dup", "dwa", 1, {"ocnli": 0.4, "ocemotion": 0.4, "tnews": 0.4})
    with pytest.raises(RunReadError, match="two runs of one configuration have seed 1"):
        build_report([runs], baseline="balancer.name=equal")


# ---------------------------------------------------------------------------------------------------- single-task
def task_run(root: Path, job: str, tasks: dict[str, float], seed: int, *, steps: int, loss: str = "ce",
             tuned: dict[str, float] | None = None, lr: float = 1e-4) -> Path:
    import yaml

    d = root / job
    d.mkdir(parents=True)
    config = {"name": "q", "seed": seed, "tasks": {t: {"train_file": f"{t}.csv"} for t in tasks},
              "loss": {"name": loss}, "optim": {"lr": lr}, "trainer": {"max_steps": steps, "eval_every": steps // 2}}
    (d / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    metrics = {"avg_macro_f1": sum(tasks.values()) / len(tasks),
               "tasks": {t: {"macro_f1": f, "accuracy": 0.5, "loss": 1.0, "n": 10} for t, f in tasks.items()}}
    if tuned is not None:
        metrics["decision"] = {"rule": "argmax", "averages": {"argmax": metrics["avg_macro_f1"],
                                                               "tuned_biases": sum(tuned.values()) / len(tuned)},
                               "tasks": {t: {"macro_f1": {"argmax": tasks[t], "tuned_biases": tuned[t]}} for t in tasks}}
    (d / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return d


@pytest.fixture
def mt_st(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    single = {1: {"x": 0.50, "y": 0.30}, 2: {"x": 0.52, "y": 0.34}, 3: {"x": 0.48, "y": 0.32}}
    multi = {1: {"x": 0.55, "y": 0.31}, 2: {"x": 0.56, "y": 0.36}, 3: {"x": 0.54, "y": 0.32}}
    for seed in (1, 2, 3):
        for t in ("x", "y"):
            task_run(root, f"st_{t}_{seed}", {t: single[seed][t]}, seed, steps=120,
                     tuned={t: single[seed][t] + 0.01})
        task_run(root, f"mt_{seed}", multi[seed], seed, steps=360, tuned={t: v + 0.03 for t, v in multi[seed].items()})
    return root


def test_multi_task_against_single_task_runs_by_hand(mt_st: Path) -> None:
    rep = build_report([mt_st], baseline="single_task")
    mt = next(r for r in rep["groups"] if r.get("paired"))
    p = mt["paired"]
    # x: 0.05, 0.04, 0.06 -> mean 0.05, sd 0.01; y: 0.01, 0.02, 0.00 -> mean 0.01, sd 0.01
    assert p["tasks"]["x"]["mean"] == pytest.approx(0.05) and p["tasks"]["x"]["std"] == pytest.approx(0.01)
    assert p["tasks"]["x"]["low"] == pytest.approx(0.05 - T_975_2 * 0.01 / math.sqrt(3)) and p["tasks"]["x"]["verdict"] == "better"
    assert p["tasks"]["y"]["mean"] == pytest.approx(0.01) and p["tasks"]["y"]["verdict"] == "within noise"
    # average of the tasks: 0.03, 0.03, 0.03
    assert p["average"]["mean"] == pytest.approx(0.03) and p["average"]["std"] == pytest.approx(0.0, abs=1e-12)
    # tuned biases on both sides: +0.03 for multi-task, +0.01 for single-task -> 0.05 each seed
    assert p["rules"]["tuned_biases"]["mean"] == pytest.approx(0.05)
    singles = [r for r in rep["groups"] if not r.get("paired")]
    assert len(singles) == 2 and all(r["is_baseline"] for r in singles)
    md = write_report([mt_st], mt_st / "rep", baseline="single_task")
    text = (mt_st / "rep" / "report.md").read_text(encoding="utf-8")
    assert "## Paired differences against `single_task`" in text and "single-task run with the same seed" in text
    assert md["files"]["paired_plot"]


def test_a_group_scored_with_tuned_biases_meets_the_single_task_runs_under_that_rule(mt_st: Path) -> None:
    for seed in (1, 2, 3):  # the multi-task runs' own rule becomes tuned_biases: their headline compares that
        path = mt_st / f"mt_{seed}" / "metrics.json"
        m = json.loads(path.read_text())
        m["decision"]["rule"] = "tuned_biases"
        path.write_text(json.dumps(m))
    p = next(r for r in build_report([mt_st], baseline="single_task")["groups"] if r.get("paired"))["paired"]
    assert p["rule"] == "tuned_biases"
    # average: (multi + 0.03) - (single + 0.01) = 0.03 + 0.02 each seed; x: 0.05 + 0.02; y: 0.01 + 0.02
    assert p["average"]["mean"] == pytest.approx(0.05) and p["average"]["verdict"] == "better"
    assert p["tasks"]["x"]["mean"] == pytest.approx(0.07) and p["tasks"]["y"]["mean"] == pytest.approx(0.03)
    assert p["rules"]["argmax"]["mean"] == pytest.approx(0.03)


def test_single_task_runs_that_differ_are_refused(mt_st: Path) -> None:
    task_run(mt_st, "st_x_9", {"x": 0.4}, 9, steps=120, lr=3e-4)
    with pytest.raises(RunReadError, match=r"differ in optim.lr"):
        build_report([mt_st], baseline="single_task")


def test_single_task_baseline_needs_single_task_runs(runs: Path) -> None:
    with pytest.raises(RunReadError, match="no single-task runs"):
        build_report([runs], baseline="single_task")


def test_per_task_columns_follow_each_runs_decision_rule(tmp_path: Path) -> None:
    """A run scored with tuned biases reports its tasks under that rule, as its average is (metrics.json's
    ``tasks`` block holds argmax scores); a run scored with argmax keeps its argmax scores."""
    root = tmp_path / "study"
    for seed in (1, 2, 3):
        task_run(root, f"argmax_{seed}", {"x": 0.50, "y": 0.30}, seed, steps=10, tuned={"x": 0.60, "y": 0.40})
        d = task_run(root, f"tuned_{seed}", {"x": 0.50, "y": 0.30}, seed, steps=10, loss="class_balanced",
                     tuned={"x": 0.52 + 0.01 * seed, "y": 0.40})
        m = json.loads((d / "metrics.json").read_text())
        m["decision"]["rule"] = "tuned_biases"
        m["avg_macro_f1"] = m["decision"]["averages"]["tuned_biases"]
        (d / "metrics.json").write_text(json.dumps(m))
    rep = build_report([root], baseline="loss.name=ce")
    rows = {r["label"]: r for r in rep["groups"]}
    tuned, plain = rows["loss.name=class_balanced"], rows["loss.name=ce"]
    assert plain["tasks"]["x"]["mean"] == pytest.approx(0.50) and plain["tasks"]["y"]["mean"] == pytest.approx(0.30)
    assert tuned["tasks"]["x"]["mean"] == pytest.approx(0.54) and tuned["tasks"]["y"]["mean"] == pytest.approx(0.40)
    assert tuned["avg_macro_f1"]["mean"] == pytest.approx((0.54 + 0.40) / 2)
    # paired per task, under each side's own rule: x 0.53-0.50, 0.54-0.50, 0.55-0.50; y 0.10 each seed
    assert tuned["paired"]["tasks"]["x"]["mean"] == pytest.approx(0.04)
    assert tuned["paired"]["tasks"]["y"]["mean"] == pytest.approx(0.10)


def test_baseline_given_as_one_of_its_run_directories(tmp_path: Path) -> None:
    """Each variant changes one key of its own; the baseline (every key at its default) is singled out by no
    single KEY=VALUE, so it is named by one of its runs' directories."""
    root = tmp_path / "tricks"
    paths: dict[str, Path] = {}
    for name, lr, loss in (("base", 1e-4, "ce"), ("lr", 2e-4, "ce"), ("loss", 1e-4, "focal")):
        for seed, b in ((1, 0.40), (2, 0.45), (3, 0.50)):
            gain = {"base": 0.0, "lr": 0.02, "loss": -0.01}[name]
            paths[f"{name}_{seed}"] = task_run(root, f"{name}_s{seed}", {"x": b + gain, "y": b + gain}, seed,
                                               steps=10, loss=loss, lr=lr)
    with pytest.raises(ValueError, match="2 configurations match"):
        build_report([root], baseline="loss.name=ce")
    rep = build_report([root], baseline=str(paths["base_2"]))
    rows = {r["label"]: r for r in rep["groups"]}
    assert rows["loss.name=ce, optim.lr=0.0001"]["is_baseline"]
    assert rows["loss.name=ce, optim.lr=0.0002"]["paired"]["average"]["mean"] == pytest.approx(0.02)
    assert rows["loss.name=focal, optim.lr=0.0001"]["paired"]["average"]["mean"] == pytest.approx(-0.01)
    # the paired table and plot name each variant by what it changes against the baseline, not every key
    assert {r["label"]: r["vs_baseline"] for r in rep["groups"]} == {
        "loss.name=ce, optim.lr=0.0001": "(baseline)",
        "loss.name=ce, optim.lr=0.0002": "optim.lr=0.0002",
        "loss.name=focal, optim.lr=0.0001": "loss.name=focal",
    }
    written = write_report([root], tmp_path / "out", baseline=str(paths["base_2"]))
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| optim.lr=0.0002 | 3 | +0.0200 [+0.0200, +0.0200] | better |" in md
    assert "| loss.name=focal | 3 | -0.0100 [-0.0100, -0.0100] | worse |" in md
    assert written["files"]["paired_plot"].endswith("report_paired.png")
    with pytest.raises(ValueError, match="no finished run of this report"):
        build_report([root], baseline=str(tmp_path))
    with pytest.raises(ValueError, match="KEY=VALUE"):
        build_report([root], baseline="not_a_dir")

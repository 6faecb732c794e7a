"""Smoke tests of scripts/compare_balancers.py and scripts/bench_balancers.py on fixture data."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _fixture_data_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTL_DATA_DIR", raising=False)


def finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def test_compare_balancers_writes_table_and_json(fixture_data_root: Path, tmp_path: Path) -> None:
    compare = load_script("compare_balancers")
    out = tmp_path / "cmp"
    names = ["equal", "pcgrad", "uncertainty"]
    argv = [
        "--balancers", ",".join(names), "--steps", "3", "--encoder", "tiny_random", "--layers", "0",
        "--train-per-task", "48", "--dev-per-task", "24", "--data-root", str(fixture_data_root),
        "--out", str(out), "--no-warmup-run",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    assert compare.main(argv) == 0
    assert torch.get_num_threads() == threads  # --threads (default 1) only holds during the comparison
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = {r["balancer"]: r for r in data["results"]}
    assert list(rows) == names  # equal first, then the order asked for
    assert "sampler=all_tasks" in data["protocol"]["overrides"]
    assert data["command"] == "python scripts/compare_balancers.py " + " ".join(argv)
    for name, r in rows.items():
        assert r["status"] == "ok" and r["reused"] is False
        assert set(r["macro_f1"]) == {"ocnli", "ocemotion", "tnews"}
        assert all(finite(v) and 0.0 <= v <= 1.0 for v in r["macro_f1"].values())
        assert finite(r["avg_macro_f1"]) and 0.0 <= r["avg_macro_f1"] <= 1.0
        assert finite(r["step_seconds"]) and r["step_seconds"] > 0
        assert finite(r["relative_step_time"]) and r["relative_step_time"] > 0
        assert r["steps"] == 3
        assert (out / "runs" / name / "metrics.json").exists()
        assert len(json.loads((out / "runs" / name / "step_times.json").read_text())) == 3
        assert finite(r["step_seconds_mean"]) and r["step_seconds_mean"] > 0
    assert rows["equal"]["relative_step_time"] == pytest.approx(1.0)
    assert rows["pcgrad"]["level"] == "gradient" and rows["pcgrad"]["source"] == "representation"
    assert rows["uncertainty"]["level"] == "loss" and rows["uncertainty"]["source"] is None
    md = (out / "results.md").read_text(encoding="utf-8")
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0].startswith("| balancer | level | source | ocnli F1 |")
    assert len(table) == 2 + len(names) + 1  # header, rule, one row per balancer, majority class
    for name in names:
        assert any(name in line for line in table[2:]), name

    # resuming keeps the finished runs (same overrides) instead of training again
    assert compare.main([*argv, "--skip-existing"]) == 0
    again = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert all(r["reused"] for r in again["results"])
    assert [r["avg_macro_f1"] for r in again["results"]] == [r["avg_macro_f1"] for r in data["results"]]


def test_compare_balancers_rejects_unknown_names(tmp_path: Path) -> None:
    compare = load_script("compare_balancers")
    with pytest.raises(SystemExit, match="unknown balancers"):
        compare.main(["--balancers", "equal,nope", "--out", str(tmp_path)])


def test_bench_balancers_writes_ratios(fixture_data_root: Path, tmp_path: Path) -> None:
    bench = load_script("bench_balancers")
    out = tmp_path / "bench.json"
    argv = [
        "--encoder", "tiny_random", "--data-root", str(fixture_data_root), "--loss", "", "--representation",
        "mgda_ub,pcgrad", "--parameters", "mgda", "--warmup", "1", "--steps", "2", "--equal-every", "2",
        "--out", str(out),
    ]  # fmt: skip
    threads = torch.get_num_threads()
    assert bench.main(argv) == 0
    assert torch.get_num_threads() == threads
    data = json.loads(out.read_text(encoding="utf-8"))
    results = {r["method"]: r for r in data["results"]}
    assert list(results) == ["equal", "equal#2", "mgda_ub@representation", "pcgrad@representation", "mgda@parameters"]
    assert data["targets"] == {"loss": 1.05, "representation": 1.05, "parameters": 1.15}
    assert data["setup"]["timed_steps"] == 2 and data["setup"]["equal_every"] == 2
    assert "mtl/training/engine.py" in data["setup"]["source_sha1"]
    assert data["command"] == "python scripts/bench_balancers.py " + " ".join(argv)
    for r in results.values():
        assert finite(r["ratio_to_equal"]) and r["ratio_to_equal"] > 0
        assert r["ratio_q25"] <= r["ratio_to_equal"] <= r["ratio_q75"]
        assert all(finite(x) and x > 0 for x in r["ratios"])
        for key in ("step_seconds_median", "engine_seconds_median", "solver_ms_median", "rest_seconds_median"):
            assert finite(r[key]) and r[key] >= 0, key
        assert r["n_steps"] == (2 if r["method"] != "equal" else len(r["ratios"]))
    # every timed step is recorded; each sweep is bracketed by equal reference steps
    steps = data["steps"]
    assert sum(1 for s in steps if s["method"] != "equal") == 2 * (len(results) - 1)
    for k in (0, 1):
        sweep = [s["method"] for s in steps if s["sweep"] == k]
        assert sweep[0] == "equal" and sweep[-1] == "equal"
    assert results["equal"]["ratio_to_equal"] == pytest.approx(1.0)
    assert results["equal"]["target"] is None and results["equal"]["meets_target"] is None
    assert results["mgda_ub@representation"]["target"] == 1.05
    assert results["mgda@parameters"]["target"] == 1.15
    assert results["mgda@parameters"]["jacobian_mb"] > 0 and results["mgda_ub@representation"]["jacobian_mb"] == 0
    assert results["mgda@parameters"]["source"] == "parameters"
    # the balancer's solver ran inside the timed steps of the gradient methods only
    assert results["mgda_ub@representation"]["solver_ms_median"] > 0


def test_bench_balancers_times_every_method_by_default_and_the_new_ones(fixture_data_root: Path, tmp_path: Path) -> None:
    bench = load_script("bench_balancers")
    loss, rep, par = bench.registered("loss"), bench.registered("representation"), bench.registered("parameters")
    assert {"go4align", "igb", "stch"} <= set(loss) and "equal" not in loss
    assert {"graddrop", "excess_mtl", "mgda_ub", "upgrad"} <= set(rep) and not {"moco", "mgda"} & set(rep)
    assert {"graddrop", "excess_mtl", "moco", "mgda"} <= set(par) and "mgda_ub" not in par
    out = tmp_path / "bench_new.json"
    argv = [
        "--encoder", "tiny_random", "--data-root", str(fixture_data_root), "--no-control", "--loss", "go4align,igb",
        "--representation", "graddrop,excess_mtl", "--parameters", "moco,graddrop,excess_mtl", "--warmup", "1",
        "--steps", "1", "--equal-every", "3", "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    results = {r["method"]: r for r in json.loads(out.read_text(encoding="utf-8"))["results"]}
    assert list(results) == ["equal", "go4align@loss", "igb@loss", "graddrop@representation",
                             "excess_mtl@representation", "moco@parameters", "graddrop@parameters",
                             "excess_mtl@parameters"]
    assert results["go4align@loss"]["target"] == 1.05 and results["go4align@loss"]["source"] == "loss"
    for r in results.values():
        assert finite(r["ratio_to_equal"]) and r["ratio_to_equal"] > 0
        assert r["solver_ms_median"] > 0 or r["method"] == "equal"  # an aggregator's aggregate is timed too
    # the state a method keeps: MoCo's tracked gradients and ExcessMTL's squares are T x P on the parameters
    jac = results["moco@parameters"]["jacobian_mb"]
    assert jac > 0 and results["moco@parameters"]["balancer_state_mb"] >= jac
    assert results["excess_mtl@parameters"]["balancer_state_mb"] >= jac
    assert results["graddrop@representation"]["balancer_state_mb"] < 0.01

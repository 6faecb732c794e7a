"""Smoke tests of scripts/bench_loop.py, bench_padding.py, bench_vocab.py, bench_gpu.py and their shared
helpers (scripts/_bench_common.py): tiny random encoder, fixture data, a few steps, and checks on the JSON
each script writes (the figures the README and docs/scale.md quote come from these fields)."""

from __future__ import annotations

import importlib
import json
import math
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TASKS = {"ocnli", "ocemotion", "tnews"}


def script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (the scripts import ``_bench_common`` from their own folder)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)


def positive(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def run_main(name: str, argv: list[str], out: Path) -> dict[str, Any]:
    """Run the script's ``main`` in-process; torch's thread count must be as before; returns its JSON."""
    threads = torch.get_num_threads()
    returned = script(name).main([*argv, "--out", str(out)])
    assert torch.get_num_threads() == threads
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(returned, default=float))  # what main returns is what it wrote
    assert data["command"].startswith(f"python scripts/{name}.py ") and "--out" in data["command"]
    assert positive(data["machine"]["cpu_count"]) and data["machine"]["torch"] == torch.__version__
    return data


@pytest.fixture(autouse=True)
def _fixture_data(fixture_data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripts look for data in MTL_DATA_DIR first: point it at the fixture files (the children of
    bench_vocab.py inherit it)."""
    monkeypatch.setenv("MTL_DATA_DIR", str(fixture_data_root))


def test_bench_loop(tmp_path: Path) -> None:
    argv = ["--encoder", "tiny_random", "--steps", "2", "--reps", "2", "--warmup-steps", "1", "--batch-size", "4",
            "--max-length", "32", "--train-per-task", "48", "--device", "cpu", "--threads", "1",
            "--precision", "fp32"]  # fmt: skip
    data = run_main("bench_loop", argv, tmp_path / "loop.json")
    assert data["benchmark"] == "loop" and data["device"] == "cpu" and data["precision"] == "fp32"
    assert data["frozen_embeddings"] is True and data["batch_size"] == 4 and data["steps_per_rep"] == 2
    assert data["machine"]["torch_threads"] == 1  # --threads held while it measured
    reps = data["samples_per_second"]["per_rep"]
    assert len(reps) == 2 and list(reps[0]) == ["trainer", "hand_loop"] and list(reps[1]) == ["hand_loop", "trainer"]
    assert all(positive(v) for rep in reps for v in rep.values())
    ratios = data["ratio_trainer_over_hand_loop"]
    assert all(positive(v) for v in ratios.values())
    assert ratios["median_of_rep_ratios"] == pytest.approx(statistics.median(r["trainer"] / r["hand_loop"] for r in reps))
    med = data["samples_per_second"]["median"]
    assert ratios["of_medians"] == pytest.approx(med["trainer"] / med["hand_loop"])
    assert data["target_ratio"] == 0.95


def test_bench_padding(tmp_path: Path) -> None:
    argv = ["--encoder", "tiny_random", "--steps", "4", "--block", "2", "--warmup-steps", "1", "--batch-size", "4",
            "--max-length", "32", "--train-per-task", "48", "--dev-per-task", "16", "--threads", "1"]  # fmt: skip
    data = run_main("bench_padding", argv, tmp_path / "padding.json")
    names = ["dynamic_grouped", "dynamic_random", "fixed_32"]
    assert data["benchmark"] == "padding" and data["untimed_warmup_steps"] == 1
    assert list(data["variants"]) == names
    assert list(data["speedup_over_fixed"]) == names and data["speedup_over_fixed"]["fixed_32"] == pytest.approx(1.0)
    assert all(positive(v) for v in data["speedup_over_fixed"].values())
    assert data["dev_avg_macro_f1_minus_fixed"]["fixed_32"] == 0.0
    for v in data["variants"].values():
        assert positive(v["train_samples_per_second"]) and positive(v["train_seconds"])
        assert set(v["dev_macro_f1"]) == TASKS and 0.0 <= v["dev_avg_macro_f1"] <= 1.0
        assert 0.0 < v["real_token_share_of_positions"] <= 1.0
    share = {k: v["real_token_share_of_positions"] for k, v in data["variants"].items()}
    # the same random batches, padded to their longest row or to 32 tokens
    assert share["fixed_32"] < share["dynamic_random"] and share["fixed_32"] < share["dynamic_grouped"]


def test_bench_vocab(tmp_path: Path) -> None:
    variants = ["untrimmed", "trimmed", "trimmed_frozen"]
    argv = ["--encoder", "tiny_random", "--steps", "2", "--batch-size", "4", "--train-per-task", "24",
            "--dev-per-task", "16", "--threads", "1", "--variants", ",".join(variants)]  # fmt: skip
    data = run_main("bench_vocab", argv, tmp_path / "vocab.json")
    assert data["benchmark"] == "vocab" and data["child_torch_threads"] == 1
    res = data["variants"]
    assert list(res) == variants and list(data["relative"]) == variants
    full, trim, frozen = (res[v] for v in variants)
    for r in res.values():
        assert positive(r["train_samples_per_second"]) and positive(r["peak_rss_mib"])
        assert 0 < r["peak_rss_during_training_mib"] <= r["peak_rss_mib"] + 1
        assert set(r["dev_macro_f1"]) == TASKS
    assert trim["embedding_rows"] == frozen["embedding_rows"] < full["embedding_rows"]
    assert trim["parameters"] == frozen["parameters"] < full["parameters"]
    assert full["trainable_parameters"] == full["parameters"] and trim["trainable_parameters"] == trim["parameters"]
    # only the embedding rows differ: each one is a row of `hidden` weights
    hidden = (full["parameters"] - trim["parameters"]) // (full["embedding_rows"] - trim["embedding_rows"])
    assert (full["parameters"] - trim["parameters"]) == hidden * (full["embedding_rows"] - trim["embedding_rows"])
    assert frozen["trainable_parameters"] == frozen["parameters"] - hidden * frozen["embedding_rows"]
    # the trimmed model computes the same function as the untrimmed one
    assert trim["dev_avg_macro_f1"] == pytest.approx(full["dev_avg_macro_f1"], abs=1e-9)
    rel = data["relative"]
    assert rel["untrimmed"]["parameters_vs_untrimmed"] == 1.0 and rel["untrimmed"]["speedup_vs_untrimmed"] == 1.0
    assert 0 < rel["trimmed"]["parameters_vs_untrimmed"] < 1
    assert all(positive(v) for r in rel.values() for v in r.values())


def test_bench_gpu_cpu_smoke(tmp_path: Path) -> None:
    data = run_main("bench_gpu", ["--device", "cpu", "--freeze-embeddings", "--grad-accum-steps", "2"],
                    tmp_path / "gpu.json")
    assert data["benchmark"] == "gpu" and data["device"] == "cpu" and data["smoke_sizes"] is True
    assert data["batch_size_per_task"] == 4 and data["lengths"] == [8, 16] and data["grad_accum_steps"] == 2
    rows = {(r["encoder"], r["precision"]): r for r in data["results"]}
    assert list(rows) == [(e, p) for e in ("e5_small", "bert_base_random") for p in ("fp32", "bf16")]
    for r in rows.values():
        assert r["steps"] == 3 and positive(r["samples_per_second"])
        assert 0 < r["trainable_parameters"] < r["parameters"]  # input embeddings frozen
        assert "peak_memory_allocated_mib" not in r  # CUDA-only figure
    for e in ("e5_small", "bert_base_random"):
        assert rows[(e, "fp32")]["parameters"] == rows[(e, "bf16")]["parameters"]
    assert set(data["bf16_over_fp32"]) == {"e5_small", "bert_base_random"}
    for e, ratio in data["bf16_over_fp32"].items():
        assert list(ratio) == ["speedup"]
        assert ratio["speedup"] == pytest.approx(
            rows[(e, "bf16")]["samples_per_second"] / rows[(e, "fp32")]["samples_per_second"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_bench_gpu_without_cuda_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu.json"
    with pytest.raises(SystemExit) as exc:
        script("bench_gpu").main(["--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--device cpu" in err
    assert not out.exists()


def test_common_helpers(tmp_path: Path) -> None:
    common = script("_bench_common")
    threads = torch.get_num_threads()
    with common.torch_threads(1):
        assert torch.get_num_threads() == 1
    with common.torch_threads(0):  # 0 / None: torch's own setting
        assert torch.get_num_threads() == threads
    assert torch.get_num_threads() == threads
    path = common.write_json(tmp_path / "a" / "r.json", {"x": 1.5, "name": "équipe"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"x": 1.5, "name": "équipe"}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left
    assert common.command_line(str(SCRIPTS / "bench_loop.py"), ["--steps", "2"]) == "python scripts/bench_loop.py --steps 2"
    assert common.layers_override("tiny_random", 2) == ["++encoder.kwargs.num_layers=2"]
    assert common.layers_override("e5_small", 0) == []
    assert common.balancer_overrides("torchjd") == ["balancer=torchjd", "balancer.aggregator=UPGrad"]
    assert common.find_data_root() is not None  # MTL_DATA_DIR (the fixture files)
    with pytest.raises(SystemExit, match="no tianchi"):
        common.find_data_root(str(tmp_path))


def test_bench_shapes(tmp_path: Path) -> None:
    argv = ["--encoder", "tiny_random", "--steps", "2", "--block", "1", "--warmup-steps", "1", "--batch-size", "4",
            "--max-length", "32", "--train-per-task", "48", "--dev-per-task", "16", "--threads", "1"]  # fmt: skip
    data = run_main("bench_shapes", argv, tmp_path / "shapes.json")
    names = [f"{s}/{p}" for s in ("dynamic", "multiple16", "ladder") for p in ("fp32", "bf16")]
    assert data["benchmark"] == "shapes" and list(data["train"]) == names
    assert all(positive(v["samples_per_second"]) for v in data["train"].values())
    assert data["train"]["dynamic/fp32"]["ratio_to_dynamic_fp32"] == pytest.approx(1.0)
    ev = data["eval"]
    assert ev["sorted_by_length/fp32"]["predictions_equal_to_first"] == 1.0  # sorting changes no prediction
    assert ev["sorted_by_length/fp32"]["avg_macro_f1"] == ev["dataset_order/fp32"]["avg_macro_f1"]
    assert positive(ev["sorted_speedup/fp32"]) and positive(ev["sorted_speedup/bf16"])
    over = data["padded_positions_per_real_token"]
    assert 1.0 <= over["dynamic"] <= over["multiple16"] and over["dynamic"] <= over["ladder"]


@pytest.mark.slow
def test_gpu_study_dry_run(tmp_path: Path) -> None:
    """scripts/gpu_study.sh --dry-run: every stage of the GPU study at tiny sizes on the CPU, and its summary."""
    import os
    import subprocess

    env = {**os.environ, "STUDY_OUT": str(tmp_path / "study"), "MTL_OUTPUT_DIR": str(tmp_path / "outputs")}
    out = subprocess.run(["bash", str(SCRIPTS / "gpu_study.sh"), "--dry-run"], env=env, capture_output=True,
                         text=True, timeout=900, cwd=SCRIPTS.parent)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "study" / "summary.json").read_text(encoding="utf-8"))
    assert {k: v["exit"] for k, v in summary["stages"].items()} == {"bench_gpu": 0, "bench_loop": 0, "tianchi_epoch": 0}
    assert 0.0 <= summary["tianchi_epoch"]["avg_macro_f1"] <= 1.0 and set(summary["tianchi_epoch"]["tasks"]) == TASKS
    assert summary["bench_gpu"]["benchmark"] == "gpu" and summary["bench_loop"]["benchmark"] == "loop"


def test_bench_losses(tmp_path: Path) -> None:
    argv = ["--encoder", "tiny_random", "--steps", "2", "--block", "1", "--warmup-steps", "1", "--batch-size", "4",
            "--max-length", "32", "--train-per-task", "48", "--dev-per-task", "16", "--threads", "1",
            "--losses", "ce,focal,logit_adjusted"]  # fmt: skip
    data = run_main("bench_losses", argv, tmp_path / "losses.json")
    assert data["benchmark"] == "losses" and list(data["train"]) == ["ce", "focal", "logit_adjusted"]
    assert data["train"]["ce"]["step_cost_ratio_to_ce"] == pytest.approx(1.0)
    assert all(positive(v["step_cost_ratio_to_ce"]) for v in data["train"].values())
    rules = data["decision_rules"]
    assert set(rules["score_rules_seconds_per_task"]) == TASKS and positive(rules["evaluation_seconds_all_rules_included"])


def test_bench_tricks(tmp_path: Path) -> None:
    argv = ["--encoder", "tiny_random", "--steps", "2", "--block", "1", "--warmup-steps", "1", "--batch-size", "4",
            "--max-length", "32", "--train-per-task", "48", "--threads", "1"]  # fmt: skip
    data = run_main("bench_tricks", argv, tmp_path / "tricks.json")
    assert data["benchmark"] == "tricks" and list(data["train"])[0] == "plain"
    assert set(data["train"]) == {"plain", "fgm", "pgd3", "rdrop", "multi_sample_dropout4", "ema", "layer_decay",
                                  "adafactor"}
    assert data["train"]["plain"]["step_cost_ratio_to_plain"] == pytest.approx(1.0)
    assert all(positive(v["step_cost_ratio_to_plain"]) for v in data["train"].values())


def test_bench_structures(tmp_path: Path) -> None:
    argv = ["--encoder", "tiny_random", "--steps", "2", "--block", "1", "--warmup-steps", "1", "--batch-size", "4",
            "--max-length", "32", "--train-per-task", "48", "--threads", "1"]  # fmt: skip
    data = run_main("bench_structures", argv, tmp_path / "structures.json")
    assert data["benchmark"] == "structures" and list(data["train"])[0] == "baseline"
    assert set(data["train"]) == {"baseline", "scalar_mix", "concat_layers", "attention_pooling", "bilstm_heads",
                                  "cnn_heads", "adapters", "lora", "private_top2"}
    assert data["train"]["baseline"]["step_cost_ratio_to_baseline"] == pytest.approx(1.0)
    assert all(positive(v["step_cost_ratio_to_baseline"]) for v in data["train"].values())
    assert data["structures"]["baseline"]["estimated_cost_ratio"] == pytest.approx(1.0)
    assert data["structures"]["private_top2"]["parameters"]["tasks"]["tnews"]["private"] > 0

"""logger=wandb: offline tracking of a tiny run (config, per-step and per-task metrics, summary, closed)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from mtl.cli.train import CONFIG_DIR
from mtl.training import loggers
from mtl.training.run import run

pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def _offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTL_DATA_DIR", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    for var, sub in (("WANDB_DIR", "wandb"), ("WANDB_CONFIG_DIR", "wandb-config"),
                     ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_DATA_DIR", "wandb-data")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))


def tiny(data_root: Path, *extra: str):
    overrides = [
        "encoder=tiny_random", f"data.root={data_root}", "data.batch_size=16", "trainer.max_steps=6",
        "trainer.eval_every=3", "trainer.log_every=2", "trainer.progress=false", "logger=wandb", *extra,
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def wandb_records(path: Path) -> list[Any]:
    """The records of a ``.wandb`` file (a LevelDB-style log of protobuf records, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            buf = data
        else:
            buf += data
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def keys(items: Any) -> set[str]:
    return {i.key or "/".join(i.nested_key) for i in items}


def test_offline_run_is_tracked_and_finished(fixture_data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    metrics = run(tiny(fixture_data_root, "name=wbtest"), run_dir)
    (offline,) = (run_dir / "wandb").glob("offline-run-*")  # dir = the run dir; offline without a key
    (log_file,) = offline.glob("*.wandb")
    records = wandb_records(log_file)
    by_kind: dict[str, list[Any]] = {}
    for r in records:
        by_kind.setdefault(r.WhichOneof("record_type"), []).append(r)
    (run_rec,) = by_kind["run"]
    assert run_rec.run.project == "mtl-clue"
    assert run_rec.run.run_group == "wbtest"  # not a multirun: grouped by the run's name
    assert list(run_rec.run.tags) == ["proportional", "equal"]
    config = keys(run_rec.run.config.update)
    assert {"encoder", "tasks", "sampler", "balancer", "optim", "trainer", "seed"} <= config
    history = set().union(*(keys(r.history.item) for r in by_kind["history"]))
    assert {"train/lr", "eval/avg_macro_f1"} <= history
    assert {f"eval/{t}/macro_f1" for t in ("ocnli", "ocemotion", "tnews")} <= history
    assert any(k.startswith("train/loss/") for k in history) and any(k.startswith("plots/") for k in history)
    summary = set().union(*(keys(r.summary.update) for r in by_kind["summary"]))
    assert {"avg_macro_f1", "best/tnews/macro_f1", "samples_per_second"} <= summary
    assert by_kind["exit"][0].exit.exit_code == 0
    assert (run_dir / "train_log.csv").is_file() and metrics["avg_macro_f1"] >= 0  # csv kept alongside


def test_failed_run_closes_the_wandb_run(fixture_data_root: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mtl.training import run as run_mod

    def boom(self):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(run_mod.Trainer, "fit", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(tiny(fixture_data_root), tmp_path / "run")
    (log_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/*.wandb")
    exits = [r.exit.exit_code for r in wandb_records(log_file) if r.WhichOneof("record_type") == "exit"]
    assert exits == [1]


def test_mode_defaults_to_offline_without_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lg = loggers.WandbLogger(tmp_path, mode=None, full_config={"name": "m"})
    try:
        assert lg.mode == "offline"
    finally:
        lg.finish({"avg_macro_f1": 0.5})
    with pytest.raises(ValueError, match="mode"):
        loggers.WandbLogger(tmp_path, mode="sometimes")


def test_missing_wandb_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ImportError, match=r'pip install "mtl\[track\]"'):
        loggers.build_logger({"csv": {}, "wandb": {"mode": "offline"}}, tmp_path)

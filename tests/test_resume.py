"""Resume: a run killed part-way and resumed ends exactly like an uninterrupted one (CPU, fixed seed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mtl.training import checkpoint as ckpt
from mtl.training import run as run_mod
from mtl.training.run import run
from tests.helpers import tiny_run_cfg, tiny_run_env
from tests.toy_trainer import toy_trainer


@pytest.fixture(autouse=True)
def _tiny_runs(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch, plots=False, one_thread=True)  # plots: not tested here, saves time


# metrics that must agree between the uninterrupted and the resumed run (timings naturally differ)
SAME = ("avg_macro_f1", "best_step", "tasks", "last", "steps", "history", "sampler", "balancer",
        "nonfinite_steps_skipped")


def cfg_for(data_root: Path, *extra: str):
    return tiny_run_cfg(
        data_root, "data.batch_size=8", "trainer.max_steps=16", "trainer.eval_every=6", "trainer.checkpoint_every=5",
        "optim.warmup=0.2",
        # dropout stays on (model 0.1, encoder 0.1): the RNG state must be restored exactly
        *extra,
    )


class Killed(RuntimeError):
    pass


def run_killed_at(cfg, run_dir: Path, kill_step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    original = run_mod.Trainer.train_step

    def dying(self):
        if self.step == kill_step:
            raise Killed(f"killed at step {kill_step}")
        return original(self)

    with monkeypatch.context() as m:
        m.setattr(run_mod.Trainer, "train_step", dying)
        with pytest.raises(Killed):
            run(cfg, run_dir)


def model_state(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return ckpt.load(run_dir / "checkpoints" / name)["model"]


@pytest.mark.parametrize(
    "extra",
    [
        ("sampler=proportional", "balancer=famo"),  # one task per step: sampler RNG, FAMO state
        ("sampler=all_tasks", "balancer=pcgrad", "trainer.grad_accum_steps=2"),  # Gramian + balancer RNG
    ],
    ids=["famo-proportional", "pcgrad-all_tasks-accum2"],
)
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(
    fixture_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...]
) -> None:
    cfg = cfg_for(fixture_data_root, *extra)
    full = run(cfg, tmp_path / "full")

    resumed_dir = tmp_path / "resumed"
    run_killed_at(cfg, resumed_dir, kill_step=13, monkeypatch=monkeypatch)  # after the step-10 checkpoint
    saved = ckpt.load(resumed_dir / "checkpoints" / "last.pt")
    assert saved["trainer"]["step"] == 10 and not saved["trainer"]["finished"]
    assert not list((resumed_dir / "checkpoints").glob("*.tmp"))

    # what `mtl-train ... hydra.run.dir=<old run dir> trainer.resume=auto` does
    again = run(cfg_for(fixture_data_root, *extra, "trainer.resume=auto"), resumed_dir)
    assert again["resumed_from"] == str(resumed_dir / "checkpoints" / "last.pt")
    for key in SAME:
        assert again[key] == full[key], key
    on_disk = json.loads((resumed_dir / "metrics.json").read_text())
    assert on_disk["history"] == json.loads((tmp_path / "full" / "metrics.json").read_text())["history"]
    for name in ("last.pt", "best.pt"):
        a, b = model_state(tmp_path / "full", name), model_state(resumed_dir, name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_resume_from_another_run_directory_and_from_a_finished_run(
    fixture_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = cfg_for(fixture_data_root, "trainer.max_steps=8", "trainer.eval_every=4", "trainer.checkpoint_every=4")
    full = run(cfg, tmp_path / "full")
    run_killed_at(cfg, tmp_path / "old", kill_step=6, monkeypatch=monkeypatch)
    # trainer.resume=<old run dir>: continue into a new directory
    new = run(cfg_for(fixture_data_root, "trainer.max_steps=8", "trainer.eval_every=4", "trainer.checkpoint_every=4",
                      f"trainer.resume={tmp_path / 'old'}"), tmp_path / "new")
    assert new["history"] == full["history"] and new["steps"] == 8
    # resuming a finished run trains no further and reports the same results
    done = run(cfg_for(fixture_data_root, "trainer.max_steps=8", "trainer.eval_every=4", "trainer.checkpoint_every=4",
                       "trainer.resume=auto"), tmp_path / "full")
    assert done["history"] == full["history"] and done["avg_macro_f1"] == full["avg_macro_f1"]


def test_resolve_resume(tmp_path: Path) -> None:
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path) is None  # nothing there yet: start fresh
    path = ckpt.atomic_save({"x": 1}, tmp_path / "checkpoints" / "last.pt")
    assert ckpt.resolve_resume("auto", tmp_path) == path
    assert ckpt.resolve_resume(str(tmp_path), tmp_path / "elsewhere") == path
    assert ckpt.resolve_resume(str(path), tmp_path / "elsewhere") == path
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        ckpt.resolve_resume(str(tmp_path / "missing"), tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.pt"]  # no temporary file left


def test_best_pt_is_not_resumable(tmp_path: Path) -> None:
    tr = toy_trainer(tmp_path, max_steps=2, eval_every=2)
    tr.fit()
    with pytest.raises(ValueError, match="last.pt"):
        tr.load_checkpoint(tmp_path / "checkpoints" / "best.pt")


@pytest.mark.parametrize("resumed_with", ["multi", "csv"])
def test_resume_keeps_the_csv_history_with_several_loggers(tmp_path: Path, resumed_with: str) -> None:
    # logger=wandb is a MultiLogger(csv, wandb): its checkpoint must carry the CSV rows, or the resumed run's
    # first flush rewrites train_log.csv with the new rows only (also when resumed with logger=csv alone)
    from mtl.training.loggers import CSVLogger, MultiLogger

    first = toy_trainer(tmp_path, max_steps=4)
    first.logger = MultiLogger([CSVLogger(tmp_path)])
    first.fit()
    state = first.state_dict()
    logger = MultiLogger([CSVLogger(tmp_path)]) if resumed_with == "multi" else CSVLogger(tmp_path)
    second = toy_trainer(tmp_path, max_steps=8)
    second.logger = logger
    second.load_state_dict(state)
    second.fit()
    with (tmp_path / "train_log.csv").open(encoding="utf-8") as fh:
        steps = [int(row["step"]) for row in csv.DictReader(fh)]
    assert steps == list(range(1, 9))

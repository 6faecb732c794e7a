"""Resume identity: a resume whose tasks, data, seed, encoder, model, balancer, sampler or optimiser differ
from the checkpoint's is refused in one line, before any data is read or state loaded; cadence settings
(``trainer.max_steps`` extension, evaluation, logging, checkpoints, progress) may change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mtl.training.run import run
from mtl.training.validate import ConfigError, identity_differences
from tests.helpers import tiny_run_env
from tests.test_reliability_rundir import cfg_for, finished_run, no_data_read, snapshot  # noqa: F401


@pytest.fixture(autouse=True)
def _tiny_runs(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch, plots=False, one_thread=True)


@pytest.fixture(scope="module")
def finished(fixture_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_run(fixture_data_root, tmp_path_factory.mktemp("finished") / "run")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("seed=7", "seed: 42 -> 7"),
        ("data.max_train_per_task=50", "data.max_train_per_task: None -> 50"),
        ("data.batch_size=4", "data.batch_size: 8 -> 4"),
        ("tasks=[ocnli,tnews]", "tasks: ['ocnli', 'ocemotion', 'tnews'] -> ['ocnli', 'tnews']"),
        ("balancer=uncertainty", "balancer.name: equal -> uncertainty"),
        ("sampler=round_robin", "sampler.name: proportional -> round_robin"),
        ("model.dropout=0.3", "model.dropout: 0.1 -> 0.3"),
        ("encoder.max_length=32", "encoder.max_length: 64 -> 32"),
        ("optim.lr=1e-3", "optim.lr: 0.003 -> 0.001"),
    ],
)
@pytest.mark.usefixtures("no_data_read")
def test_a_resume_that_changes_the_run_is_refused_before_the_data_is_read(
    finished: Path, fixture_data_root: Path, override: str, named: str
) -> None:
    before = snapshot(finished)
    with pytest.raises(ConfigError) as err:
        run(cfg_for(fixture_data_root, override, "trainer.resume=auto"), finished)
    msg = str(err.value)
    assert f"cannot resume from {finished / 'checkpoints' / 'last.pt'}" in msg and named in msg, msg
    assert "start a new run" in msg and "\n" not in msg
    assert snapshot(finished) == before


@pytest.mark.usefixtures("no_data_read")
def test_a_resume_into_a_new_directory_is_checked_too(finished: Path, fixture_data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="seed: 42 -> 3"):
        run(cfg_for(fixture_data_root, "seed=3", f"trainer.resume={finished}"), tmp_path / "new")


def test_extending_a_run_and_changing_its_cadence_resumes(finished: Path, fixture_data_root: Path,
                                                          tmp_path: Path) -> None:
    run_dir = Path(shutil.copytree(finished, tmp_path / "run"))
    metrics = run(cfg_for(fixture_data_root, "trainer.resume=auto", "trainer.max_steps=4", "trainer.eval_every=4",
                          "trainer.log_every=1", "trainer.checkpoint_every=4", "trainer.progress=true",
                          "data.num_workers=0", "data.eval_batch_size=7"), run_dir)
    assert metrics["resumed_from"] == str(run_dir / "checkpoints" / "last.pt")
    assert metrics["steps"] == 4 and [h["step"] for h in metrics["history"]] == [2, 4]


def test_identity_differences_ignore_where_files_live_and_the_loop_cadence() -> None:
    base = {
        "seed": 1, "name": "a",
        "tasks": {"t": {"train_file": "x.csv", "labels": ["0", "1"], "test_files": {"a": "t.csv"}}},
        "data": {"root": "/a", "cache_dir": "/c", "batch_size": 8, "num_workers": 0},
        "optim": {"lr": 1e-3}, "balancer": {"name": "equal"}, "sampler": {"name": "proportional"},
        "trainer": {"max_steps": 10, "eval_every": 5, "resume": None, "device": "cpu"},
        "logger": {"csv": {"flush_every": 20}},
    }
    moved = {
        **base, "name": "b",
        "tasks": {"t": {"train_file": "x.csv", "labels": ["0", "1"], "test_files": {"b": "u.csv"}}},
        "data": {"root": "/b", "cache_dir": "/d", "batch_size": 8, "num_workers": 4, "added_later": 1},
        "trainer": {"max_steps": 20, "eval_every": 2, "resume": "auto", "device": "cuda"},
        "logger": {},
    }
    assert identity_differences(base, moved) == []
    changed = {**base, "tasks": {"t": {"train_file": "y.csv", "labels": ["0", "1"]}},
               "balancer": {"name": "static", "weights": {"t": 2.0}}}
    assert identity_differences(base, changed) == [
        "tasks.t.train_file: x.csv -> y.csv", "balancer.name: equal -> static", "balancer.weights: <unset> -> {'t': 2.0}",
    ]

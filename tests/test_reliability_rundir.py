"""Run-directory safety: a directory holding a run is refused unless the run resumes it or is told to
overwrite it; a run that fails at start-up writes no ``config.yaml``; a locked directory is refused."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mtl.training import run as run_mod
from mtl.training.run import run
from mtl.training.validate import RunDirError, holds_run
from tests.helpers import no_plots, tiny_run_cfg, tiny_run_env

FILES = ("config.yaml", "metrics.json", "train_log.csv", "checkpoints/last.pt", "checkpoints/best.pt")


@pytest.fixture(autouse=True)
def _tiny_runs(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch, plots=False, one_thread=True)


def cfg_for(data_root: Path, *extra: str):
    return tiny_run_cfg(data_root, "data.batch_size=8", "trainer.max_steps=2", "trainer.eval_every=2",
                        "trainer.checkpoint_every=2", *extra)


def finished_run(data_root: Path, run_dir: Path) -> Path:
    """A finished two-step run in ``run_dir`` (run once per module: tests copy it before changing it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MTL_DATA_DIR", raising=False)
        mp.setattr(run_mod, "write_run_outputs", no_plots)
        if not os.environ.get("MTL_CACHE_DIR"):
            mp.setenv("MTL_CACHE_DIR", str(run_dir.parent / "mtl-cache"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run(cfg_for(data_root), run_dir)
        finally:
            torch.set_num_threads(threads)
    return run_dir


@pytest.fixture(scope="module")
def finished(fixture_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_run(fixture_data_root, tmp_path_factory.mktemp("finished") / "run")


@pytest.fixture
def copy_of(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in FILES}


@pytest.fixture
def no_data_read(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args, **kwargs):
        raise AssertionError("the data was read")

    monkeypatch.setattr(run_mod, "build_data", refuse)
    yield


def test_a_new_run_in_a_finished_run_directory_is_refused_and_changes_nothing(
    finished: Path, fixture_data_root: Path, no_data_read: None
) -> None:
    before = snapshot(finished)
    with pytest.raises(RunDirError) as err:
        run(cfg_for(fixture_data_root, "seed=7"), finished)
    msg = str(err.value)
    assert str(finished) in msg and "already holds a run" in msg and "\n" not in msg
    assert "trainer.resume=auto" in msg and "trainer.overwrite=true" in msg
    assert snapshot(finished) == before


def test_overwrite_replaces_the_run_and_leaves_nothing_of_the_old_one(copy_of: Path, fixture_data_root: Path) -> None:
    (copy_of / "curves.png").write_bytes(b"an old plot")
    (copy_of / "checkpoints" / "prev.pt").write_bytes(b"an old checkpoint")
    metrics = run(cfg_for(fixture_data_root, "seed=7", "trainer.overwrite=true"), copy_of)
    assert "seed: 7" in (copy_of / "config.yaml").read_text()
    assert metrics["resumed_from"] is None and metrics["steps"] == 2
    assert not (copy_of / "curves.png").exists() and not (copy_of / "checkpoints" / "prev.pt").exists()


def test_overwrite_and_resume_together_are_refused(finished: Path, fixture_data_root: Path, no_data_read) -> None:
    with pytest.raises(RunDirError, match="contradict"):
        run(cfg_for(fixture_data_root, "trainer.overwrite=true", "trainer.resume=auto"), finished)


def test_a_failed_start_up_writes_no_config(tmp_path: Path, fixture_data_root: Path) -> None:
    with pytest.raises(FileNotFoundError):
        run(cfg_for(fixture_data_root, f"data.root={tmp_path / 'nowhere'}"), tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists() and not holds_run(tmp_path / "run")
    # ...so the directory is free for the corrected run
    run(cfg_for(fixture_data_root), tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_a_resume_that_fails_at_start_up_keeps_the_runs_config(copy_of: Path, fixture_data_root: Path) -> None:
    before = snapshot(copy_of)
    with pytest.raises(FileNotFoundError):
        run(cfg_for(fixture_data_root, "trainer.resume=auto", f"data.root={copy_of / 'nowhere'}"), copy_of)
    assert snapshot(copy_of) == before


def test_resume_auto_on_a_finished_run_without_a_checkpoint_is_refused(
    copy_of: Path, fixture_data_root: Path, no_data_read: None
) -> None:
    for name in ("last.pt", "prev.pt"):
        (copy_of / "checkpoints" / name).unlink(missing_ok=True)
    with pytest.raises(RunDirError, match="no checkpoint to resume"):
        run(cfg_for(fixture_data_root, "trainer.resume=auto"), copy_of)


def test_a_directory_in_use_by_another_run_is_refused(tmp_path: Path, fixture_data_root: Path, no_data_read) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run writing here
        fh.write("12345")
        fh.flush()
        with pytest.raises(RunDirError, match=rf"run directory {run_dir} is in use by another run \(pid 12345\)"):
            run(cfg_for(fixture_data_root), run_dir)
    assert not (run_dir / "config.yaml").exists()


def test_the_lock_is_released_when_the_run_ends(finished: Path) -> None:
    with open(finished / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise if the run still held it
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

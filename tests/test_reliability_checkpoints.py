"""Checkpoints: the previous one is kept (``prev.pt``) until the new one is written and verified; an
unreadable ``last.pt`` falls back to it with a warning; every checkpoint error names the file."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
import torch

from mtl.training import checkpoint as ckpt
from mtl.utils import files
from mtl.utils.files import CheckpointError
from tests.toy_trainer import single_thread, toy_trainer


@pytest.fixture(autouse=True)
def _single_thread():
    yield from single_thread()


def trained(run_dir: Path, **settings):
    tr = toy_trainer(run_dir, max_steps=4, eval_every=4, checkpoint_every=2, **settings)
    tr.fit()
    return tr


def test_the_previous_checkpoint_is_kept_as_prev_pt(tmp_path: Path) -> None:
    trained(tmp_path)
    folder = tmp_path / "checkpoints"
    assert ckpt.load(folder / "last.pt")["trainer"]["step"] == 4
    assert ckpt.load(folder / "prev.pt")["trainer"]["step"] == 2
    assert sorted(p.name for p in folder.glob("*.pt*")) == ["best.pt", "last.pt", "prev.pt"]  # nothing half-written
    assert not list(folder.glob(".*"))


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_an_unreadable_last_pt_falls_back_to_prev_pt_with_a_warning(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    trained(tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    data = last.read_bytes()
    if damage == "missing":
        last.unlink()  # stopped between the two renames of a rotation
    else:
        last.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    resumed = toy_trainer(tmp_path, max_steps=6, eval_every=6, checkpoint_every=2, resume="auto")
    with caplog.at_level(logging.WARNING, logger="mtl.training.checkpoint"):
        state = resumed.fit()
    assert state.resumed_from == str(tmp_path / "checkpoints" / "prev.pt") and state.step == 6
    assert "prev.pt" in caplog.text
    if damage != "missing":
        assert str(last) in caplog.text  # the warning names the unreadable file


def test_an_unreadable_last_pt_without_prev_pt_names_the_file(tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.pt"
    last.parent.mkdir()
    last.write_bytes(b"")
    tr = toy_trainer(tmp_path, resume="auto")
    with pytest.raises(CheckpointError, match=rf"{last}.* empty.*no previous checkpoint \(prev.pt\)"):
        tr.fit()


def test_both_unreadable_names_both_files(tmp_path: Path) -> None:
    trained(tmp_path)
    folder = tmp_path / "checkpoints"
    for name in ("last.pt", "prev.pt"):
        (folder / name).write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(CheckpointError) as err:
        toy_trainer(tmp_path, resume=str(folder / "last.pt")).fit()
    assert str(folder / "last.pt") in str(err.value) and str(folder / "prev.pt") in str(err.value)


def test_a_checkpoint_that_fails_verification_keeps_the_one_before(tmp_path: Path, monkeypatch) -> None:
    tr = trained(tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def broken_save(obj, path):  # a write that "succeeds" but leaves half a file (full disk, bad copy)
        Path(path).write_bytes(b"PK\x03\x04 half")
        return Path(path)

    monkeypatch.setattr(ckpt, "atomic_save", broken_save)
    with pytest.raises(CheckpointError, match=rf"cannot write checkpoint {last}"):
        tr.save_checkpoint()
    assert last.read_bytes() == before
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")]


def test_verify_names_the_file(tmp_path: Path) -> None:
    path = ckpt.atomic_save({"x": 1}, tmp_path / "ok.pt")
    ckpt.verify(path)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(CheckpointError, match=str(path)):
        ckpt.verify(path)


def test_resuming_from_best_pt_names_the_file(tmp_path: Path) -> None:
    trained(tmp_path)
    best = tmp_path / "checkpoints" / "best.pt"
    with pytest.raises(ValueError, match=rf"{best} is not a resumable trainer checkpoint"):
        toy_trainer(tmp_path / "new", resume=str(best)).fit()


def test_checkpoint_errors_are_shown_as_one_line_by_mtl_train() -> None:
    from mtl.cli.train import user_errors

    assert CheckpointError in user_errors()


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``limit`` bytes are in: a disk that fills mid-save."""

    def __init__(self, path: Path, limit: int) -> None:
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by __exit__
        self._left = limit

    def write(self, data: bytes) -> int:
        if len(data) > self._left:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._left -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name: str):
        return getattr(self._fh, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "checkpoints"
    ckpt.save_rotating({"step": 1, "w": torch.zeros(10)}, folder / "last.pt")
    monkeypatch.setattr(files, "open", lambda path, mode: _FullDisk(Path(path), limit=4096), raising=False)
    with pytest.raises(CheckpointError) as err:
        ckpt.save_rotating({"step": 2, "w": torch.zeros(100_000)}, folder / "last.pt")
    message = str(err.value)
    # torch alone says "unexpected pos ..."; the error says what happened, where, and what to do
    assert "no space left on the device while writing" in message and "last.pt" in message
    assert "MiB free" in message and "trainer.checkpoint_every=0" in message
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    monkeypatch.undo()
    assert ckpt.load(folder / "last.pt")["step"] == 1  # the checkpoint before it is intact
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]  # no partial file left behind


def test_other_save_errors_pass_through_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(obj, fh) -> None:
        raise RuntimeError("cannot pickle this")

    monkeypatch.setattr(files.torch, "save", refuse)
    with pytest.raises(RuntimeError, match="^cannot pickle this$"):
        files.atomic_save({"x": 1}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []

"""mtl-predict never leaves a stale or mixed submission, falls back to last.pt, gives advice it honours and
one-line errors for unwritable folders (items 2 and 9). Fast: a stand-in checkpoint whose "model" predicts
label 0, so no training is needed."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

import mtl.inference
from mtl.cli.predict import main as predict_main
from mtl.cli.predict import parse_args
from mtl.inference import find_checkpoint, write_submission
from mtl.inference import scoring as scoring_mod
from mtl.inference import submission as submission_mod
from mtl.inference.checkpoint import LoadedCheckpoint

CONF = Path(__file__).resolve().parents[1] / "mtl" / "conf" / "tasks"
TASKS = ("ocnli", "ocemotion", "tnews")


def task_config(task: str) -> dict:
    return yaml.safe_load((CONF / f"{task}.yaml").read_text(encoding="utf-8"))[task]


def fake_checkpoint(run_dir: Path, tasks: tuple[str, ...] = TASKS) -> LoadedCheckpoint:
    cfgs = {t: task_config(t) for t in tasks}
    return LoadedCheckpoint(
        model=None, tokenizer=None, labels={t: [str(x) for x in cfgs[t]["labels"]] for t in tasks},
        config={"tasks": cfgs, "data": {"normalize": True, "on_bad_row": "error"}, "seed": 0},
        step=10, avg_macro_f1=0.5, path=run_dir / "checkpoints" / "best.pt", device=torch.device("cpu"),
    )


@pytest.fixture(autouse=True)
def _predict_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every prediction is label 0 (what the files look like is the point here, not the model)."""
    monkeypatch.delenv("MTL_DATA_DIR", raising=False)
    monkeypatch.setattr(submission_mod, "predict", lambda ckpt, task, examples, batch_size=128, rule=None: [0] * len(examples))

    def logits(ckpt, task, examples, batch_size=128):  # noqa: ANN001, ANN202
        out = torch.zeros(len(examples), len(ckpt.labels[task]))
        out[:, 0] = 1.0
        return out

    monkeypatch.setattr(scoring_mod, "predict_logits", logits)


@pytest.fixture
def data_root(fixture_data_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(fixture_data_root, root)
    return root


def break_test_file(root: Path, name: str) -> Path:
    path = root / "tianchi" / "test_unlabelled" / name
    with path.open("a", encoding="utf-8") as fh:
        fh.write("99999\n")  # an id and no text
    return path


def zip_members(zip_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(zip_path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def error_lines(err: str) -> list[str]:
    """stderr without the log lines ("[INFO] ...", "[WARNING] ..."): what is left is the error."""
    return [line for line in err.strip().splitlines() if not line.startswith("[")]


def ids_of(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


# --- item 2: all or nothing ------------------------------------------------------------------------------

def test_a_failed_submission_leaves_the_earlier_one_whole(data_root: Path, tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path / "run")
    out = tmp_path / "sub"
    write_submission(ckpt, "a", out, root=data_root)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    a_ids = ids_of(out / "ocnli_predict.json")
    break_test_file(data_root, "tnews_test_B.csv")  # the last task fails, after ocnli and ocemotion
    with pytest.raises(ValueError, match="tnews_test_B.csv"):
        write_submission(ckpt, "b", out, root=data_root)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing of split b beside split a
    assert ids_of(out / "ocnli_predict.json") == a_ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "sub"]  # no staging folder left behind


def test_a_new_submission_replaces_every_file_of_the_earlier_one(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub"
    write_submission(fake_checkpoint(tmp_path / "run"), "a", out, root=data_root)
    (out / "notes.txt").write_text("mine")  # not ours: kept
    sub = write_submission(fake_checkpoint(tmp_path / "run2", ("ocnli",)), "b", out, root=data_root)
    assert sub.zip_path == out / "result.zip" and sub.files["ocnli"] == out / "ocnli_predict.json"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "ocnli_predict.json", "result.zip"]
    members = zip_members(out / "result.zip")
    assert members == {"ocnli_predict.json": (out / "ocnli_predict.json").read_bytes()}
    assert ids_of(out / "ocnli_predict.json")[0] == "1500"  # test B ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "sub"]


def test_a_first_submission_into_a_new_folder(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "sub"
    sub = write_submission(fake_checkpoint(tmp_path / "run"), "a", out, root=data_root)
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in sub.files.values()), "result.zip"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["sub"]


# --- item 9: last.pt, the bad-row advice, unwritable folders ---------------------------------------------

def test_last_pt_is_used_when_there_is_no_best_pt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.pt").write_bytes(b"x")
    assert find_checkpoint(tmp_path / "run") == ckpts / "last.pt"
    assert any("no best.pt" in r.getMessage() and "last.pt" in r.getMessage() for r in caplog.records)
    (ckpts / "best.pt").write_bytes(b"x")
    assert find_checkpoint(tmp_path / "run") == ckpts / "best.pt"
    assert find_checkpoint(ckpts) == ckpts / "best.pt"


def test_no_checkpoint_at_all_names_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict_main([str(tmp_path), "--split", "a"]) == 1
    err = capsys.readouterr().err
    assert "best.pt" in err and "last.pt" in err and len(error_lines(err)) == 1


def use_fake(monkeypatch: pytest.MonkeyPatch, ckpt: LoadedCheckpoint) -> None:
    monkeypatch.setattr(mtl.inference, "load_checkpoint", lambda path, device="auto": ckpt)


def test_bad_test_row_advice_is_one_line_and_honoured(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_fake(monkeypatch, fake_checkpoint(tmp_path / "run"))
    bad = break_test_file(data_root, "OCNLI_a.csv")
    n = len(bad.read_text(encoding="utf-8").splitlines())
    code = predict_main([str(tmp_path / "run"), "--split", "a", "--data-root", str(data_root),
                         "--out", str(tmp_path / "sub")])
    err = capsys.readouterr().err
    assert code == 1 and len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert str(bad) in err and f"line {n}" in err
    assert "data.on_bad_row" not in err and "fix or remove" in err  # no advice mtl-predict cannot follow
    assert not (tmp_path / "sub" / "result.zip").exists()
    # asking a submission to skip rows is refused up front, by the option the help lists
    with pytest.raises(SystemExit):
        parse_args([str(tmp_path / "run"), "--split", "a", "--on-bad-row", "skip"])
    assert "--on-bad-row skip" in capsys.readouterr().err


def test_bad_labelled_row_advice_names_an_option_that_works(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_fake(monkeypatch, fake_checkpoint(tmp_path / "run"))
    labelled = tmp_path / "mine.tsv"
    good = (data_root / "tianchi" / "OCNLI_train1128.csv").read_text(encoding="utf-8").splitlines()[:20]
    labelled.write_text("\n".join([*good, "77777\tonly one sentence"]) + "\n", encoding="utf-8")
    args = [str(tmp_path / "run"), "--labelled", f"ocnli={labelled}", "--out", str(tmp_path / "lab")]
    assert predict_main(args) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and str(labelled) in err and "line 21" in err
    advice = "--on-bad-row skip"
    assert advice in err
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "--on-bad-row" in capsys.readouterr().out  # the advice is an option mtl-predict has
    assert predict_main([*args, "--on-bad-row", "skip"]) == 0  # ... and honours
    scores = json.loads((tmp_path / "lab" / "scores.json").read_text())
    assert scores["tasks"]["ocnli"]["n"] == 20


def test_labelled_directory_is_named_as_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    use_fake(monkeypatch, fake_checkpoint(tmp_path / "run"))
    (tmp_path / "folder").mkdir()
    assert predict_main([str(tmp_path / "run"), "--labelled", f"ocnli={tmp_path / 'folder'}",
                         "--out", str(tmp_path / "lab")]) == 1
    assert "is a directory" in capsys.readouterr().err


def read_only_dir(tmp_path: Path) -> Path:
    """A folder nobody can create files in (root ignores permission bits: use sysfs there)."""
    if os.geteuid() == 0:
        probe = Path("/sys/mtl-write-probe")
        try:
            probe.mkdir()
        except OSError:
            return probe
        probe.rmdir()
        pytest.skip("no read-only location for root on this machine")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro / "out"


def test_unwritable_output_folder_is_a_one_line_error(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_fake(monkeypatch, fake_checkpoint(tmp_path / "run"))
    out = read_only_dir(tmp_path)
    for split in ("a", "dev"):
        code = predict_main([str(tmp_path / "run"), "--split", split, "--data-root", str(data_root),
                             "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 1 and len(error_lines(err)) == 1, err
        assert str(out) in err and "cannot write" in err and "Traceback" not in err

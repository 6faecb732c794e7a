"""mtl-predict: the checkpoint is rebuilt offline and writes a valid Tianchi submission zip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from mtl.cli.predict import main as predict_main
from mtl.data.fixtures import OCEMOTION_LABELS, OCNLI_LABELS, TNEWS_LABELS
from mtl.inference import load_checkpoint, validate_submission, write_submission
from mtl.training.run import run
from tests.helpers import tiny_run_cfg, tiny_run_env

FILES = {"ocnli": "ocnli_predict.json", "ocemotion": "ocemotion_predict.json", "tnews": "tnews_predict.json"}
TEST_A = {"ocnli": "OCNLI_a.csv", "ocemotion": "OCEMOTION_a.csv", "tnews": "TNEWS_a.csv"}
LABELS = {"ocnli": OCNLI_LABELS, "ocemotion": OCEMOTION_LABELS, "tnews": TNEWS_LABELS}


@pytest.fixture(scope="module")
def trained(fixture_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MTL_DATA_DIR", raising=False)
        mp.setenv("MTL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        cfg = tiny_run_cfg(fixture_data_root, "data.batch_size=16", "trainer.max_steps=10", "trainer.eval_every=5")
        metrics = run(cfg, run_dir)
    return run_dir, metrics


@pytest.fixture(autouse=True)
def _fixture_data_only(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch)


def test_checkpoint_rebuilds_the_trained_model(trained: tuple[Path, dict]) -> None:
    run_dir, _ = trained
    assert (run_dir / "checkpoints" / "encoder_config" / "config.json").is_file()
    ckpt = load_checkpoint(run_dir, device="cpu")
    saved = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]
    state = ckpt.model.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert ckpt.tasks == ["ocnli", "ocemotion", "tnews"] and ckpt.labels["tnews"] == TNEWS_LABELS


def test_submission_zip_is_valid(trained: tuple[Path, dict], fixture_data_root: Path, tmp_path: Path) -> None:
    run_dir, _ = trained
    out = tmp_path / "sub"
    assert predict_main([str(run_dir), "--split", "a", "--data-root", str(fixture_data_root),
                         "--out", str(out), "--device", "cpu"]) == 0
    with zipfile.ZipFile(out / "result.zip") as zf:
        assert sorted(zf.namelist()) == sorted(FILES.values())  # at the zip root, nothing else
        for task, name in FILES.items():
            lines = zf.read(name).decode("utf-8").splitlines()
            rows = [json.loads(line) for line in lines]
            assert all(set(r) == {"id", "label"} for r in rows)
            assert all(isinstance(r["id"], str) and isinstance(r["label"], str) for r in rows)
            test_file = fixture_data_root / "tianchi" / "test_unlabelled" / TEST_A[task]
            ids = [line.split("\t")[0] for line in test_file.read_text(encoding="utf-8").splitlines() if line]
            assert [r["id"] for r in rows] == ids  # complete, in the file's order
            assert {r["label"] for r in rows} <= set(LABELS[task])


def test_split_b_and_validation_catches_problems(trained: tuple[Path, dict], fixture_data_root: Path,
                                                 tmp_path: Path) -> None:
    run_dir, _ = trained
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt", device="cpu")
    sub = write_submission(ckpt, "b", tmp_path / "b", root=fixture_data_root)
    assert sub.ids["ocnli"][0] == "1500" and not sub.missing_tasks  # test B ids of the fixture
    ids = {p.name: sub.ids[t] for t, p in sub.files.items()}
    labels = {p.name: LABELS[t] for t, p in sub.files.items()}
    assert validate_submission(sub.zip_path, ids, labels) == []
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        rows = [{"id": i, "label": "2"} for i in reversed(sub.ids["ocnli"])]
        rows[0]["label"] = "7"
        zf.writestr("sub/ocnli_predict.json", "\n".join(json.dumps(r) for r in rows))
    problems = validate_submission(bad, {"ocnli_predict.json": sub.ids["ocnli"]},
                                   {"ocnli_predict.json": OCNLI_LABELS})
    assert any("expected" in p and "root" in p for p in problems)


def test_dev_scores_reproduce_training(trained: tuple[Path, dict], fixture_data_root: Path, tmp_path: Path) -> None:
    run_dir, metrics = trained
    assert predict_main([str(run_dir), "--split", "dev", "--data-root", str(fixture_data_root),
                         "--out", str(tmp_path / "dev"), "--device", "cpu"]) == 0
    scores = json.loads((tmp_path / "dev" / "scores.json").read_text())
    assert scores["avg_macro_f1"] == pytest.approx(metrics["avg_macro_f1"], abs=1e-6)
    for task in FILES:
        assert scores["tasks"][task]["macro_f1"] == pytest.approx(metrics["tasks"][task]["macro_f1"], abs=1e-6)
    # a labelled file in the task's training format
    train_file = fixture_data_root / "tianchi" / "OCNLI_train1128.csv"
    assert predict_main([str(run_dir), "--labelled", f"ocnli={train_file}", "--out", str(tmp_path / "lab"),
                         "--device", "cpu"]) == 0
    lab = json.loads((tmp_path / "lab" / "scores.json").read_text())
    assert set(lab["tasks"]) == {"ocnli"} and lab["tasks"]["ocnli"]["n"] == 120


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict_main([str(tmp_path), "--split", "a"]) == 1
    assert "best.pt" in capsys.readouterr().err


def test_a_bad_test_row_stops_the_submission_even_if_training_skipped_bad_rows(
    trained: tuple[Path, dict], fixture_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # skipping a test row would leave its id out of the zip, and the check against the ids read would pass
    import shutil

    run_dir, _ = trained
    root = tmp_path / "data"
    shutil.copytree(fixture_data_root, root)
    test_file = root / "tianchi" / "test_unlabelled" / TEST_A["ocnli"]
    n_lines = len(test_file.read_text(encoding="utf-8").splitlines())
    with test_file.open("a", encoding="utf-8") as fh:
        fh.write("99999\tonly one sentence\n")  # OCNLI test rows have id, sentence1, sentence2
    ckpt = load_checkpoint(run_dir, device="cpu")
    skipping = {**ckpt.data_config, "on_bad_row": "skip"}
    monkeypatch.setattr(type(ckpt), "data_config", property(lambda self: skipping))
    with pytest.raises(ValueError) as err:
        write_submission(ckpt, "a", tmp_path / "a", root=root)
    assert TEST_A["ocnli"] in str(err.value) and f"line {n_lines + 1}" in str(err.value)


def test_data_root_is_passed_down_not_set_in_the_environment(
    trained: tuple[Path, dict], fixture_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    run_dir, _ = trained
    monkeypatch.setenv("MTL_DATA_DIR", str(tmp_path / "nowhere"))  # an explicit root beats MTL_DATA_DIR
    ckpt = load_checkpoint(run_dir, device="cpu")
    sub = write_submission(ckpt, "a", tmp_path / "a", root=fixture_data_root)
    assert sub.zip_path.is_file() and os.environ["MTL_DATA_DIR"] == str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):  # without it, MTL_DATA_DIR is still the root
        write_submission(ckpt, "a", tmp_path / "a2")

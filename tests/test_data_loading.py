"""load_task / load_test_sets on fixture data, the shipped task configs, data-root resolution, fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from mtl.config import default_node, register_configs
from mtl.data import (
    BadRowError,
    load_task,
    load_test_sets,
    resolve_data_root,
    write_fixture_data,
)
from mtl.data.fixtures import OCEMOTION_LABELS, OCNLI_DEV_THRESHOLD, TNEWS_DEV_THRESHOLD, TNEWS_LABELS

CONFIGS = Path(__file__).resolve().parents[1] / "mtl" / "conf"


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture_data(tmp_path_factory.mktemp("data"), rows_per_task=60, seed=0)


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTL_DATA_DIR", raising=False)


def task_cfg(file: str) -> tuple[str, DictConfig]:
    cfg = OmegaConf.load(CONFIGS / "tasks" / f"{file}.yaml")
    assert isinstance(cfg, DictConfig) and len(cfg) == 1
    name = str(next(iter(cfg)))
    return name, cfg[name]


def data_cfg(root: Path, **overrides: Any) -> DictConfig:
    cfg = OmegaConf.create(default_node("data", "default"))  # what `data: default` composes
    assert isinstance(cfg, DictConfig)
    cfg.root = str(root)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


# --- configs -----------------------------------------------------------------------------------------------


def test_task_configs_compose_under_their_task_names() -> None:
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(overrides=["+tasks=[ocnli,ocemotion,tnews]", "+data=default"])
        assert list(cfg.tasks) == ["ocnli", "ocemotion", "tnews"]
        assert cfg.tasks.ocnli.split.threshold == 50437 and cfg.tasks.tnews.split.threshold == 53360
        assert list(cfg.tasks.tnews.labels) == TNEWS_LABELS
        assert list(cfg.tasks.ocemotion.labels) == OCEMOTION_LABELS
        assert cfg.data.on_bad_row == "error" and cfg.data.normalize is True
        assert str(cfg.data.cache_dir).endswith("/tokenized")
        clue = compose(overrides=["+tasks=[ocnli_clue,tnews_clue]", "+data=default"])
        assert list(clue.tasks) == ["ocnli", "tnews"]  # drop-in alternatives
        assert clue.tasks.ocnli.reader == clue.tasks.tnews.reader == "clue_json"


def test_label_lists_are_consistent() -> None:
    for file in ("ocnli", "ocemotion", "tnews", "ocnli_clue", "tnews_clue"):
        _, cfg = task_cfg(file)
        assert len(cfg.labels) == len(cfg.label_names) == len(set(cfg.labels))
        assert cfg.submission_file.endswith("_predict.json")
    assert list(task_cfg("tnews")[1].labels) == list(task_cfg("tnews_clue")[1].labels)
    assert "105" not in TNEWS_LABELS and "111" not in TNEWS_LABELS and len(TNEWS_LABELS) == 15


# --- fixtures ----------------------------------------------------------------------------------------------


def test_fixture_layout(fixture_root: Path) -> None:
    tianchi = fixture_root / "tianchi"
    for name in ("OCNLI", "OCEMOTION", "TNEWS"):
        raw = (tianchi / f"{name}_train1128.csv").read_bytes()
        assert raw.count(b"\r\n") == raw.count(b"\n") == 60
    for name in ("OCNLI_a", "ocnli_test_B", "OCEMOTION_a", "ocemotion_test_B", "TNEWS_a", "tnews_test_B"):
        assert (tianchi / "test_unlabelled" / f"{name}.csv").is_file()
    for rel in (
        "clue_ocnli/train.50k.json",
        "clue_ocnli/dev.json",
        "clue_ocnli/test.json",
        "clue_tnews/labels.json",
    ):
        assert (fixture_root / rel).is_file()
    labels = [
        json.loads(line)["label"]
        for line in (fixture_root / "clue_tnews/labels.json").read_text().splitlines()
    ]
    assert labels == TNEWS_LABELS
    assert b'"' in (tianchi / "OCEMOTION_train1128.csv").read_bytes()  # the quoting trap is exercised


def test_fixture_is_deterministic(tmp_path: Path) -> None:
    a = write_fixture_data(tmp_path / "a", rows_per_task=30, seed=5)
    b = write_fixture_data(tmp_path / "b", rows_per_task=30, seed=5)
    for rel in ("tianchi/OCNLI_train1128.csv", "clue_tnews/train.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


# --- load_task ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "threshold", "n_labels"), [("ocnli", OCNLI_DEV_THRESHOLD, 3), ("tnews", TNEWS_DEV_THRESHOLD, 15)]
)
def test_id_split_tasks(fixture_root: Path, file: str, threshold: int, n_labels: int) -> None:
    name, cfg = task_cfg(file)
    data = load_task(name, cfg, data_cfg(fixture_root), seed=0)
    assert data.name == file and data.num_labels == n_labels
    assert all(int(e.id) < threshold for e in data.train)
    assert all(int(e.id) >= threshold for e in data.dev)
    assert {e.label for e in data.train} == {e.label for e in data.dev} == set(range(n_labels))
    assert (len(data.train), len(data.dev)) == (30, 30)
    report = data.report.to_dict()
    assert report["read"] == 60 and report["train"] == 30 and report["dev"] == 30
    assert report["skipped"] == {} and report["unlabelled"] == 0 and report["split"] == "id_at_least"
    json.dumps(report)


def test_stratified_task_and_seed(fixture_root: Path) -> None:
    name, cfg = task_cfg("ocemotion")
    a = load_task(name, cfg, data_cfg(fixture_root), seed=0)
    b = load_task(name, cfg, data_cfg(fixture_root), seed=0)
    c = load_task(name, cfg, data_cfg(fixture_root), seed=1)
    assert a.labels == OCEMOTION_LABELS
    assert {e.label for e in a.dev} == set(range(7))
    assert not {e.id for e in a.train} & {e.id for e in a.dev}
    assert [e.id for e in a.dev] == [e.id for e in b.dev]
    assert [e.id for e in a.dev] != [e.id for e in c.dev]
    bigger = load_task(name, cfg, data_cfg(fixture_root, dev_fraction=0.5), seed=0)
    assert len(bigger.dev) == 30


def test_clue_variants_count_unlabelled_and_normalise(fixture_root: Path) -> None:
    name, cfg = task_cfg("ocnli_clue")
    data = load_task(name, cfg, data_cfg(fixture_root), seed=0)
    report = data.report.to_dict()
    assert name == "ocnli" and report["split"] == "files"
    assert report["unlabelled"] == 5  # fixture: every 20th train row and every 10th dev row is '-'
    assert report["read"] == len(data.train) + len(data.dev) + 5
    assert all(e.id.startswith("train:") for e in data.train) and all(
        e.id.startswith("dev:") for e in data.dev
    )
    texts = [t for e in data.train + data.dev for t in e.texts]
    assert not any(ch in t for t in texts for ch in "，？！")  # full-width punctuation normalised away
    raw = load_task(name, cfg, data_cfg(fixture_root, normalize=False), seed=0)
    assert any("，" in t or "？" in t or "！" in t for e in raw.train for t in e.texts)

    name, cfg = task_cfg("tnews_clue")
    tnews = load_task(name, cfg, data_cfg(fixture_root), seed=0)
    assert name == "tnews" and tnews.report.unlabelled == 0 and len(tnews.dev) == 20


def test_caps_keep_every_label(fixture_root: Path) -> None:
    name, cfg = task_cfg("tnews")
    data = load_task(name, cfg, data_cfg(fixture_root, max_train_per_task=15, max_dev_per_task=20), seed=0)
    assert len(data.train) == 15 and len(data.dev) == 20
    assert {e.label for e in data.train} == set(range(15)) == {e.label for e in data.dev}
    report = data.report.to_dict()
    assert (report["train_before_cap"], report["dev_before_cap"], report["train"], report["dev"]) == (
        30,
        30,
        15,
        20,
    )
    assert "capped from 30/30" in data.report.summary()


def test_data_seed_fixes_the_sample_across_run_seeds(fixture_root: Path) -> None:
    """data.seed: the seeded split (ocemotion, stratified_fraction) and the caps stop following the run's seed."""

    def sample(task: str, run_seed: int, **overrides: Any) -> tuple[list[str], list[str]]:
        name, cfg = task_cfg(task)
        caps = {"max_train_per_task": 15, "max_dev_per_task": 6, **overrides}
        data = load_task(name, cfg, data_cfg(fixture_root, **caps), seed=run_seed)
        return [e.id for e in data.train], [e.id for e in data.dev]

    for task in ("ocemotion", "tnews"):
        # unset: the run's seed draws the sample, so two run seeds see different rows
        assert sample(task, 0) != sample(task, 1)
        assert sample(task, 3) == sample(task, 3)
        # fixed: every run seed sees the rows the run seed of the same value would have drawn
        assert sample(task, 0, seed=7) == sample(task, 1, seed=7) == sample(task, 7)


def test_test_sets_are_read_and_normalised(fixture_root: Path) -> None:
    name, cfg = task_cfg("ocnli")
    tests = load_test_sets(name, cfg, data_cfg(fixture_root))
    assert set(tests) == {"a", "b"}
    assert tests["b"][0].id == "1500" and all(e.label is None for e in tests["b"])
    assert all(len(e.texts) == 2 for e in tests["a"])
    assert not any(ch in t for e in tests["a"] for t in e.texts for ch in "，？！")


def test_bad_rows_follow_on_bad_row(tmp_path: Path) -> None:
    root = write_fixture_data(tmp_path, rows_per_task=30)
    path = root / "tianchi" / "TNEWS_train1128.csv"
    with path.open("ab") as f:
        f.write("99999\t这行的标签不存在\t105\r\n".encode())
    name, cfg = task_cfg("tnews")
    with pytest.raises(BadRowError, match=r"TNEWS_train1128.csv, line 31: label '105' not in"):
        load_task(name, cfg, data_cfg(root), seed=0)
    data = load_task(name, cfg, data_cfg(root, on_bad_row="skip"), seed=0)
    report = data.report.to_dict()
    assert report["read"] == 31 and sum(report["skipped"].values()) == 1
    assert report["train"] + report["dev"] == 30
    assert "line 31" in report["sources"][0]["skipped_excerpts"][0]


def test_missing_file_names_root_and_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, cfg = task_cfg("ocnli")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        load_task(name, cfg, {"root": "data"}, seed=0)
    message = str(info.value)
    assert str(tmp_path / "data" / "tianchi" / "OCNLI_train1128.csv") in message
    assert "data.root='data' (MTL_DATA_DIR unset)" in message
    assert "Tianchi" in message and "../shared/data/raw" in message
    monkeypatch.setenv("MTL_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="MTL_DATA_DIR="):
        load_task(name, cfg, {"root": "data"}, seed=0)


def test_config_errors(fixture_root: Path) -> None:
    name, cfg = task_cfg("ocnli")
    plain: dict[str, Any] = OmegaConf.to_container(cfg)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="unknown split method 'random'"):
        load_task(name, {**plain, "split": {"method": "random"}}, {"root": str(fixture_root)})
    with pytest.raises(ValueError, match="label_names"):
        load_task(name, {**plain, "label_names": ["a"]}, {"root": str(fixture_root)})
    with pytest.raises(KeyError, match="unknown reader 'csv'"):
        load_task(name, {**plain, "reader": "csv"}, {"root": str(fixture_root)})


# --- data root ---------------------------------------------------------------------------------------------


def test_resolve_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root({}) == tmp_path / "data"
    assert resolve_data_root({"root": "raw"}) == tmp_path / "raw"
    assert resolve_data_root(OmegaConf.create({"root": str(tmp_path / "abs")})) == tmp_path / "abs"
    monkeypatch.setenv("MTL_DATA_DIR", "../shared")
    assert resolve_data_root({"root": "raw"}) == (tmp_path / "../shared").resolve()


def test_hf_dataset_task_through_load_task(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    splits = {
        "train": {
            "sentence": ["好看的电影", "股票大涨", "明星演唱", "股市下跌"],
            "label": ["102", "104", "102", "104"],
        },
        "validation": {"sentence": ["新电影", "基金"], "label": ["102", "104"]},
    }
    seen: list[str | None] = []

    def load_dataset(
        path: str, name: str | None = None, split: str | None = None, revision: str | None = None
    ):
        seen.append(split)
        return datasets.Dataset.from_dict(splits[str(split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = {
        "reader": "hf_dataset",
        "hf": {"path": "someone/tnews", "train_split": "train", "dev_split": "validation"},
        "text_columns": ["sentence"],
        "label_column": "label",
        "id_column": None,
        "labels": ["102", "104"],
        "split": {"method": "files"},
    }
    data = load_task("tnews", cfg, {"root": "unused"}, seed=0)
    assert seen == ["train", "validation"]
    assert [(e.id, e.label) for e in data.dev] == [("dev:0", 0), ("dev:1", 1)]
    assert len(data.train) == 4 and data.report.rows == 6

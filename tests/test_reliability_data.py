"""Data mistakes end in one clear message naming the task, file, line or label ("never mislead", item 7):
dev-only labels, NUL-only texts, empty files, fully skipped tasks, files in GBK, directories for files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mtl.data.loading import load_task, load_test_sets
from mtl.data.readers import (
    BadRowError,
    FileEncodingError,
    NotAFileError,
    ReadSpec,
    read_clue_json,
    read_tianchi_tsv,
)

EMOTIONS = ["sadness", "happiness", "disgust"]


def write_rows(path: Path, rows: list[list[str]], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join("\t".join(r) + "\r\n" for r in rows).encode(encoding))
    return path


def emotion_task(train_file: str = "emo.csv", **extra: object) -> dict:
    return {
        "reader": "tianchi_tsv", "train_file": train_file, "columns": ["id", "sentence", "label"],
        "text_columns": ["sentence"], "labels": EMOTIONS, "split": {"method": "stratified_fraction"}, **extra,
    }


def nli_task(**extra: object) -> dict:
    return {
        "reader": "tianchi_tsv", "train_file": "nli.csv", "columns": ["id", "s1", "s2", "label"],
        "text_columns": ["s1", "s2"], "labels": ["0", "1", "2"],
        "split": {"method": "id_at_least", "threshold": 100}, **extra,
    }


def data_cfg(root: Path, **extra: object) -> dict:
    return {"root": str(root), "normalize": True, **extra}


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTL_DATA_DIR", raising=False)


def spec(path: Path, on_bad_row: str = "error") -> ReadSpec:
    return ReadSpec(source=str(path), path=path, columns=("id", "sentence", "label"), text_columns=("sentence",),
                    labels=tuple(EMOTIONS), on_bad_row=on_bad_row)  # type: ignore[arg-type]


# --- a label in dev but never in train -------------------------------------------------------------------

def test_label_only_in_dev_is_a_warning_naming_task_and_label(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [[str(i), f"句子 {i}", "0"] for i in range(6)] + [[str(100 + i), f"开发 {i}", "0"] for i in range(3)]
    rows.append(["103", "只在开发集", "2"])  # label "2" occurs only among ids >= 100 (dev)
    write_rows(tmp_path / "nli.csv", [[r[0], r[1], "乙", r[2]] for r in rows])
    with caplog.at_level(logging.WARNING, logger="mtl.data.loading"):
        td = load_task("mynli", nli_task(), data_cfg(tmp_path))
    assert {e.label for e in td.dev} == {0, 2}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'mynli'" in w and "'2'" in w and "dev but never in train" in w for w in warnings), warnings


def test_no_warning_when_every_dev_label_is_in_train(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [[str(i), f"句子 {i}", "乙", str(i % 3)] for i in range(6)] + [["100", "开发", "乙", "1"]]
    write_rows(tmp_path / "nli.csv", rows)
    with caplog.at_level(logging.WARNING, logger="mtl.data.loading"):
        load_task("mynli", nli_task(), data_cfg(tmp_path))
    assert not [r for r in caplog.records if "never in train" in r.getMessage()]


# --- NUL bytes -------------------------------------------------------------------------------------------

def test_text_of_only_nul_bytes_is_an_empty_text(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "emo.csv", [["0", "好", "sadness"], ["1", "\x00\x00", "happiness"]])
    with pytest.raises(BadRowError) as err:
        read_tianchi_tsv(spec(path))
    assert err.value.line == 2 and "empty text in column 'sentence'" in str(err.value)
    assert "NUL" in str(err.value)
    examples, report = read_tianchi_tsv(spec(path, "skip"))
    assert len(examples) == 1 and report.n_skipped == 1


def test_nul_bytes_inside_texts_are_removed_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_rows(tmp_path / "emo.csv", [["0", "好\x00天气", "sadness"], ["1", "坏", "happiness"]])
    with caplog.at_level(logging.WARNING, logger="mtl.data.readers"):
        examples, report = read_tianchi_tsv(spec(path))
    assert examples[0].texts == ("好天气",) and report.nul_rows == 1
    assert report.to_dict()["nul_rows"] == 1 and "NUL" in report.summary()
    assert any("NUL" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


# --- empty file, everything skipped ---------------------------------------------------------------------

def test_empty_train_file_names_task_and_file(tmp_path: Path) -> None:
    (tmp_path / "emo.csv").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        load_task("myemo", emotion_task(), data_cfg(tmp_path))
    message = str(err.value)
    assert "'myemo'" in message and str(tmp_path / "emo.csv") in message and "empty" in message
    assert "cannot split" not in message


def test_task_whose_rows_were_all_skipped_names_task_file_and_reasons(tmp_path: Path) -> None:
    write_rows(tmp_path / "emo.csv", [["0", "好", "nope"], ["1", "坏", "nope"], ["2", "", "sadness"]])
    with pytest.raises(ValueError) as err:
        load_task("myemo", emotion_task(), data_cfg(tmp_path, on_bad_row="skip"))
    message = str(err.value)
    assert "'myemo'" in message and str(tmp_path / "emo.csv") in message
    assert "all 3 rows" in message and "not in the task's labels" in message and "empty text" in message


def test_empty_test_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "test_a.csv").write_bytes(b"")
    task = emotion_task(test_files={"a": "test_a.csv"}, test_columns=["id", "sentence"])
    with pytest.raises(ValueError, match=r"test a of task 'myemo': no usable examples in .*test_a\.csv"):
        load_test_sets("myemo", task, data_cfg(tmp_path))


def test_too_few_examples_to_split_names_the_task(tmp_path: Path) -> None:
    write_rows(tmp_path / "emo.csv", [["0", "好", "sadness"]])
    with pytest.raises(ValueError, match=r"task 'myemo' \(.*emo\.csv\): cannot split 1 example"):
        load_task("myemo", emotion_task(), data_cfg(tmp_path))


# --- a file in another encoding --------------------------------------------------------------------------

def test_gbk_file_is_one_error_naming_the_file_and_iconv(tmp_path: Path) -> None:
    rows = [[str(i), f"今天的天气{'真好很差一般'[i % 6]}，我们去公园散步", EMOTIONS[i % 3]] for i in range(30)]
    path = write_rows(tmp_path / "emo.csv", rows, encoding="gbk")
    for on_bad_row in ("error", "skip"):  # skipping every row would only hide the real problem
        with pytest.raises(FileEncodingError) as err:
            read_tianchi_tsv(spec(path, on_bad_row))
        message = str(err.value)
        assert str(path) in message and "not UTF-8" in message
        assert "iconv -f gbk -t utf-8" in message
    with pytest.raises(ValueError, match="not UTF-8"):  # through load_task too (mtl-train shows one line)
        load_task("myemo", emotion_task(), data_cfg(tmp_path, on_bad_row="skip"))


def test_a_few_bad_bytes_in_a_utf8_file_stay_row_errors_under_one_counter(tmp_path: Path) -> None:
    good = "".join(f"{i}\t好天气 {i}\tsadness\r\n" for i in range(10)).encode()
    path = tmp_path / "emo.csv"
    path.write_bytes(good + b"10\t\xff bad\tsadness\r\n11\tok \xfe x\tsadness\r\n")
    examples, report = read_tianchi_tsv(spec(path, "skip"))
    assert len(examples) == 10 and report.skipped == {"not valid UTF-8": 2}


def test_gbk_clue_json_file_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    lines = [f'{{"sentence": "今天的天气真好{i}", "label": "sadness", "id": {i}}}' for i in range(5)]
    path.write_bytes("\n".join(lines).encode("gbk"))
    clue = ReadSpec(source=str(path), path=path, text_columns=("sentence",), labels=tuple(EMOTIONS))
    with pytest.raises(FileEncodingError, match="iconv -f gbk -t utf-8"):
        read_clue_json(clue)


# --- a directory where a file should be ------------------------------------------------------------------

def test_directory_instead_of_file_says_directory(tmp_path: Path) -> None:
    (tmp_path / "emo.csv").mkdir()
    with pytest.raises(NotAFileError) as err:
        read_tianchi_tsv(spec(tmp_path / "emo.csv"))
    assert "is a directory" in str(err.value) and "not found" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="is a directory"):  # still a FileNotFoundError for callers
        load_task("myemo", emotion_task(), data_cfg(tmp_path))
    # a path that really is missing keeps its message
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_tianchi_tsv(spec(tmp_path / "missing.csv"))

"""Readers on small files written by the tests: quoting trap, CRLF, bad rows, skip counting, CLUE '-' labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtl.data.readers import (
    BadRowError,
    DataSourceError,
    Example,
    ReadReport,
    ReadSpec,
    get_reader,
    read_clue_json,
    read_hf_dataset,
    read_tianchi_tsv,
    read_unlabelled_tsv,
    reader_names,
    register_reader,
)

OCNLI_COLUMNS = ("id", "sentence1", "sentence2", "label")


def write_bytes(path: Path, lines: list[str], newline: str = "\r\n") -> Path:
    path.write_bytes("".join(line + newline for line in lines).encode("utf-8"))
    return path


def ocnli_spec(path: Path, on_bad_row: str = "error") -> ReadSpec:
    return ReadSpec(
        source=str(path),
        path=path,
        columns=OCNLI_COLUMNS,
        text_columns=("sentence1", "sentence2"),
        labels=("0", "1", "2"),
        on_bad_row=on_bad_row,  # type: ignore[arg-type]
    )


def emotion_spec(path: Path, on_bad_row: str = "error") -> ReadSpec:
    return ReadSpec(
        source=str(path),
        path=path,
        columns=("id", "sentence", "label"),
        text_columns=("sentence",),
        labels=("sadness", "happiness"),
        on_bad_row=on_bad_row,  # type: ignore[arg-type]
    )


def test_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtl.data import readers

    monkeypatch.setattr(readers, "_READERS", dict(readers._READERS))  # keep the test's reader local
    assert {"tianchi_tsv", "clue_json", "hf_dataset"} <= set(reader_names())
    assert get_reader("tianchi_tsv") is read_tianchi_tsv
    with pytest.raises(KeyError, match="registered readers: .*clue_json"):
        get_reader("nope")

    @register_reader("test_constant_reader")
    def constant(spec: ReadSpec) -> tuple[list[Example], ReadReport]:
        return [Example("0", ("x",), 0, 1)], ReadReport(source=spec.source, rows=1, kept=1)

    assert get_reader("test_constant_reader") is constant
    with pytest.raises(ValueError, match="already registered"):
        register_reader("test_constant_reader")(read_clue_json)


def test_tsv_crlf_and_quotes_do_not_merge_rows(tmp_path: Path) -> None:
    # An unbalanced `"` would make a CSV reader swallow the following rows into one field.
    path = write_bytes(
        tmp_path / "OCNLI.csv",
        [
            '0\t他说"你好\t他打了招呼\t0',
            "1\t第二行\t没有引号\t1",
            '2\t"整句引号"\t结尾引号"\t2',
            "3\t最后一行\t普通\t0",
        ],
    )
    examples, report = read_tianchi_tsv(ocnli_spec(path))
    assert [e.id for e in examples] == ["0", "1", "2", "3"]
    assert examples[0].texts == ('他说"你好', "他打了招呼")
    assert examples[2].texts == ('"整句引号"', '结尾引号"')
    assert [e.label for e in examples] == [0, 1, 2, 0]  # "0\r" would not be a valid label: \r was stripped
    assert [e.line for e in examples] == [1, 2, 3, 4]
    assert not any("\r" in t for e in examples for t in e.texts)
    assert (report.rows, report.kept, report.n_skipped, report.unlabelled) == (4, 4, 0, 0)


def test_tsv_lf_endings_and_no_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes("0\t开心\thappiness\n1\t难过\tsadness".encode())
    examples, _ = read_tianchi_tsv(emotion_spec(path))
    assert [(e.id, e.texts, e.label) for e in examples] == [("0", ("开心",), 1), ("1", ("难过",), 0)]


def test_tsv_lone_cr_and_unicode_separators_stay_inside_a_field(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "e.csv", ["0\ta\rb\u2028c\x85d\thappiness", "1\tx\tsadness"])
    examples, _ = read_tianchi_tsv(emotion_spec(path))
    assert len(examples) == 2
    assert examples[0].texts == ("a\rb\u2028c\x85d",)


BAD_ROWS = [
    ("0\tonly two\tcolumns", "expected 4 tab-separated columns"),
    ("0\ta\tb\tc\t0", "found 5"),
    ("0\t \tb\t0", "empty text in column 'sentence1'"),
    ("0\ta\t\t0", "empty text in column 'sentence2'"),
    ("0\ta\tb\t7", "label '7' not in the task's labels"),
    ("0\ta\tb\tentailment", "label 'entailment' not in"),
    ("", "blank line"),
    ("\ta\tb\t0", "empty id"),
]


@pytest.mark.parametrize(("bad_line", "reason"), BAD_ROWS)
def test_tsv_bad_rows_raise_with_file_line_reason_excerpt(tmp_path: Path, bad_line: str, reason: str) -> None:
    path = write_bytes(
        tmp_path / "OCNLI_train1128.csv", ["10\t好的\t可以\t0", "11\t行\t嗯\t1", bad_line, "12\tx\ty\t2"]
    )
    with pytest.raises(BadRowError) as info:
        read_tianchi_tsv(ocnli_spec(path))
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert reason in message
    assert repr(bad_line) in message  # the excerpt
    assert "on_bad_row=skip" in message
    assert info.value.line == 3


def test_tsv_invalid_utf8_and_duplicate_id(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"0\t\xff\xfe\thappiness\r\n")
    with pytest.raises(BadRowError, match=r"line 1: not valid UTF-8"):
        read_tianchi_tsv(emotion_spec(path))
    path = write_bytes(tmp_path / "dup.csv", ["0\ta\thappiness", "0\tb\tsadness"])
    with pytest.raises(BadRowError, match=r"line 2: duplicate id '0'"):
        read_tianchi_tsv(emotion_spec(path))


def test_tsv_skip_counts_every_bad_row(tmp_path: Path) -> None:
    good = ["0\ta\tb\t0", "1\tc\td\t1"]
    path = write_bytes(tmp_path / "mixed.csv", good + [line for line, _ in BAD_ROWS] + ["99\te\tf\t2"])
    examples, report = read_tianchi_tsv(ocnli_spec(path, on_bad_row="skip"))
    assert [e.id for e in examples] == ["0", "1", "99"]
    assert report.rows == 3 + len(BAD_ROWS)
    assert report.n_skipped == len(BAD_ROWS)
    assert report.rows == report.kept + report.n_skipped + report.unlabelled
    assert sum(n for reason, n in report.skipped.items() if reason.startswith("expected 4")) == 2
    assert report.skipped["blank line"] == 1
    assert len(report.skipped_excerpts) == 5 and report.skipped_excerpts[0].startswith("line 3: expected 4")
    d = report.to_dict()
    assert d["kept"] == 3 and sum(d["skipped"].values()) == len(BAD_ROWS)
    json.dumps(d)  # serialisable for metrics.json


def test_missing_file_message(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "OCNLI_train1128.csv"
    spec = ReadSpec(
        source=str(path),
        path=path,
        columns=OCNLI_COLUMNS,
        text_columns=("sentence1", "sentence2"),
        labels=("0", "1", "2"),
        root_hint="data.root='data' (MTL_DATA_DIR unset)",
    )
    with pytest.raises(FileNotFoundError) as info:
        read_tianchi_tsv(spec)
    message = str(info.value)
    assert str(path.resolve()) in message
    assert "data.root='data' (MTL_DATA_DIR unset)" in message
    assert "Tianchi" in message and "CLUE" in message and "../shared/data/raw" in message


def test_spec_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_bad_row"):
        ReadSpec(source="x", text_columns=("a",), labels=None, on_bad_row="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_map targets"):
        ReadSpec(source="x", text_columns=("a",), labels=("0",), label_map={"yes": "1"})
    path = write_bytes(tmp_path / "f.csv", ["0\ta\t0"])
    spec = ReadSpec(
        source="x", path=path, columns=("id", "text", "label"), text_columns=("sentence",), labels=("0",)
    )
    with pytest.raises(ValueError, match=r"columns \['sentence'\] are not among"):
        read_tianchi_tsv(spec)


def test_unlabelled_tsv(tmp_path: Path) -> None:
    path = write_bytes(
        tmp_path / "ocnli_test_B.csv", ['1500\t前提"\t假设', "1501\t前提二\t假设二"], newline="\n"
    )
    examples, report = read_unlabelled_tsv(path, ["id", "sentence1", "sentence2"], ["sentence1", "sentence2"])
    assert [(e.id, e.label) for e in examples] == [("1500", None), ("1501", None)]
    assert examples[0].texts == ('前提"', "假设")
    assert report.kept == 2
    with pytest.raises(BadRowError, match="line 1"):
        write_bytes(path, ["1500\tonly one"])
        read_unlabelled_tsv(path, ["id", "sentence1", "sentence2"], ["sentence1", "sentence2"])


def clue_spec(path: Path, on_bad_row: str = "error", id_column: str | None = "id") -> ReadSpec:
    return ReadSpec(
        source=str(path),
        path=path,
        text_columns=("sentence1", "sentence2"),
        labels=("0", "1", "2"),
        id_column=id_column,
        label_map={"entailment": "0", "neutral": "1", "contradiction": "2"},
        on_bad_row=on_bad_row,  # type: ignore[arg-type]
    )


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_clue_json_labels_and_unlabelled_dash(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "dev.json",
        [
            {"sentence1": "甲", "sentence2": "乙", "label": "entailment", "id": 0},
            {"sentence1": "丙", "sentence2": "丁", "label": "-", "id": 1},
            {"sentence1": '说"', "sentence2": "戊", "label": "contradiction", "id": 2},
            {"sentence1": "己", "sentence2": "庚", "label": "neutral", "id": 3},
            {"sentence1": "辛", "sentence2": "壬", "label": "-", "id": 4},
        ],
    )
    examples, report = read_clue_json(clue_spec(path))
    assert [(e.id, e.label, e.line) for e in examples] == [("0", 0, 1), ("2", 2, 3), ("3", 1, 4)]
    assert examples[1].texts == ('说"', "戊")
    assert report.unlabelled == 2
    assert report.n_skipped == 0  # expected data, not bad rows
    assert report.rows == 5 == report.kept + report.unlabelled
    assert "2 unlabelled" in report.summary()


def test_clue_json_without_id_uses_row_number(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "train.json", [{"sentence": "体育", "label": "103"}, {"sentence": "财经", "label": 104}]
    )
    spec = ReadSpec(
        source=str(path), path=path, text_columns=("sentence",), labels=("103", "104"), id_column=None
    )
    examples, _ = read_clue_json(spec)
    assert [(e.id, e.label) for e in examples] == [("0", 0), ("1", 1)]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"sentence1": "a", "sentence2": "b", "label": "entailment"', "invalid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"sentence1": "a", "label": "neutral", "id": 9}', "missing field(s) ['sentence2']"),
        ('{"sentence1": "a", "sentence2": "b", "label": "maybe", "id": 9}', "label 'maybe' not in"),
        ('{"sentence1": "a", "sentence2": "", "label": "neutral", "id": 9}', "empty text"),
        ('{"sentence1": "a", "sentence2": 5, "label": "neutral", "id": 9}', "is not a string"),
    ],
)
def test_clue_json_bad_rows(tmp_path: Path, line: str, reason: str) -> None:
    ok = '{"sentence1": "x", "sentence2": "y", "label": "neutral", "id": 0}'
    path = tmp_path / "train.50k.json"
    path.write_text(ok + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(BadRowError) as info:
        read_clue_json(clue_spec(path))
    assert f"{path}, line 2: " in str(info.value) and reason in str(info.value)
    examples, report = read_clue_json(clue_spec(path, on_bad_row="skip"))
    assert len(examples) == 1 and report.n_skipped == 1 and report.rows == 2



@pytest.mark.parametrize("reader", ["tianchi_tsv", "clue_json"])
@pytest.mark.parametrize(
    ("raw", "reason", "value"),
    [(b"   ", "blank line", "'   '"), (b"\xff\xfe", "not valid UTF-8", "'\ufffd\ufffd'")],
)
def test_line_readers_share_blank_and_undecodable_line_handling(
    tmp_path: Path, reader: str, raw: bytes, reason: str, value: str
) -> None:
    """Both line-based readers count every line and report blank/undecodable ones alike."""
    if reader == "tianchi_tsv":
        good, make_spec = ["0\ta\tb\t0", "1\tc\td\t1"], ocnli_spec
    else:
        good = [json.dumps({"sentence1": s, "sentence2": "y", "label": "neutral", "id": i}) for i, s in enumerate("ac")]
        make_spec = clue_spec
    path = tmp_path / "rows.txt"
    path.write_bytes(good[0].encode() + b"\n" + raw + b"\n" + good[1].encode() + b"\n")
    with pytest.raises(BadRowError) as info:
        get_reader(reader)(make_spec(path))
    assert f"{path}, line 2: {reason}" in str(info.value) and value in str(info.value)
    examples, report = get_reader(reader)(make_spec(path, on_bad_row="skip"))
    assert [e.line for e in examples] == [1, 3]
    assert report.rows == 3 and report.kept == 2 and report.n_skipped == 1
    assert [k for k in report.skipped if k.startswith(reason)] and report.skipped_excerpts[0].startswith("line 2: ")

def test_hf_dataset_reader_maps_fields_and_class_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
        }
    )
    fake = datasets.Dataset.from_dict(
        {"premise": ["p1", "p2", "p3"], "hypothesis": ["h1", "h2", "h3"], "label": [2, -1, 0]},
        features=features,
    )
    calls: list[tuple[object, ...]] = []

    def load_dataset(
        path: str, name: str | None = None, split: str | None = None, revision: str | None = None
    ):
        calls.append((path, name, split))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    spec = ReadSpec(
        source="clue/ocnli:validation",
        text_columns=("premise", "hypothesis"),
        labels=("0", "1", "2"),
        id_column=None,
        label_map={"entailment": "0", "neutral": "1", "contradiction": "2"},
        options={"path": "clue", "name": "ocnli", "split": "validation"},
    )
    examples, report = read_hf_dataset(spec)
    assert calls == [("clue", "ocnli", "validation")]
    assert [(e.id, e.texts, e.label) for e in examples] == [("0", ("p1", "h1"), 2), ("2", ("p3", "h3"), 0)]
    assert report.unlabelled == 1


def test_hf_dataset_offline_error_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'clue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    spec = ReadSpec(
        source="clue/tnews", text_columns=("sentence",), labels=("100",), options={"path": "clue"}
    )
    with pytest.raises(DataSourceError) as info:
        read_hf_dataset(spec)
    message = str(info.value)
    assert "'clue'" in message and "ConnectionError" in message and "hub access" in message
    assert "tianchi_tsv" in message

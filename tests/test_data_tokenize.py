"""Tokenisation to arrow with a content-hashed cache file, and dynamic padding."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import pytest
import torch

from mtl.data.loading import collate, examples_fingerprint, tokenize_examples
from mtl.data.readers import Example
from mtl.models.encoder import tiny_tokenizer


def other_tokenizer(*, extra_token: str = "", name: str = ""):
    """The library's character-level tiny tokenizer, with one more vocabulary entry and/or another name."""
    tok = tiny_tokenizer()
    if extra_token:
        tok.add_tokens([extra_token])
    if name:
        tok.name_or_path = name
    return tok


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


PAIRS = [
    Example("0", ("开心快乐", "肯定确实"), 0, 1),
    Example("1", ("伤心难过的一天", "也许可能"), 1, 2),
    Example("2", ("abc", "绝对没有这回事情的"), None, 3),
]
SINGLES = [Example("7", ("开心",), 2, 1), Example("8", ("伤心难过伤心难过",), 0, 2)]


def test_pairs_are_tokenised_as_pairs(tokenizer, tmp_path: Path) -> None:
    ds = tokenize_examples(PAIRS, tokenizer, max_length=64, cache_dir=tmp_path)
    assert set(ds.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels", "length"}
    assert ds["labels"] == [0, 1, -1]
    row = ds[0]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert row["input_ids"][0] == cls and row["input_ids"].count(sep) == 2
    assert row["token_type_ids"] == [0] * 6 + [1] * 5  # [CLS] 4 chars [SEP] | 4 chars [SEP]
    assert ds["length"] == [len(ids) for ids in ds["input_ids"]] == [11, 14, 15]
    assert tokenizer.pad_token_id not in row["input_ids"]  # no padding here


def test_truncation_and_single_texts(tokenizer, tmp_path: Path) -> None:
    ds = tokenize_examples(PAIRS, tokenizer, max_length=8, cache_dir=tmp_path)
    assert max(ds["length"]) == 8
    single = tokenize_examples(SINGLES, tokenizer, max_length=64, cache_dir=tmp_path)
    assert single["length"] == [4, 10] and set(single["token_type_ids"][1]) == {0}


def test_cache_reuse(
    tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mtl.data.loading")
    first = tokenize_examples(PAIRS, tokenizer, 32, tmp_path, fingerprint_parts=["normalize=True"])
    assert "tokenising 3 examples" in caplog.text
    files = [Path(f["filename"]) for f in first.cache_files]
    assert len(files) == 1 and files[0].parent == tmp_path and files[0].name.startswith("tok-")

    def no_map(*args: object, **kwargs: object) -> None:
        raise AssertionError("map was called although the cache file exists")

    caplog.clear()
    monkeypatch.setattr(datasets.Dataset, "map", no_map)
    second = tokenize_examples(PAIRS, tokenizer, 32, tmp_path, fingerprint_parts=["normalize=True"])
    assert "reusing cached tokenisation" in caplog.text
    assert [Path(f["filename"]) for f in second.cache_files] == files
    assert second.to_dict() == first.to_dict()
    monkeypatch.undo()

    # anything that changes the output changes the file name
    names = {files[0].name}
    for args, parts in [
        ((PAIRS, tokenizer, 16), ["normalize=True"]),
        ((PAIRS, tokenizer, 32), ["normalize=False"]),
        ((PAIRS[:2], tokenizer, 32), ["normalize=True"]),
        ((PAIRS, other_tokenizer(extra_token="[NEW]"), 32), ["normalize=True"]),
        ((PAIRS, other_tokenizer(name="other/name"), 32), ["normalize=True"]),
    ]:
        ds = tokenize_examples(*args, cache_dir=tmp_path, fingerprint_parts=parts)  # type: ignore[misc]
        names.add(Path(ds.cache_files[0]["filename"]).name)
    assert len(names) == 6


def test_corrupt_cache_file_is_rebuilt(tokenizer, tmp_path: Path) -> None:
    first = tokenize_examples(SINGLES, tokenizer, 32, tmp_path)
    path = Path(first.cache_files[0]["filename"])
    del first
    path.write_bytes(b"not arrow")
    again = tokenize_examples(SINGLES, tokenizer, 32, tmp_path)
    assert again["length"] == [4, 10]


def test_no_cache_dir_stays_in_memory(tokenizer) -> None:
    ds = tokenize_examples(SINGLES, tokenizer, 32, cache_dir=None)
    assert ds.cache_files == [] and len(ds) == 2


def test_fingerprint_tracks_content() -> None:
    assert examples_fingerprint(PAIRS) == examples_fingerprint(list(PAIRS))
    changed = [PAIRS[0], Example("1", ("伤心难过的一天", "也许可能"), 2, 2), PAIRS[2]]
    assert examples_fingerprint(PAIRS) != examples_fingerprint(changed)


def test_collate_pads_to_longest(tokenizer, tmp_path: Path) -> None:
    ds = tokenize_examples(PAIRS, tokenizer, 64, tmp_path)
    batch = collate(tokenizer)([ds[0], ds[1], ds[2]])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape == (3, 15) and batch["input_ids"].dtype == torch.long
    assert batch["labels"].tolist() == [0, 1, -1]
    assert batch["attention_mask"].sum(1).tolist() == [11, 14, 15]
    assert batch["input_ids"][0, 11:].eq(tokenizer.pad_token_id).all()
    # torch-formatted rows work too
    torch_rows = ds.with_format("torch")
    again = collate(tokenizer)([torch_rows[0], torch_rows[1]])
    assert again["input_ids"].shape == (2, 14) and torch.equal(
        again["input_ids"], batch["input_ids"][:2, :14]
    )


def test_works_with_transformers_collator(tokenizer, tmp_path: Path) -> None:
    from transformers import DataCollatorWithPadding

    ds = tokenize_examples(PAIRS, tokenizer, 64, tmp_path).remove_columns("length").with_format("torch")
    batch = DataCollatorWithPadding(tokenizer)([ds[i] for i in range(3)])
    assert batch["input_ids"].shape == (3, 15)
    assert batch["labels"].tolist() == [0, 1, -1]


def test_tokenizer_fingerprint_ignores_and_keeps_the_call_state() -> None:
    # a truncating, padding call leaves its settings on the backend: the fingerprint (a cache key) must not
    # change with them, and taking it must leave them as they were for the next call
    from mtl.data.loading import _tokenizer_fingerprint

    tok = tiny_tokenizer()
    before = _tokenizer_fingerprint(tok)
    tok(["a b c d e f", "a"], truncation=True, max_length=4, padding=True)
    backend = tok.backend_tokenizer
    state = (backend.truncation, backend.padding)
    assert state[0] is not None and state[1] is not None
    assert _tokenizer_fingerprint(tok) == before
    assert (backend.truncation, backend.padding) == state
    other = tiny_tokenizer()
    other.add_tokens(["zzz"])
    assert _tokenizer_fingerprint(other)[-1] != before[-1]

"""Shape bucketing, length-sorted evaluation, and progress lines off a terminal."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from mtl.data.batching import LengthSortedSampler
from mtl.data.loading import collate, collate_for, padded_length
from mtl.training.build import build_dev_loaders
from tests.toy_trainer import TASKS, single_thread, toy_rows, toy_trainer

TOK = SimpleNamespace(pad_token_id=0, padding_side="right")


@pytest.fixture(autouse=True)
def _single_thread():
    yield from single_thread()


@pytest.mark.parametrize(
    ("longest", "buckets", "multiple", "expected"),
    [
        (5, None, None, 5),
        (5, None, 8, 8),
        (8, None, 8, 8),
        (9, None, 8, 16),
        (5, [16, 32, 64], None, 16),
        (16, [16, 32, 64], None, 16),
        (17, [64, 16, 32], None, 32),  # unsorted ladder
        (70, [16, 32, 64], None, 70),  # beyond the ladder: the longest row
        (70, [16, 32, 64], 16, 80),  # ... rounded up to the multiple when one is given too
        (1, [1], None, 1),
    ],
)
def test_padded_length(longest: int, buckets, multiple, expected: int) -> None:
    assert padded_length(longest, buckets, multiple) == expected


def test_collate_pads_to_the_bucket_with_masked_padding() -> None:
    rows = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": 1},
            {"input_ids": [5], "attention_mask": [1], "labels": 0}]
    batch = collate(TOK, buckets=[4, 8])(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [5, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert collate(TOK, pad_to_multiple_of=8)(rows)["input_ids"].shape == (2, 8)
    data = OmegaConf.create({"length_buckets": [6], "pad_to_multiple_of": None})
    assert collate_for(data, TOK)(rows)["input_ids"].shape == (2, 6)
    with pytest.raises(ValueError, match="data.length_buckets"):
        collate(TOK, buckets=[0, 8])


def test_bucketed_padding_leaves_the_model_output_unchanged() -> None:
    tr = toy_trainer("unused", dropout=0.0)
    tr.model.eval()
    rows = toy_rows(6, 3, seed=0)
    plain, padded = collate(TOK)(rows), collate(TOK, buckets=[32])(rows)
    assert padded["input_ids"].shape[1] == 32 > plain["input_ids"].shape[1]
    with torch.no_grad():
        torch.testing.assert_close(tr.model("a", plain), tr.model("a", padded), rtol=1e-5, atol=1e-6)


def test_length_sorted_sampler_visits_longest_first_and_every_row_once() -> None:
    s = LengthSortedSampler([3, 9, 1, 9, 4])
    assert s.order == [1, 3, 4, 0, 2] and list(s) == s.order and len(s) == 5


def test_sorted_evaluation_returns_predictions_in_the_dataset_order(tmp_path) -> None:
    tr = toy_trainer(tmp_path)
    coll = collate(TOK)
    plain, ordered = {}, {}
    for i, (t, n) in enumerate(TASKS.items()):
        rows = toy_rows(37, n, seed=70 + i)
        for r in rows:
            r["length"] = len(r["input_ids"])
        plain[t] = DataLoader(rows, batch_size=8, shuffle=False, collate_fn=coll)
        ordered[t] = DataLoader(rows, batch_size=8, sampler=LengthSortedSampler([r["length"] for r in rows]),
                                collate_fn=coll)
    a = tr.evaluate(plain, keep_predictions=True)
    b = tr.evaluate(ordered, keep_predictions=True)
    assert a.predictions == b.predictions and a.labels == b.labels
    for t in TASKS:
        assert b.labels[t] == [r["labels"] for r in plain[t].dataset]
        assert a.scores[t].macro_f1 == b.scores[t].macro_f1
        assert a.scores[t].loss == pytest.approx(b.scores[t].loss, rel=1e-5)


def test_run_dev_loaders_sort_by_length() -> None:
    rows = [{"input_ids": [1] * k, "attention_mask": [1] * k, "labels": 0, "length": k} for k in (2, 7, 4)]
    data = OmegaConf.create({"eval_batch_size": 2, "length_buckets": None, "pad_to_multiple_of": None})
    loader = build_dev_loaders(data, {"a": _Rows(rows)}, TOK)["a"]
    assert loader.sampler.order == [1, 2, 0]
    assert [b["input_ids"].shape[1] for b in loader] == [7, 2]


class _Rows(list):
    """A list of rows that also answers ``ds["length"]`` like a ``datasets.Dataset`` column."""

    def __getitem__(self, key):
        if key == "length":
            return [r["length"] for r in self]
        return super().__getitem__(key)


def test_progress_lines_when_output_is_not_a_terminal(tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    tr = toy_trainer(tmp_path, max_steps=4, eval_every=4, log_every=2, progress=True)
    with caplog.at_level(logging.INFO, logger="mtl.training.trainer"):
        tr.fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ") and "ETA" in r.getMessage()]
    assert [ln.split()[1] for ln in lines] == ["1/4", "2/4", "4/4"]
    assert all("samples/s" in ln and "loss" in ln for ln in lines)


# --- token-budget batches (data.max_tokens) ----------------------------------------------------------------


def test_token_budget_batches_hold_the_budget_and_cover_every_row_once() -> None:
    from mtl.data.batching import TaskBatchSampler

    rng = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 60, (500,), generator=rng).tolist()
    lengths[7] = 400  # longer than the budget: a batch of its own
    s = TaskBatchSampler(len(lengths), 32, seed=3, lengths=lengths, max_tokens=256)
    batches = s._make(0)
    assert sorted(i for b in batches for i in b) == list(range(500))  # one pass: every row once
    for b in batches:
        assert len(b) <= 32
        assert len(b) * max(lengths[i] for i in b) <= 256 or len(b) == 1
    assert [7] in batches
    sizes = {len(b) for b in batches}
    assert len(sizes) > 3  # rows per batch vary with the lengths: ~constant tokens instead
    again = TaskBatchSampler(len(lengths), 32, seed=3, lengths=lengths, max_tokens=256)
    assert again._make(0) == batches and again._make(1) != batches  # seeded per pass
    assert s.batches_per_pass() == len(batches)


def test_token_budget_needs_lengths_and_a_positive_budget() -> None:
    from mtl.data.batching import TaskBatchSampler

    with pytest.raises(ValueError, match="data.max_tokens"):
        TaskBatchSampler(10, 4, seed=0, max_tokens=64)
    with pytest.raises(ValueError, match="data.max_tokens"):
        TaskBatchSampler(10, 4, seed=0, lengths=[5] * 10, max_tokens=0)


def test_token_budget_run_trains(fixture_data_root, tmp_path, monkeypatch) -> None:
    """Streams built from data.max_tokens hold the budget (resumed copies included), and a run trains on them."""
    from mtl.training.build import build_data, build_encoder, build_streams
    from mtl.training.run import run
    from tests.helpers import tiny_run_cfg, tiny_run_env

    gen = tiny_run_env(monkeypatch, plots=False, one_thread=True)
    next(gen)
    cfg = tiny_run_cfg(fixture_data_root, "data.max_tokens=64", "data.batch_size=16", "trainer.max_steps=3",
                       "trainer.eval_every=3")
    encoder, tok = build_encoder(cfg.encoder)
    data = build_data(cfg, tok)
    streams = build_streams(cfg.data, data.train, tok, seed=0)
    for stream in streams.values():
        for _ in range(3):
            rows, width = stream.next()["input_ids"].shape
            assert rows * width <= 64 or rows == 1
    metrics = run(cfg, tmp_path / "run")
    assert metrics["steps"] == 3 and metrics["nonfinite_steps_skipped"] == 0

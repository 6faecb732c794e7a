"""Vocabulary trimming: same outputs for the data's tokens, unseen ids to <unk>, checkpoints round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mtl.data.loading import collate, load_task, tokenize_examples
from mtl.models.encoder import tiny_random_encoder
from mtl.models.multitask import MultiTaskModel
from mtl.models.vocab_trim import RemappedEmbedding, restore_trimmed_embeddings, token_ids_in, trim_vocabulary
from mtl.training import checkpoint as ckpt
from mtl.training import run as run_mod
from mtl.training.run import run
from tests.helpers import compose_train, tiny_run_env


@pytest.fixture(autouse=True)
def _tiny_runs(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch, plots=False, one_thread=True)


def test_remapped_embedding_maps_kept_ids_to_their_rows_and_others_to_unk() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(20, 4, padding_idx=0)
    emb.weight.requires_grad_(False)
    small = RemappedEmbedding.from_embedding(emb, keep_ids=[0, 3, 7, 11], unk_id=1)
    assert small.num_embeddings == 5 and small.original_num_embeddings == 20
    assert not small.weight.requires_grad  # freezing survives trimming
    assert small.padding_idx == 0
    ids = torch.tensor([[0, 3, 7, 11, 1]])
    torch.testing.assert_close(small(ids), emb(ids))
    unseen = torch.tensor([[2, 5, 19]])
    torch.testing.assert_close(small(unseen), emb(torch.tensor([[1, 1, 1]])))


def fixture_sets(root: Path, tokenizer):
    cfg = compose_train("encoder=tiny_random", f"data.root={root}")
    out = []
    for task in ("ocnli", "tnews"):
        td = load_task(task, cfg.tasks[task], cfg.data)
        out.append(tokenize_examples(td.train, tokenizer, 64))
        out.append(tokenize_examples(td.dev, tokenizer, 64))
    return out


def test_trimmed_encoder_gives_the_same_outputs_on_the_data(fixture_data_root: Path) -> None:
    enc, tok = tiny_random_encoder()
    ref, _ = tiny_random_encoder()
    sets = fixture_sets(fixture_data_root, tok)
    report = trim_vocabulary(enc, tok, sets)
    kept = token_ids_in(sets)
    assert report.kept_rows <= len(kept) + len(tok.all_special_ids) and report.kept_rows < report.original_rows / 10
    assert report.parameters_after < report.parameters_before
    batch = collate(tok)([sets[0][i] for i in range(8)])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    enc.eval(), ref.eval()
    torch.testing.assert_close(enc(**inputs).last_hidden_state, ref(**inputs).last_hidden_state)


def test_trimmed_checkpoint_loads_into_a_freshly_built_model(fixture_data_root: Path) -> None:
    enc, tok = tiny_random_encoder()
    sets = fixture_sets(fixture_data_root, tok)
    trim_vocabulary(enc, tok, sets)
    model = MultiTaskModel(enc, {"ocnli": 3}, pooling="mean", dropout=0.0).eval()
    state = model.state_dict()
    assert any(k.endswith("word_embeddings.remap") for k in state)

    fresh_enc, _ = tiny_random_encoder(seed=1)
    fresh = MultiTaskModel(fresh_enc, {"ocnli": 3}, pooling="mean", dropout=0.0).eval()
    with pytest.raises(RuntimeError):  # untrimmed shapes do not fit
        fresh.load_state_dict(state)
    assert restore_trimmed_embeddings(fresh, state) == 1
    fresh.load_state_dict(state)  # strict
    batch = collate(tok)([sets[0][i] for i in range(4)])
    torch.testing.assert_close(fresh("ocnli", batch), model("ocnli", batch))


def test_run_with_trimmed_frozen_vocabulary(fixture_data_root: Path, tmp_path: Path) -> None:
    overrides = [
        "encoder=tiny_random", f"data.root={fixture_data_root}", "data.batch_size=8", "trainer.max_steps=6",
        "trainer.eval_every=6", "trainer.checkpoint_every=3", "trainer.progress=false",
        "encoder.trim_vocab=true", "encoder.freeze_embeddings=true", "optim.lr=3e-3",
    ]
    cfg = compose_train(*overrides)
    captured = {}
    original = run_mod.Trainer.fit

    def spy(self):
        emb = self.model.encoder.get_input_embeddings()
        captured["emb"] = emb
        captured["before"] = emb.weight.detach().clone()
        return original(self)

    run_mod.Trainer.fit = spy
    try:
        run(cfg, tmp_path)
    finally:
        run_mod.Trainer.fit = original
    emb = captured["emb"]
    assert isinstance(emb, RemappedEmbedding) and not emb.weight.requires_grad
    assert emb.num_embeddings < emb.original_num_embeddings / 10
    torch.testing.assert_close(emb.weight, captured["before"], rtol=0, atol=0)  # frozen: unchanged by training
    state = ckpt.load(tmp_path / "checkpoints" / "best.pt")["model"]
    assert state["encoder.embeddings.word_embeddings.weight"].shape[0] == emb.num_embeddings
    # resuming rebuilds the same trimmed model (same data -> same rows), so the full state loads
    again = run(compose_train(*overrides, "trainer.resume=auto"), tmp_path)
    assert again["steps"] == 6

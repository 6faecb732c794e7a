"""Tests for ``load_encoder`` and the encoder configs (no network, no big downloads)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mtl.models import encoder as enc_mod
from mtl.models.encoder import EncoderLoadError, load_encoder

PAIRS = [("一月份跟二月份肯定有一个月份有", "今天天气很好。"), ("你好，世界！", "Hello World 123")]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "mtl" / "conf" / "encoder"


def _encode(tok, model) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    batch = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    return batch, out.last_hidden_state, out.pooler_output


def test_tiny_random_shapes_and_determinism() -> None:
    rng_before = torch.random.get_rng_state()
    model, tok = load_encoder("tiny_random")
    assert torch.equal(rng_before, torch.random.get_rng_state())  # seeding does not touch the global RNG
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2 and not model.training
    batch, hidden, pooled = _encode(tok, model)
    b, t = batch["input_ids"].shape
    assert hidden.shape == (b, t, 32) and pooled.shape == (b, 32) and b == 2

    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    toks = tok.convert_ids_to_tokens(ids)
    assert tok.unk_token_id not in batch["input_ids"].tolist()[0]
    n_a = len(PAIRS[0][0])  # one token per Chinese character
    assert toks[0] == "[CLS]" and toks[n_a + 1] == "[SEP]" and toks[-1] == "[SEP]"
    assert toks[1 : n_a + 1] == list(PAIRS[0][0])
    types = batch["token_type_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert types == [0] * (n_a + 2) + [1] * (len(ids) - n_a - 2)

    model2, tok2 = load_encoder("tiny_random")
    _, hidden2, pooled2 = _encode(tok2, model2)
    assert torch.equal(hidden, hidden2) and torch.equal(pooled, pooled2)
    model3, _ = load_encoder("tiny_random", seed=1)
    assert not torch.equal(model3.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)


def test_tiny_random_sizes_from_kwargs() -> None:
    model, tok = load_encoder("tiny_random", hidden_size=48, num_layers=1, num_heads=4, intermediate_size=96)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (
        48,
        1,
        4,
        96,
    )
    _, hidden, _ = _encode(tok, model)
    assert hidden.shape[-1] == 48
    with pytest.raises(ValueError, match="divisible"):
        load_encoder("tiny_random", hidden_size=30, num_heads=4)


def test_tiny_tokenizer_with_collator_and_datasets() -> None:
    from transformers import DataCollatorWithPadding

    _, tok = load_encoder("tiny_random")
    feats = [dict(tok(a, b, truncation=True, max_length=16)) for a, b in PAIRS]
    assert all(len(f["input_ids"]) <= 16 for f in feats)
    batch = DataCollatorWithPadding(tok)(feats)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape
    assert (
        tok.decode(tok("你好 world")["input_ids"], skip_special_tokens=True).replace(" ", "") == "你好world"
    )

    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"a": [a for a, _ in PAIRS], "b": [b for _, b in PAIRS]})
    mapped = ds.map(lambda ex: tok(ex["a"], ex["b"], truncation=True, max_length=32), batched=True)
    assert mapped[0]["input_ids"][0] == tok.cls_token_id


def test_unreachable_hub_id_gives_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "mtl-test-nonexistent-org/no-such-encoder"
    with pytest.raises(EncoderLoadError) as info:
        load_encoder(name, cache_dir=tmp_path / "hf")
    msg = str(info.value)
    assert isinstance(info.value, OSError)
    assert name in msg and "internet" in msg
    assert "encoder.name_or_path=/path/to/folder" in msg and "encoder=e5_small" in msg

    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(EncoderLoadError, match="local folder"):
        load_encoder(str(empty))


def test_unknown_embedded_name() -> None:
    with pytest.raises(ValueError, match="e5-small"):
        load_encoder("embedded:no-such-model")


def test_embedded_branch_loads_converted_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The embedded path without the 70 MB file: a tiny synthetic E5S1 file stands in for it."""
    from mtl.models.e5_convert import ensure_embedded_e5

    # reuse the synthetic-file writer of the converter tests (loaded by path: tests/ is no package)
    spec = importlib.util.spec_from_file_location(
        "_mtl_e5_tiny", Path(__file__).with_name("test_e5_convert.py")
    )
    assert spec is not None and spec.loader is not None
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    write_tiny_e5s1 = helper.write_tiny_e5s1
    src = tmp_path / "tiny-q4.bin"
    write_tiny_e5s1(src)
    seen: list[object] = []

    def fake_ensure(cache_dir: object = None) -> Path:
        seen.append(cache_dir)
        return ensure_embedded_e5(cache_dir, src=src)

    monkeypatch.setattr(enc_mod, "ensure_embedded_e5", fake_ensure)
    model, tok = load_encoder("embedded:e5-small", cache_dir=tmp_path / "cache")
    assert seen == [tmp_path / "cache"]
    assert type(model).__name__ == "XLMRobertaModel" and model.pooler is None and not model.training
    batch = tok(["b 中文"], ["中文"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    assert out.last_hidden_state.shape == (1, batch["input_ids"].shape[1], model.config.hidden_size)
    assert getattr(out, "pooler_output", None) is None


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_encoder_configs(path: Path) -> None:
    cfg = OmegaConf.load(path)
    assert set(cfg) >= {"name_or_path", "pooling", "max_length", "kwargs"}
    assert cfg.pooling in {"cls", "mean", "pooler"} and int(cfg.max_length) > 0
    assert OmegaConf.is_dict(cfg.kwargs)
    assert path.read_text(encoding="utf-8").startswith("# ")


def test_expected_configs_exist() -> None:
    names = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert names >= {
        "e5_small",
        "tiny_random",
        "bert_base_chinese",
        "roberta_wwm_ext",
        "roberta_wwm_ext_large",
    }
    e5 = OmegaConf.load(CONFIG_DIR / "e5_small.yaml")
    assert e5.name_or_path == "embedded:e5-small" and e5.pooling == "mean"
    tiny = OmegaConf.load(CONFIG_DIR / "tiny_random.yaml")
    model, _ = load_encoder(tiny.name_or_path, **OmegaConf.to_container(tiny.kwargs))
    assert model.config.hidden_size == tiny.kwargs.hidden_size

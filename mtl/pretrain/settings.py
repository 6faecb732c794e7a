"""The ``pretrain`` config group: :class:`PretrainSettings` holds its options and their defaults (the preset
for real use, ``pretrain=default``); ``mtl/conf/pretrain/quick.yaml`` shrinks them for a CPU.

The dataclass is registered in Hydra's ConfigStore as ``pretrain/default`` (every default stated once, as
:mod:`mtl.config` does for ``data`` and ``trainer``), so ``pretrain.max_steps=abc`` fails at composition,
naming the key. :func:`validate_settings` checks the values a type cannot (ranges, choices) before any data
is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from mtl.training.validate import ConfigError

__all__ = ["PRECISIONS", "PretrainSettings", "compose_pretrain", "register_pretrain_configs", "settings_of",
           "validate_settings"]

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class PretrainSettings:
    """Masked-language-model pretraining options (``pretrain.<key>=...``)."""

    # the corpus
    include_dev: bool = False  # true: the dev rows' texts too (dev scores of a model fine-tuned later are optimistic)
    include_test: bool = True  # the unlabelled test A/B files' texts
    dev_seeds: list[int] | None = None  # leave out the dev rows of each of these seeds' splits (None: [seed])
    max_texts: int | None = None  # cap on the training texts (a seeded sample of the corpus); None: all
    heldout_texts: int = 1000  # texts kept out of training to measure the MLM loss before and after (0: none)
    # the model and its inputs
    max_length: int | None = None  # tokens per text (truncated); None: encoder.max_length
    freeze_embeddings: bool | None = None  # fix the input embeddings (and the tied decoder); None: encoder.freeze_embeddings
    mlm_probability: float = 0.15  # share of tokens masked (DataCollatorForLanguageModeling)
    whole_word_mask: bool = False  # mask whole words; refused where the tokenizer/language has no word boundaries
    # the loop
    max_steps: int = 6000
    batch_size: int = 64
    lr: float = 5.0e-5
    head_lr: float | None = None  # learning rate of the MLM head (a fresh one learns faster with more); None: lr
    weight_decay: float = 0.01
    warmup: float = 0.06  # fraction of max_steps with a linear warm-up
    grad_clip: float | None = 1.0
    precision: str = "auto"  # auto (bf16 on GPUs and CPUs with native bf16, else fp32) | fp32 | bf16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 50
    checkpoint_every: int = 500  # steps between resumable checkpoints (0: none)
    keep_checkpoints: bool = False  # keep checkpoints/ once the run has finished (model + optimiser: large)
    resume: str | None = None  # auto: continue the run in this folder from checkpoints/last.pt; or a checkpoint path
    overwrite: bool = False  # replace a finished (or unfinished) pretraining in this folder


def register_pretrain_configs() -> None:
    """``pretrain/default`` (:class:`PretrainSettings`) and the code-defined groups of ``mtl-train`` (``data``)."""
    from hydra.core.config_store import ConfigStore

    from mtl.config import register_configs

    register_configs()
    ConfigStore.instance().store(group="pretrain", name="default", node=PretrainSettings)


def compose_pretrain(overrides: Iterable[str] = (), return_hydra_config: bool = False) -> Any:
    """The ``pretrain`` app config with ``overrides``, as ``mtl-pretrain`` composes it (no run directory)."""
    from hydra import compose, initialize_config_module

    register_pretrain_configs()
    with initialize_config_module(config_module="mtl.conf", version_base="1.3"):
        return compose("pretrain", overrides=list(overrides), return_hydra_config=return_hydra_config)


def settings_of(cfg: Any) -> PretrainSettings:
    """The ``pretrain`` node (a DictConfig or mapping) as :class:`PretrainSettings`; unknown keys are an error."""
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
    assert isinstance(node, dict)
    known = {f.name for f in fields(PretrainSettings)}
    unknown = sorted(set(node) - known)
    if unknown:
        raise ConfigError(f"pretrain.{unknown[0]}: unknown option; known: {', '.join(sorted(known))}")
    return PretrainSettings(**node)


def validate_settings(s: PretrainSettings, cfg: Mapping[str, Any] | Any) -> None:
    """Raise :class:`ConfigError` naming the key and the value for the first unusable option."""
    problems: list[str] = []

    def need(key: str, value: Any, ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"{key}={'null' if value is None else value}: {what}")

    def integer(key: str, value: Any, *, optional: bool = False, zero_ok: bool = False) -> None:
        if value is None and optional:
            return
        ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if zero_ok else value > 0)
        need(key, value, ok, "must be a non-negative integer" if zero_ok else "must be a positive integer")

    def number(key: str, value: Any, lo: float, hi: float | None, *, lo_open: bool, hi_open: bool = True) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > lo if lo_open else value >= lo) and (hi is None or (value < hi if hi_open else value <= hi))
        rng = f"{'>' if lo_open else '>='} {lo:g}" + ("" if hi is None else f" and {'<' if hi_open else '<='} {hi:g}")
        need(key, value, ok, f"must be a finite number {rng}")

    tasks = cfg.get("tasks") if hasattr(cfg, "get") else None
    if not tasks:
        problems.append("tasks=[]: no tasks selected; pass e.g. tasks=[ocnli,ocemotion,tnews]")
    seed = cfg.get("seed") if hasattr(cfg, "get") else None
    need("seed", seed, isinstance(seed, int) and not isinstance(seed, bool), "must be an integer")
    integer("pretrain.max_steps", s.max_steps)
    integer("pretrain.batch_size", s.batch_size)
    integer("pretrain.max_length", s.max_length, optional=True)
    integer("pretrain.max_texts", s.max_texts, optional=True)
    integer("pretrain.heldout_texts", s.heldout_texts, zero_ok=True)
    integer("pretrain.log_every", s.log_every)
    integer("pretrain.checkpoint_every", s.checkpoint_every, zero_ok=True)
    number("pretrain.lr", s.lr, 0.0, None, lo_open=True)
    if s.head_lr is not None:
        number("pretrain.head_lr", s.head_lr, 0.0, None, lo_open=True)
    number("pretrain.weight_decay", s.weight_decay, 0.0, None, lo_open=False)
    number("pretrain.warmup", s.warmup, 0.0, 1.0, lo_open=False)
    number("pretrain.mlm_probability", s.mlm_probability, 0.0, 1.0, lo_open=True)
    if s.grad_clip is not None:
        number("pretrain.grad_clip", s.grad_clip, 0.0, None, lo_open=True)
    need("pretrain.precision", s.precision, s.precision in PRECISIONS, f"choose one of {', '.join(PRECISIONS)}")
    if s.dev_seeds is not None:
        ok = len(s.dev_seeds) > 0 and all(isinstance(x, int) and not isinstance(x, bool) for x in s.dev_seeds)
        need("pretrain.dev_seeds", s.dev_seeds, ok, "must be a non-empty list of integers (or null: [seed])")
    resuming = s.resume is not None and str(s.resume).strip().lower() not in ("", "none", "null", "false", "no")
    if s.overwrite and resuming:
        problems.append(f"pretrain.overwrite=true and pretrain.resume={s.resume}: contradict each other; resume "
                        "the pretraining in this folder or replace it, not both")
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise ConfigError(f"{problems[0]}{more}")

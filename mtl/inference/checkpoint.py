"""A trained run's model, rebuilt offline from its ``checkpoints/`` folder.

The folder holds everything needed: ``best.pt`` (state dict, label lists, resolved config), ``tokenizer/``
and ``encoder_config/``. :func:`load_checkpoint` rebuilds the model from those (``AutoModel.from_config`` +
the state dict; no download, no pretrained weights needed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtl.models.multitask import MultiTaskModel, build_multitask
from mtl.utils.device import resolve_device
from mtl.utils.files import load_checkpoint_file

log = logging.getLogger(__name__)

__all__ = ["LoadedCheckpoint", "find_checkpoint", "load_checkpoint"]


@dataclass
class LoadedCheckpoint:
    model: MultiTaskModel
    tokenizer: Any
    labels: dict[str, list[str]]
    config: dict[str, Any]
    step: int
    avg_macro_f1: float
    path: Path
    device: torch.device
    #: the run's decision rule and what applying it needs: ``{"rule", "tau", "class_counts": {task: [...]},
    #: "biases": {task: [...]}}`` (``mtl.training.trainer.Trainer.decision_meta``; older checkpoints: ``{}``)
    decision: dict[str, Any] = field(default_factory=dict)

    @property
    def decision_rule(self) -> str:
        """The rule prediction applies unless told otherwise (``argmax`` for checkpoints without one)."""
        return str(self.decision.get("rule") or "argmax")

    @property
    def run_dir(self) -> Path:
        """The run directory (``<run>/checkpoints/best.pt`` -> ``<run>``)."""
        return self.path.parent.parent

    @property
    def tasks(self) -> list[str]:
        return list(self.labels)

    def task_config(self, task: str) -> dict[str, Any]:
        return dict((self.config.get("tasks") or {}).get(task) or {})

    @property
    def data_config(self) -> dict[str, Any]:
        return dict(self.config.get("data") or {})

    @property
    def max_length(self) -> int:
        return int((self.config.get("encoder") or {}).get("max_length") or 128)


def find_checkpoint(path: str | Path) -> Path:
    """A run directory, its ``checkpoints/`` folder or a ``.pt`` file -> the checkpoint file.

    ``best.pt`` (the best dev evaluation) first; a run without one (``trainer.save_best=false``, or killed
    before its first evaluation) falls back to ``last.pt`` (the latest resumable state), saying so.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.exists() and not path.is_dir():
        raise FileNotFoundError(f"{path} is not a file or a directory (expected a run directory or a .pt file)")
    for folder in (path / "checkpoints", path):
        if (folder / "best.pt").is_file():
            return folder / "best.pt"
    for folder in (path / "checkpoints", path):
        last = folder / "last.pt"
        if last.is_file():
            message = (f"no best.pt in {folder}: using {last} (the latest saved state, not the best dev "
                       "evaluation)")
            log.warning("%s", message)
            return last
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected a run directory or a checkpoint .pt file)")
    raise FileNotFoundError(
        f"no checkpoint in {path}: expected {path / 'checkpoints' / 'best.pt'} "
        "(written by mtl-train when trainer.save_best=true) or checkpoints/last.pt"
    )


def _build_encoder(ckpt_dir: Path, state: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[Any, Any]:
    """The encoder architecture (random weights, replaced by the state dict) and the tokenizer, offline."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    enc_dir, tok_dir = ckpt_dir / "encoder_config", ckpt_dir / "tokenizer"
    enc_cfg = dict(config.get("encoder") or {})
    if enc_dir.is_dir() and tok_dir.is_dir():
        model_cfg = AutoConfig.from_pretrained(enc_dir)
        # a pooler in the encoder, or copied into the tasks' private top layers (model.sharing=private_top)
        has_pooler = any(k.startswith("encoder.pooler.") or (k.startswith("private.") and ".pooler." in k)
                         for k in state)
        kwargs = {} if has_pooler else {"add_pooling_layer": False}
        try:
            encoder = AutoModel.from_config(model_cfg, **kwargs)
        except TypeError:  # an architecture without the pooler switch
            encoder = AutoModel.from_config(model_cfg)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        return encoder, tokenizer
    # older runs without encoder_config/: rebuild from the encoder's name (embedded / tiny_random: offline)
    from mtl.models.encoder import load_encoder

    name = enc_cfg.get("name_or_path")
    if not name:
        raise FileNotFoundError(f"{enc_dir} is missing and the checkpoint's config names no encoder")
    log.info("%s missing: rebuilding the encoder from its name %r", enc_dir, name)
    encoder, tokenizer = load_encoder(str(name), **dict(enc_cfg.get("kwargs") or {}))
    if tok_dir.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    return encoder, tokenizer


def load_checkpoint(path: str | Path, device: str = "auto") -> LoadedCheckpoint:
    """Rebuild the trained multi-task model of a run (see the module docstring) on ``device``
    (:func:`mtl.utils.device.resolve_device`), in eval mode."""
    ckpt_path = find_checkpoint(path)
    state = load_checkpoint_file(ckpt_path)
    for key in ("model", "labels", "config"):
        if key not in state:
            raise ValueError(f"{ckpt_path} has no {key!r} entry: not an mtl checkpoint")
    sd: dict[str, torch.Tensor] = state["model"]
    config: dict[str, Any] = state["config"]
    labels = {t: [str(x) for x in v] for t, v in state["labels"].items()}
    encoder, tokenizer = _build_encoder(ckpt_path.parent, sd, config)
    enc_cfg = dict(config.get("encoder") or {})
    model_cfg = dict(config.get("model") or {})
    # the run's structure (features, heads, sharing) from its saved config; older configs: the defaults
    model = build_multitask(encoder, {t: len(v) for t, v in labels.items()}, model_cfg,
                            {"pooling": enc_cfg.get("pooling", "cls"), "max_length": enc_cfg.get("max_length")})
    from mtl.models.vocab_trim import restore_trimmed_embeddings

    restore_trimmed_embeddings(model, sd)  # a run with encoder.trim_vocab=true saved a smaller embedding
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"{ckpt_path}: the rebuilt model does not match the checkpoint "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    dev = resolve_device(device)
    model.to(dev).eval()
    log.info("loaded %s (step %s, dev avg macro-F1 %.4f)", ckpt_path, state.get("step"),
             float(state.get("avg_macro_f1", float("nan"))))
    return LoadedCheckpoint(
        model=model,
        tokenizer=tokenizer,
        labels=labels,
        config=config,
        step=int(state.get("step", -1)),
        avg_macro_f1=float(state.get("avg_macro_f1", float("nan"))),
        path=ckpt_path,
        device=dev,
        decision=_decision(state),
    )


def _decision(state: Mapping[str, Any]) -> dict[str, Any]:
    d = dict(state.get("decision") or {})
    if "class_counts" not in d and state.get("class_counts") is not None:
        d["class_counts"] = state["class_counts"]
    return d

"""One pretraining run: the folder claimed, the corpus gathered, the MLM loop, the Hugging Face folder and
``pretrain_record.json``.

A short hand loop rather than ``transformers.Trainer``: the state that decides the run is small and explicit
(model, AdamW, the linear schedule, the global RNG for dropout, the step), the data order and the masks are
pure functions of ``(seed, step)`` (no data-loader or collator state to capture), so a checkpoint of those few
things resumes a killed run exactly, with the project's own checkpoint files (atomic, rotated,
``mtl.training.checkpoint``) and run-folder rules (``mtl.training.validate``), and without the ``accelerate``
dependency ``Trainer`` needs. Masking is ``transformers.DataCollatorForLanguageModeling``; the optimiser
``torch.optim.AdamW`` (no weight decay on biases and norms); the schedule ``get_linear_schedule_with_warmup``.

Precision: ``pretrain.precision=auto`` is :func:`mtl.utils.device.resolve_precision`'s choice, as in training:
bf16 autocast on GPUs and on CPUs that compute bf16 natively, fp32 elsewhere (fp16 is not offered: it would
need a loss scaler; where ``auto`` would pick it, on pre-Ampere GPUs, the run uses fp32). Weights, optimiser
state and the loss are fp32 throughout.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mtl.evaluation.plots import plot_mlm_loss
from mtl.pretrain.corpus import corpus_fingerprint, gather_corpus, select_texts
from mtl.pretrain.mlm import (
    DATA_ORDER,
    HELDOUT_MASKS,
    TRAIN_MASKS,
    MaskedBatches,
    build_mlm_model,
    check_whole_word_masking,
    mlm_loss,
    stream_seed,
)
from mtl.pretrain.settings import PretrainSettings, settings_of, validate_settings
from mtl.training.checkpoint import capture_rng, previous_of, resolve_resume, restore_rng, save_rotating
from mtl.training.validate import ConfigError, RunDirError, identity_differences, lock_run_dir
from mtl.utils.device import resolve_device, resolve_precision
from mtl.utils.files import CheckpointError, load_checkpoint_file, write_json

__all__ = ["CHECKPOINT_FORMAT", "RECORD", "PretrainStopped", "after_step", "pretrain"]

log = logging.getLogger(__name__)

RECORD = "pretrain_record.json"
#: the loss curve, drawn from the record (:func:`mtl.evaluation.plots.plot_mlm_loss`)
PLOT = "mlm_loss.png"
RECORD_FORMAT = "mtl-pretrain-record/1"
CHECKPOINT_FORMAT = "mtl-pretrain-checkpoint/1"
#: what marks a folder as holding a model or a pretraining (besides the record)
MODEL_MARKERS = ("checkpoints", "config.json", "model.safetensors", "pytorch_model.bin")
#: pretrain options a resumed run may change: where files go, logging, and speed (not what it trains on or how)
FREE_PRETRAIN_KEYS = ("resume", "overwrite", "checkpoint_every", "log_every", "keep_checkpoints", "device",
                      "precision")


class PretrainStopped(RuntimeError):
    """The loop stopped (a non-finite loss); the message says at which step and what to try."""


def after_step(step: int, run_dir: Path) -> None:
    """Called after every optimiser step (and its checkpoint); does nothing (tests stop a run here)."""


# ---------------------------------------------------------------------------------------------------- folder


def _resuming(spec: Any) -> bool:
    return spec is not None and str(spec).strip().lower() not in ("", "none", "null", "false", "no")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _read_record(run_dir: Path) -> dict[str, Any] | None:
    import json

    path = run_dir / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _found(run_dir: Path) -> list[str]:
    out = []
    for name in (RECORD, *MODEL_MARKERS):
        p = run_dir / name
        if p.is_file() or (p.is_dir() and any(p.iterdir())):
            out.append(name + ("/" if p.is_dir() else ""))
    return out


def check_output_dir(run_dir: Path, s: PretrainSettings, resume_path: Path | None, resolved: Mapping[str, Any]
                     ) -> str:
    """What to do with ``run_dir``: ``"fresh"``, ``"clear"`` (overwrite), ``"resume"`` or ``"done"`` (the same
    pretraining has finished there: nothing to do). Raises :class:`RunDirError` (one line) otherwise."""
    found = _found(run_dir)
    if not found:
        return "fresh"
    if s.overwrite:
        log.warning("pretrain.overwrite=true: replacing what %s holds (%s)", run_dir, ", ".join(found))
        return "clear"
    record = _read_record(run_dir)
    if record is not None:
        same = isinstance(record.get("config"), Mapping) and not _differences(record["config"], resolved)
        if _resuming(s.resume) and same:
            return "done"
        what = "the same pretraining, finished" if same else "a different, finished pretraining"
        done = " (pretrain.resume=auto takes it as done)" if same else ""
        raise RunDirError(
            f"{run_dir} holds {what} ({RECORD}: {record.get('training', {}).get('steps', '?')} steps of "
            f"{record.get('encoder', {}).get('source', '?')}){done}; write to another folder (hydra.run.dir=...) "
            "or replace it with pretrain.overwrite=true"
        )
    if resume_path is not None and _inside(resume_path, run_dir):
        return "resume"
    if "checkpoints/" in found:
        raise RunDirError(
            f"{run_dir} holds an unfinished pretraining (checkpoints/); continue it with pretrain.resume=auto "
            "(and the same settings), or replace it with pretrain.overwrite=true"
        )
    raise RunDirError(
        f"{run_dir} already holds a model ({', '.join(found)}) that no pretraining of this program wrote; write "
        "to another folder (hydra.run.dir=...) or replace it with pretrain.overwrite=true"
    )


def _clear(run_dir: Path) -> list[str]:
    record = _read_record(run_dir) or {}
    names = {RECORD, *MODEL_MARKERS, *(record.get("files") or [])}
    removed = []
    for name in sorted(names):
        p = run_dir / str(name)
        if not _inside(p, run_dir) or p == run_dir:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(str(name))
    return removed


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Settings that decide what a pretraining trains on and how, ``key: old -> new`` (seed, tasks, data,
    encoder as for training runs; then the ``pretrain`` options but the free ones)."""
    out = identity_differences(old, new)
    a, b = old.get("pretrain") or {}, new.get("pretrain") or {}
    for key in sorted(set(a) | set(b)):
        if key not in FREE_PRETRAIN_KEYS and a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"pretrain.{key}: {a.get(key, '<unset>')} -> {b.get(key, '<unset>')}")
    return out


def _load_checkpoint(path: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint at ``path``; an unreadable one falls back to the one before it (``prev.pt``), warned."""
    try:
        state = load_checkpoint_file(path)
    except (CheckpointError, FileNotFoundError) as exc:
        prev = previous_of(path)
        if prev == path or not prev.is_file():
            raise CheckpointError(f"{exc}; no previous checkpoint ({prev.name}) to fall back to") from exc
        log.warning("%s; resuming from the previous checkpoint %s instead", exc, prev)
        path, state = prev, load_checkpoint_file(prev)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an mtl-pretrain checkpoint (format {state.get('format')!r})")
    return path, state


# ---------------------------------------------------------------------------------------------------- the run


def pretrain(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run the MLM pretraining ``cfg`` describes into ``run_dir``; returns the record written there.

    Checked before the data is read: the options, the folder (refused when it holds another model or
    pretraining, unless ``pretrain.overwrite=true``; locked against a second process) and a resumed
    checkpoint's settings (refused when they differ from this run's).
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    s = settings_of(cfg.pretrain)
    validate_settings(s, cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    with lock_run_dir(run_dir):
        resume_path = resolve_resume(s.resume, run_dir)
        verdict = check_output_dir(run_dir, s, resume_path, resolved)
        if verdict == "done":
            log.info("%s already holds this pretraining, finished: nothing to do", run_dir)
            record = _read_record(run_dir)
            assert record is not None
            return record
        state: dict[str, Any] | None = None
        if resume_path is not None:
            resume_path, state = _load_checkpoint(resume_path)
            diff = _differences(state.get("config") or {}, resolved)
            if diff:
                raise ConfigError(
                    f"cannot resume from {resume_path}: this run's settings differ from the checkpoint's "
                    f"({'; '.join(diff[:6])}); resume with the checkpoint's settings, or start a new pretraining "
                    "in another folder"
                )
        return _pretrain(cfg, s, resolved, run_dir, state, resume_path, verdict == "clear", t_start)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _max_positions(model: torch.nn.Module) -> int | None:
    """The longest input the model takes (RoBERTa-type position tables start after the padding index)."""
    n = getattr(model.config, "max_position_embeddings", None)
    if n is None:
        return None
    if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        n -= int(getattr(model.config, "pad_token_id", 1) or 1) + 1
    return int(n)


def _rows_for_step(step: int, n: int, batch_size: int, seed: int, perms: dict[int, np.ndarray]) -> list[int]:
    """The corpus rows of step ``step``: consecutive slices of a seeded permutation per epoch."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, i = divmod(pos, n)
        if epoch not in perms:
            perms.clear()  # only the current epoch (and at a boundary the next) is needed
            perms[epoch] = np.random.default_rng(stream_seed(seed, DATA_ORDER, epoch)).permutation(n)
        take = min(batch_size - len(out), n - i)
        out.extend(int(x) for x in perms[epoch][i:i + take])
        pos += take
    return out


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def heldout_loss(model: torch.nn.Module, batches: MaskedBatches, batch_size: int, seed: int,
                 device: torch.device, bf16: bool) -> tuple[float, int]:
    """The mean MLM loss over the held-out texts' masked tokens (the same masks every time) and their count."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i, start in enumerate(range(0, len(batches), batch_size)):
            rows = list(range(start, min(start + batch_size, len(batches))))
            loss, n = mlm_loss(model, _to(batches.batch(rows, stream_seed(seed, HELDOUT_MASKS, i)), device), bf16=bf16)
            total += float(loss)
            count += n
    model.train(was_training)
    return (total / count if count else float("nan")), count


def _optimizer(model: torch.nn.Module, s: PretrainSettings) -> torch.optim.Optimizer:
    """AdamW: no weight decay on biases and norms; the MLM head's own parameters at ``head_lr`` (a tied decoder
    weight is the input embedding matrix: it belongs to the encoder and keeps ``lr``)."""
    base = {id(p) for p in model.base_model.parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():  # each tied parameter once
        if p.requires_grad:
            key = (id(p) not in base, p.ndim < 2 or "norm" in name.lower())
            groups.setdefault(key, []).append(p)
    head_lr = s.lr if s.head_lr is None else s.head_lr
    return torch.optim.AdamW(
        [{"params": ps, "lr": head_lr if head else s.lr, "weight_decay": 0.0 if no_decay else s.weight_decay}
         for (head, no_decay), ps in sorted(groups.items())],
        lr=s.lr,
    )


def _pretrain(cfg: DictConfig, s: PretrainSettings, resolved: dict[str, Any], run_dir: Path,
              state: dict[str, Any] | None, resume_path: Path | None, clear: bool, t_start: float) -> dict[str, Any]:
    from transformers import get_linear_schedule_with_warmup

    seed = int(cfg.seed)
    _seed_everything(seed)
    device = resolve_device(s.device)
    precision = resolve_precision(s.precision, device)
    if precision == "fp16":
        log.info("pretrain.precision=auto: this GPU has no native bf16; pretraining in fp32")
        precision = "fp32"
    bf16 = precision == "bf16"

    # 1. the model
    kwargs = OmegaConf.to_container(cfg.encoder.kwargs, resolve=True) if cfg.encoder.get("kwargs") else {}
    model, tokenizer, info = build_mlm_model(str(cfg.encoder.name_or_path), kwargs, seed=seed)  # type: ignore[arg-type]
    log.info("masked-LM model: %s", info.describe())
    max_length = int(s.max_length or cfg.encoder.max_length)
    limit = _max_positions(model)
    if limit is not None and max_length > limit:
        raise ConfigError(f"pretrain.max_length={max_length}: the encoder takes at most {limit} tokens")
    freeze = bool(cfg.encoder.get("freeze_embeddings", False) if s.freeze_embeddings is None else s.freeze_embeddings)
    if freeze:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(False)
        log.info("froze the input embeddings%s", " and so the tied decoder" if info.decoder_tied else "")

    # 2. the corpus
    dev_seeds = list(s.dev_seeds) if s.dev_seeds is not None else [seed]
    corpus = gather_corpus(cfg.tasks, cfg.data, dev_seeds=dev_seeds, include_dev=s.include_dev,
                           include_test=s.include_test)
    train_texts, held_texts = select_texts(corpus.texts, s.heldout_texts, s.max_texts, seed)
    fingerprint = corpus_fingerprint(train_texts)
    if state is not None and state.get("corpus_fingerprint") != fingerprint:
        raise ConfigError(
            f"cannot resume from {resume_path}: the corpus differs from the one the checkpoint trained on (the data "
            "files changed?); start a new pretraining in another folder"
        )
    wwm = check_whole_word_masking(tokenizer, train_texts, max_length) if s.whole_word_mask else None
    train = MaskedBatches(train_texts, tokenizer, max_length, mlm_probability=s.mlm_probability,
                          whole_word_mask=s.whole_word_mask)
    held = MaskedBatches(held_texts, tokenizer, max_length, mlm_probability=s.mlm_probability,
                         whole_word_mask=s.whole_word_mask) if held_texts else None
    log.info("pretraining on %d texts (%d tokens, %d at the %d-token limit), %d held out",
             len(train), train.tokens, train.at_max_length, max_length, len(held_texts))

    # 3. the loop's state
    model.to(device)
    model.train()
    optimizer = _optimizer(model, s)
    warmup_steps = int(round(s.warmup * s.max_steps))
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, s.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    history: dict[str, Any] = {"curve": [], "window": [], "heldout_before": None, "heldout_tokens": 0,
                               "wall_seconds": 0.0, "resumed_from": []}
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        history["resumed_from"] = [*history.get("resumed_from", []), {"path": str(resume_path), "step": state["step"]}]
        step = int(state["step"])
        restore_rng(state["rng"])
        log.info("resumed from %s at step %d", resume_path, step)
    if clear:
        log.info("pretrain.overwrite=true: removed %s", ", ".join(_clear(run_dir)) or "nothing")
    if state is None and held is not None:  # (draws nothing from the run's RNG: masks come from their own seeds)
        history["heldout_before"], history["heldout_tokens"] = heldout_loss(model, held, s.batch_size, seed, device,
                                                                            bf16)
        log.info("held-out MLM loss before: %.4f (%d masked tokens of %d texts)", history["heldout_before"],
                 history["heldout_tokens"], len(held))
    log.info("MLM pretraining of %s for %d steps of %d texts (device=%s, precision=%s, lr=%g, warm-up %d steps)",
             cfg.encoder.name_or_path, s.max_steps, s.batch_size, device, precision, s.lr, warmup_steps)

    t_mark = [time.perf_counter()]  # the loop's time is summed over the processes of a resumed run

    def checkpoint(at: int) -> None:
        history["wall_seconds"] += time.perf_counter() - t_mark[0]
        t_mark[0] = time.perf_counter()
        save_rotating({
            "format": CHECKPOINT_FORMAT, "step": at, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": capture_rng(),
            "history": history, "config": resolved, "corpus_fingerprint": fingerprint,
        }, run_dir / "checkpoints" / "last.pt")

    # 4. the loop
    perms: dict[int, np.ndarray] = {}
    t_log = time.perf_counter()
    while step < s.max_steps:
        rows = _rows_for_step(step, len(train), s.batch_size, seed, perms)
        batch = _to(train.batch(rows, stream_seed(seed, TRAIN_MASKS, step)), device)
        loss_sum, n = mlm_loss(model, batch, bf16=bf16)
        loss = loss_sum / max(n, 1)
        if not torch.isfinite(loss):
            raise PretrainStopped(
                f"the MLM loss is not finite at step {step + 1} ({float(loss)}); lower pretrain.lr, or use "
                "pretrain.precision=fp32; resume from the last checkpoint with pretrain.resume=auto"
            )
        loss.backward()
        if s.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        history["window"].append(float(loss.detach()))
        if step % s.log_every == 0 or step == s.max_steps:
            mean = sum(history["window"]) / len(history["window"])
            history["curve"].append({"step": step, "loss": round(mean, 6), "lr": scheduler.get_last_lr()[0]})
            history["window"] = []
            now = time.perf_counter()
            log.info("step %d/%d  mlm loss %.4f  lr %.3g  (%.2f s/step)", step, s.max_steps, mean,
                     scheduler.get_last_lr()[0], (now - t_log) / s.log_every)
            t_log = now
        if s.checkpoint_every and step % s.checkpoint_every == 0 and step < s.max_steps:
            checkpoint(step)
        after_step(step, run_dir)
    history["wall_seconds"] += time.perf_counter() - t_mark[0]

    # 5. the result
    heldout_after = None
    if held is not None:
        heldout_after, _ = heldout_loss(model, held, s.batch_size, seed, device, bf16)
        log.info("held-out MLM loss: %.4f before -> %.4f after", history["heldout_before"], heldout_after)
    model.to("cpu")
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    model.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    files = sorted(p.name for p in run_dir.iterdir()  # what the two calls wrote (pretrain.overwrite removes these)
                   if p.is_file() and before.get(p.name) != p.stat().st_mtime_ns and p.name != ".lock" and p.suffix != ".log")
    n_params = sum(p.numel() for p in model.parameters())
    record = {
        "format": RECORD_FORMAT,
        "encoder": {**info.to_dict(), "parameters": n_params,
                    "trained_parameters": sum(p.numel() for p in params), "freeze_embeddings": freeze},
        "corpus": {
            "tasks": list(cfg.tasks), "normalize": bool(cfg.data.normalize), **corpus.to_dict(),
            "heldout_texts": len(held_texts), "train_texts": len(train_texts),
            "max_texts": s.max_texts, "max_length": max_length,
            "tokens": {"train": train.tokens, "heldout": held.tokens if held is not None else 0},
            "texts_at_max_length": train.at_max_length, "fingerprint": fingerprint,
        },
        "masking": {"mlm_probability": s.mlm_probability, "whole_word_mask": s.whole_word_mask,
                    "mask_replace_prob": train.collator.mask_replace_prob,
                    "random_replace_prob": train.collator.random_replace_prob,
                    **({"whole_word_check": wwm} if wwm else {})},
        "training": {"steps": step, "batch_size": s.batch_size, "lr": s.lr, "head_lr": s.head_lr or s.lr,
                     "warmup_steps": warmup_steps,
                     "weight_decay": s.weight_decay, "grad_clip": s.grad_clip, "precision": precision,
                     "device": str(device), "seed": seed,
                     "epochs": round(step * s.batch_size / len(train), 3),
                     "train_seconds": round(history["wall_seconds"], 1),
                     "wall_seconds_this_process": round(time.perf_counter() - t_start, 1),
                     "resumed_from": history["resumed_from"]},
        "loss_curve": history["curve"],
        "final_mlm_loss": history["curve"][-1]["loss"] if history["curve"] else None,
        "heldout_mlm_loss": {"before": history["heldout_before"], "after": heldout_after,
                             "masked_tokens": history["heldout_tokens"], "texts": len(held_texts)},
        "files": files,
        "config": resolved,
    }
    for key in ("before", "after"):
        v = record["heldout_mlm_loss"][key]
        if isinstance(v, float) and not math.isfinite(v):
            record["heldout_mlm_loss"][key] = None
    try:
        if plot_mlm_loss(record, run_dir / PLOT) is not None:
            record["files"] = sorted({*record["files"], PLOT})
    except Exception as exc:  # a plot never fails the run
        log.warning("could not draw %s: %s", PLOT, exc)
    write_json(run_dir / RECORD, record)
    if not s.keep_checkpoints and (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")
    log.info("wrote the pretrained encoder and %s to %s; fine-tune it with mtl-train encoder.name_or_path=%s",
             RECORD, run_dir, run_dir)
    return record

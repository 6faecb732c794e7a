"""Build everything a run needs from the composed config, train, and write the run's results."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from mtl import balancers, samplers
from mtl.balancers import Balancer
from mtl.data.batching import TaskBatchSampler, TaskStream
from mtl.data.loading import collate, load_task, tokenize_examples
from mtl.evaluation.metrics import majority_macro_f1
from mtl.evaluation.plots import write_run_plots_after_fit
from mtl.models.encoder import load_encoder
from mtl.models.multitask import MultiTaskModel
from mtl.registry import import_modules
from mtl.samplers import SAMPLERS, TaskSampler
from mtl.training import distributed as mdist
from mtl.training.loggers import build_logger
from mtl.training.trainer import NullLogger, Trainer, TrainerSettings
from mtl.utils.device import resolve_device
from mtl.utils.files import write_json

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _kwargs(cfg: DictConfig | None, drop: tuple[str, ...] = ("name",)) -> dict[str, Any]:
    if cfg is None:
        return {}
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    return {k: v for k, v in data.items() if k not in drop}


def build_balancer(cfg: DictConfig, task_names: list[str]) -> Balancer:
    """``balancer.name`` picks a registered class; a ``_target_`` instead instantiates any class."""
    if "_target_" in cfg:
        from hydra.utils import instantiate

        balancer = instantiate(cfg, task_names=task_names)
    else:
        balancer = balancers.build_balancer(cfg.name, task_names, **_kwargs(cfg))
    if not isinstance(balancer, Balancer):
        raise TypeError(f"balancer config built a {type(balancer).__name__}, not an mtl Balancer")
    return balancer


def build_sampler(cfg: DictConfig, task_sizes: dict[str, int], seed: int) -> TaskSampler:
    if "_target_" in cfg:
        from hydra.utils import instantiate

        sampler = instantiate(cfg, task_sizes=task_sizes, seed=seed)
    else:
        sampler = samplers.build_sampler(cfg.name, task_sizes, seed=seed, **_kwargs(cfg))  # typos named
    if not isinstance(sampler, TaskSampler):
        raise TypeError(f"sampler config built a {type(sampler).__name__}, not an mtl TaskSampler")
    return sampler


def settings_from_cfg(cfg: DictConfig, max_steps: int) -> TrainerSettings:
    """The Trainer's settings from the ``optim`` and ``trainer`` config groups (one mapping for
    ``run()`` and the benchmark scripts, so an override means the same everywhere)."""
    tr = cfg.trainer
    return TrainerSettings(
        max_steps=max_steps,
        eval_every=int(tr.eval_every),
        log_every=int(tr.log_every),
        lr=float(cfg.optim.lr),
        head_lr=None if cfg.optim.head_lr is None else float(cfg.optim.head_lr),
        weight_decay=float(cfg.optim.weight_decay),
        warmup=float(cfg.optim.warmup),
        grad_clip=None if cfg.optim.grad_clip is None else float(cfg.optim.grad_clip),
        precision=str(tr.precision),
        device=str(tr.device),
        early_stopping_patience=tr.early_stopping_patience,
        save_best=bool(tr.save_best),
        max_consecutive_nonfinite=int(tr.max_consecutive_nonfinite),
        progress=bool(tr.progress),
        grad_accum_steps=int(tr.get("grad_accum_steps", 1)),
        compile=tr.get("compile", False),
        tf32=bool(tr.get("tf32", True)),
        checkpoint_every=tr.get("checkpoint_every", 500),
        resume=None if tr.get("resume") is None else str(tr.resume),
    )


def check_compatible(balancer: Balancer, sampler: TaskSampler) -> None:
    """Gradient methods compare task gradients within a step, so every step needs every task."""
    if balancer.needs_gramian and sampler.one_task_per_step:
        multi = [n for n in SAMPLERS.names() if not SAMPLERS.get(n).one_task_per_step]
        raise ValueError(
            f"balancer {balancer.registry_name!r} is a gradient-level method: it compares the tasks' "
            f"gradients within one step, but sampler {sampler.registry_name!r} feeds one task per step. "
            f"Use a sampler that gives every task a batch each step: {', '.join('sampler=' + m for m in multi)}"
        )


def _label_names(cfg: DictConfig, labels: dict[str, list[str]]) -> dict[str, list[str]]:
    return {t: [str(x) for x in (cfg.tasks[t].get("label_names") or labels[t])] for t in labels}


def pin_memory_for(device: str) -> bool:
    """Pin host batches only when ``trainer.device`` resolves to a GPU: page-locked memory speeds the
    host-to-GPU copy and is wasted (and scarce) for a CPU run on a machine that has a GPU."""
    return resolve_device(device).type == "cuda"


def _freeze_embeddings(encoder: torch.nn.Module) -> int:
    emb = encoder.get_input_embeddings()
    for p in emb.parameters():
        p.requires_grad_(False)
    return sum(p.numel() for p in emb.parameters())


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train one configuration; returns the metrics written to ``metrics.json``."""
    # under torchrun: join the process group; every rank uses rank 0's run dir; rank 0 alone writes files
    dist_info = mdist.init_distributed()
    run_dir = mdist.agree_run_dir(run_dir)
    mdist.quiet_other_ranks()
    main = dist_info.is_main
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    import_modules(cfg.get("imports") or [])
    seed_everything(int(cfg.seed))
    if main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")

    enc_cfg = cfg.encoder
    model_enc, tokenizer = load_encoder(enc_cfg.name_or_path, **_kwargs(enc_cfg.get("kwargs")))
    if enc_cfg.get("freeze_embeddings"):
        n = _freeze_embeddings(model_enc)
        log.info("froze the input embedding matrix (%s parameters)", f"{n:,}")

    task_names = list(cfg.tasks.keys())
    if not task_names:
        raise ValueError("no tasks selected: pass e.g. tasks=[ocnli,ocemotion,tnews]")
    data_cfg = cfg.data
    fingerprint = [f"normalize={data_cfg.normalize}"]
    train_sets, dev_sets, labels, reports = {}, {}, {}, {}
    for task in task_names:
        td = load_task(task, cfg.tasks[task], data_cfg, seed=int(cfg.seed))
        labels[task] = list(td.labels)
        reports[task] = td.report.to_dict()
        train_sets[task] = tokenize_examples(td.train, tokenizer, int(enc_cfg.max_length), data_cfg.cache_dir, fingerprint)
        dev_sets[task] = tokenize_examples(td.dev, tokenizer, int(enc_cfg.max_length), data_cfg.cache_dir, fingerprint)
        log.info("%s: %d train / %d dev examples, %d labels", task, len(td.train), len(td.dev), len(td.labels))
    if enc_cfg.get("trim_vocab"):  # keep only the embedding rows of tokens in the data (tokenizer unchanged)
        from mtl.models.vocab_trim import trim_for_run

        trim_for_run(model_enc, tokenizer, cfg, [*train_sets.values(), *dev_sets.values()])

    model = MultiTaskModel(
        model_enc,
        {t: len(labels[t]) for t in task_names},
        pooling=enc_cfg.pooling,
        head=cfg.model.head,
        dropout=float(cfg.model.dropout),
    )
    balancer = build_balancer(cfg.balancer, task_names)
    sampler = build_sampler(cfg.sampler, {t: len(train_sets[t]) for t in task_names}, int(cfg.seed))
    check_compatible(balancer, sampler)

    tr = cfg.trainer
    max_steps = int(tr.max_steps)
    if tr.get("max_epochs"):
        max_steps = int(round(float(tr.max_epochs) * sampler.steps_per_epoch(int(data_cfg.batch_size) * dist_info.world_size)))
        log.info("trainer.max_epochs=%s -> %d steps", tr.max_epochs, max_steps)
    pin = pin_memory_for(str(tr.device))
    coll = collate(tokenizer)
    streams = {}
    for i, task in enumerate(task_names):
        ds = train_sets[task]
        lengths = ds["length"] if data_cfg.get("group_by_length") else None
        bs = TaskBatchSampler(
            len(ds), int(data_cfg.batch_size), seed=int(cfg.seed) * 1000 + i, lengths=lengths,
            group_by_length=bool(data_cfg.get("group_by_length")),
            rank=dist_info.rank, world_size=dist_info.world_size,  # each rank its own shard of every task
        )
        streams[task] = TaskStream(ds, bs, coll, num_workers=int(data_cfg.num_workers), pin_memory=pin)
    dev_loaders = {
        t: DataLoader(dev_sets[t], batch_size=int(data_cfg.eval_batch_size), shuffle=False, collate_fn=coll,
                      pin_memory=pin)
        for t in task_names
    }
    settings = settings_from_cfg(cfg, max_steps)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger = build_logger(OmegaConf.to_container(cfg.logger, resolve=True), run_dir, resolved) if main else NullLogger()
    metrics: dict[str, Any] | None = None
    try:
        trainer = Trainer(
            model, balancer, sampler, streams, dev_loaders, settings, run_dir, logger=logger,
            checkpoint_meta={"labels": labels, "config": resolved},
        )
        # what a checkpoint needs to be rebuilt offline: the tokenizer and the encoder's architecture
        if main:
            tokenizer.save_pretrained(run_dir / "checkpoints" / "tokenizer")
            model_enc.config.save_pretrained(run_dir / "checkpoints" / "encoder_config")
        log.info(
            "training %s on %s for %d steps (sampler=%s, balancer=%s, device=%s, precision=%s)",
            enc_cfg.name_or_path, ", ".join(task_names), max_steps, sampler.registry_name,
            balancer.registry_name, trainer.device, trainer.precision,
        )
        out = trainer.fit()
        best, last = out["best"], out["last"]
        majority = {t: majority_macro_f1(best.labels.get(t) or list(dev_sets[t]["labels"]), len(labels[t])) for t in task_names}
        table = trainer.table(best, majority)
        log.info("best dev scores (step %d):\n%s", best.step, table)
        if main:
            print(f"\nBest dev scores (step {best.step}) — run dir: {run_dir}\n{table}\n")
        metrics = {
            "avg_macro_f1": best.average,
            "best_step": best.step,
            "tasks": {t: vars(s) for t, s in best.scores.items()},
            "last": {"step": last.step, "avg_macro_f1": last.average, "tasks": {t: vars(s) for t, s in last.scores.items()}},
            "majority_macro_f1": majority,
            "steps": trainer.step,
            "max_steps": max_steps,
            "stopped_early": out["stopped_early"],
            "wall_seconds": time.perf_counter() - t_start,
            "train_seconds": out["train_seconds"],
            "samples_per_second": out["samples_per_second"],
            "sampler": {"name": sampler.registry_name, "proportions": sampler.proportions(), "counts": sampler.counts},
            "balancer": {"name": balancer.registry_name, "last_weights": balancer.last_weights},
            "nonfinite_steps_skipped": trainer.nonfinite_skipped,
            "fp16_overflow_steps_skipped": trainer.overflow_skipped,
            "resumed_from": out["resumed_from"],
            "world_size": dist_info.world_size,
            "data": reports,
            "history": trainer.history,
        }
        if main:  # rank 0 writes; under torchrun the other ranks wait at the cleanup barrier
            write_json(run_dir / "metrics.json", metrics)
            # plots (and the best checkpoint's dev predictions) never fail the run: problems are logged
            write_run_plots_after_fit(trainer, run_dir, metrics, _label_names(cfg, labels))
    finally:
        logger.finish(metrics)  # also on errors (metrics=None): a wandb run is closed and marked failed
    mdist.cleanup(dist_info)
    return metrics

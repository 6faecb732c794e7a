"""One training run: the build steps in order, the fit, and the run directory's results."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtl.evaluation.metrics import format_table, majority_macro_f1
from mtl.evaluation.plots import write_run_outputs
from mtl.registry import import_modules
from mtl.training import distributed as mdist
from mtl.training.build import (
    RunData,
    build_balancer,
    build_data,
    build_dev_loaders,
    build_encoder,
    build_model,
    build_sampler,
    build_settings,
    build_streams,
    check_compatible,
    max_steps_for,
    pin_memory_for,
    seed_everything,
)
from mtl.training.loggers import build_logger
from mtl.training.trainer import NullLogger, Trainer, TrainerState
from mtl.utils.files import write_json

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train one configuration; returns the metrics written to ``metrics.json``."""
    # under torchrun: join the process group; every rank uses rank 0's run dir; rank 0 alone writes files
    dist_info = mdist.init_distributed()
    run_dir = mdist.agree_run_dir(run_dir)
    mdist.quiet_other_ranks()
    main = dist_info.is_main
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    import_modules(cfg.imports or [])
    seed_everything(int(cfg.seed))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")

    # 1. data -> model
    encoder, tokenizer = build_encoder(cfg.encoder)
    data = build_data(cfg, tokenizer)
    if cfg.encoder.trim_vocab:  # keep only the embedding rows of tokens in the data (tokenizer unchanged)
        from mtl.models.vocab_trim import trim_for_run

        trim_for_run(encoder, tokenizer, cfg, [*data.train.values(), *data.dev.values()])
    model = build_model(cfg, encoder, data.num_labels)
    # 2. balancer and sampler
    balancer = build_balancer(cfg.balancer, data.tasks)
    sampler = build_sampler(cfg.sampler, data.train_sizes, int(cfg.seed))
    check_compatible(balancer, sampler)
    # 3. loaders and settings
    pin = pin_memory_for(str(cfg.trainer.device))
    streams = build_streams(cfg.data, data.train, tokenizer, seed=int(cfg.seed), rank=dist_info.rank,
                            world_size=dist_info.world_size, pin_memory=pin)
    dev_loaders = build_dev_loaders(cfg.data, data.dev, tokenizer, pin_memory=pin)
    settings = build_settings(cfg, max_steps_for(cfg, sampler, dist_info.world_size))
    # 4. train
    logger = build_logger(OmegaConf.to_container(cfg.logger, resolve=True), run_dir, resolved) if main else NullLogger()
    metrics: dict[str, Any] | None = None
    try:
        trainer = Trainer(model, balancer, sampler, streams, dev_loaders, settings, run_dir, logger=logger,
                          checkpoint_meta={"labels": data.labels, "config": resolved})
        if main:  # what a checkpoint needs to be rebuilt offline: the tokenizer and the encoder's architecture
            tokenizer.save_pretrained(run_dir / "checkpoints" / "tokenizer")
            encoder.config.save_pretrained(run_dir / "checkpoints" / "encoder_config")
        log.info(
            "training %s on %s for %d steps (sampler=%s, balancer=%s, device=%s, precision=%s)",
            cfg.encoder.name_or_path, ", ".join(data.tasks), settings.max_steps, sampler.registry_name,
            balancer.registry_name, trainer.device, trainer.precision,
        )
        state = trainer.fit()
        # 5. results
        metrics = run_metrics(state, data, trainer, settings.max_steps, dist_info.world_size,
                              wall_seconds=time.perf_counter() - t_start)
        table = format_table(state.best_eval.scores, metrics["majority_macro_f1"])
        log.info("best dev scores (step %d):\n%s", state.best_eval.step, table)
        if main:  # rank 0 writes; under torchrun the other ranks wait at the cleanup barrier
            print(f"\nBest dev scores (step {state.best_eval.step}) — run dir: {run_dir}\n{table}\n")
            write_json(run_dir / "metrics.json", metrics)
            # dev_predictions.json (the best evaluation's, already computed) and the plots; never fails the run
            write_run_outputs(run_dir, metrics, label_names(cfg, data.labels), state.best_eval)
    finally:
        logger.finish(metrics)  # also on errors (metrics=None): a wandb run is closed and marked failed
    mdist.cleanup(dist_info)
    return metrics


def label_names(cfg: DictConfig, labels: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each task's readable label names (``tasks.<t>.label_names``, else its labels)."""
    return {t: [str(x) for x in (cfg.tasks[t].get("label_names") or labels[t])] for t in labels}


def run_metrics(
    state: TrainerState, data: RunData, trainer: Trainer, max_steps: int, world_size: int, wall_seconds: float
) -> dict[str, Any]:
    """What ``metrics.json`` holds: the best and last evaluations, the run's counters and its data."""
    best, last = state.best_eval, state.last_eval
    assert best is not None and last is not None
    majority = {
        t: majority_macro_f1(best.labels.get(t) or list(data.dev[t]["labels"]), len(data.labels[t]))
        for t in data.tasks
    }
    return {
        "avg_macro_f1": best.average,
        "best_step": best.step,
        "tasks": {t: vars(s) for t, s in best.scores.items()},
        "last": {"step": last.step, "avg_macro_f1": last.average, "tasks": {t: vars(s) for t, s in last.scores.items()}},
        "majority_macro_f1": majority,
        "steps": state.step,
        "max_steps": max_steps,
        "stopped_early": state.stopped_early,
        "wall_seconds": wall_seconds,
        "train_seconds": state.train_seconds,
        "samples_per_second": state.samples_per_second,
        "sampler": {"name": trainer.sampler.registry_name, "proportions": trainer.sampler.proportions(),
                    "counts": trainer.sampler.counts},
        "balancer": {"name": trainer.balancer.registry_name, "last_weights": trainer.balancer.last_weights},
        "nonfinite_steps_skipped": state.nonfinite_skipped,
        "fp16_overflow_steps_skipped": state.overflow_skipped,
        "resumed_from": state.resumed_from,
        "world_size": world_size,
        "data": data.reports,
        "history": state.history,
    }

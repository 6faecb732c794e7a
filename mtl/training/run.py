"""One training run: the build steps in order, the fit, and the run directory's results."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtl.evaluation.decision import never_predicted
from mtl.evaluation.metrics import format_table, majority_macro_f1
from mtl.evaluation.plots import write_run_outputs
from mtl.evaluation.results import EvalResult
from mtl.registry import import_modules
from mtl.training import checkpoint as ckpt
from mtl.training import distributed as mdist
from mtl.training.build import (
    RunData,
    build_balancer,
    build_data,
    build_decision,
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
from mtl.training.validate import (
    ConfigError,
    check_resume_identity,
    check_run_dir,
    clear_run_outputs,
    lock_run_dir,
    validate_config,
)
from mtl.utils.files import atomic_write_text, write_json

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train one configuration; returns the metrics written to ``metrics.json``.

    Before any data is read: the config is validated, the run directory claimed (refused when it holds
    another run or another process writes there) and a resumed checkpoint's identity checked; only then,
    once the run is built, is ``config.yaml`` written.
    """
    # under torchrun: join the process group; every rank uses rank 0's run dir; rank 0 alone writes files
    dist_info = mdist.init_distributed()
    run_dir = mdist.agree_run_dir(run_dir)
    mdist.quiet_other_ranks()
    main = dist_info.is_main
    t_start = time.perf_counter()
    import_modules(cfg.imports or [])
    validate_config(cfg)  # every rank: the same config, the same verdict
    with ExitStack() as stack:
        # rank 0 claims the directory; its verdict (or error) is every rank's
        clear_old = _on_main(main, lambda: _claim(stack, cfg, run_dir))
        return _train(cfg, run_dir, dist_info, clear_old, t_start)


def _on_main(main: bool, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0; its result, or its exception, on every rank (no rank left waiting)."""
    out: Any = None
    err: BaseException | None = None
    if main:
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            err = exc
    out, err = mdist.broadcast_object((out, err))
    if err is not None:
        raise err
    return out


def _claim(stack: ExitStack, cfg: DictConfig, run_dir: Path) -> bool:
    """Lock ``run_dir`` for this run (released when ``stack`` closes) and check that it may write there."""
    stack.enter_context(lock_run_dir(run_dir))
    resume_path = ckpt.resolve_resume(cfg.trainer.resume, run_dir)
    return check_run_dir(run_dir, resume_spec=cfg.trainer.resume, resume_path=resume_path,
                         overwrite=bool(cfg.trainer.get("overwrite", False)))


def _train(cfg: DictConfig, run_dir: Path, dist_info: mdist.DistInfo, clear_old: bool, t_start: float) -> dict[str, Any]:
    main = dist_info.is_main
    resume = ckpt.find_resume(cfg.trainer.resume, run_dir)  # an unreadable last.pt falls back to prev.pt
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if resume is not None:  # before the data is read: a different run is refused in one line
        check_resume_identity(resume.state.get("config"), resolved, resume.path)
    seed_everything(int(cfg.seed))

    # 1. data -> model
    encoder, tokenizer = build_encoder(cfg.encoder)
    data = build_data(cfg, tokenizer)
    if cfg.encoder.trim_vocab:  # keep only the embedding rows of tokens in the data (tokenizer unchanged)
        from mtl.models.vocab_trim import trim_for_run

        trim_for_run(encoder, tokenizer, cfg, [*data.train.values(), *data.dev.values()])
    class_counts = data.class_counts  # the training split actually used (after capping and skipping; logged)
    model = build_model(cfg, encoder, data.num_labels, class_counts)
    # 2. balancer and sampler
    balancer = build_balancer(cfg.balancer, data.tasks)
    sampler = build_sampler(cfg.sampler, data.train_sizes, int(cfg.seed))
    check_compatible(balancer, sampler)
    # 3. loaders and settings
    pin = pin_memory_for(str(cfg.trainer.device))
    streams = build_streams(cfg.data, data.train, tokenizer, seed=int(cfg.seed), rank=dist_info.rank,
                            world_size=dist_info.world_size, pin_memory=pin)
    dev_loaders = build_dev_loaders(cfg.data, data.dev, tokenizer, pin_memory=pin)
    max_steps = max_steps_for(cfg, sampler, dist_info.world_size)
    if max_steps <= 0:
        raise ConfigError(f"trainer.max_epochs={cfg.trainer.max_epochs}: gives {max_steps} steps; train longer")
    settings = build_settings(cfg, max_steps)
    # 4. train
    logger = build_logger(OmegaConf.to_container(cfg.logger, resolve=True), run_dir, resolved) if main else NullLogger()
    metrics: dict[str, Any] | None = None
    try:
        trainer = Trainer(model, balancer, sampler, streams, dev_loaders, settings, run_dir, logger=logger,
                          checkpoint_meta={"labels": data.labels, "config": resolved, "class_counts": class_counts},
                          decision=build_decision(cfg), class_counts=class_counts)
        trainer.resume_from(resume)  # the state restored now: a checkpoint that does not fit fails here
        del resume
        if main:  # the run is valid: its config (and, with trainer.overwrite=true, no files of the run before)
            if clear_old:
                log.info("trainer.overwrite=true: removed %s", ", ".join(clear_run_outputs(run_dir)) or "nothing")
            atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            # what a checkpoint needs to be rebuilt offline: the tokenizer and the encoder's architecture
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
                              wall_seconds=time.perf_counter() - t_start, names=label_names(cfg, data.labels))
        table = format_table(state.best_eval.scores, metrics["majority_macro_f1"])
        table += "\n" + decision_line(metrics["decision"])
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


def decision_line(summary: Mapping[str, Any]) -> str:
    """One line with every rule's dev average (``argmax 0.3963 | logit_adjusted 0.4202 | tuned_biases 0.4503``)
    and the run's own rule and score."""
    parts = [f"{r} {v:.4f}" for r, v in summary["averages"].items() if r != "tuned_biases_in_sample"]
    line = f"decision rules (dev avg macro-F1; tuned_biases cross-fitted): {' | '.join(parts)}; "
    rule = summary["rule"]
    if rule == "argmax":
        return line + "this run's rule: argmax"
    return line + (f"this run's rule: {rule}, its score {summary['averages'][rule]:.4f} "
                   "(the table above is argmax's)")


def decision_summary(ev: EvalResult, names: Mapping[str, Sequence[str]], meta: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics.json``'s ``decision`` block: every rule's average and per-task macro-F1 side by side, the
    classes each rule never predicts on dev, and the rule, τ and fitted biases prediction applies."""
    rules = ev.rules()
    tasks = {}
    for t in ev.scores:
        entry: dict[str, Any] = {"macro_f1": {r: ev.task_macro_f1(t, r) for r in rules}}
        d = ev.decisions.get(t) or {}
        preds = dict(d.get("predictions") or {})
        if "argmax" not in preds and ev.predictions.get(t) is not None:
            preds["argmax"] = ev.predictions[t]
        entry["never_predicted"] = {r: never_predicted(p, names[t]) for r, p in preds.items() if len(p)}
        entry["biases"] = list(d.get("biases") or [])
        tasks[t] = entry
    return {
        "rule": ev.rule, "tau": meta.get("tau"), "step": ev.step,
        "averages": {r: ev.rule_average(r) for r in rules},
        "tasks": tasks,
        "note": "tuned_biases is the two-fold cross-fitted score (biases fitted on one half of dev, scored on the "
                "other, swapped); tuned_biases_in_sample is optimistic and shown for reference only",
    }


def run_metrics(
    state: TrainerState, data: RunData, trainer: Trainer, max_steps: int, world_size: int, wall_seconds: float,
    names: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """What ``metrics.json`` holds: the best and last evaluations, the run's counters and its data."""
    best, last = state.best_eval, state.last_eval
    assert best is not None and last is not None
    label_names_of = dict(names or data.labels)
    majority = {
        t: majority_macro_f1(best.labels.get(t) or list(data.dev[t]["labels"]), len(data.labels[t]))
        for t in data.tasks
    }
    return {
        "avg_macro_f1": best.average,  # under the run's decision rule (argmax unless decision=... says otherwise)
        "best_step": best.step,
        "tasks": {t: vars(s) for t, s in best.scores.items()},  # argmax scores
        "decision": decision_summary(best, label_names_of, trainer.decision_meta(best)),
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
        "class_counts": data.class_counts,  # the training label counts (the priors of the losses and rules)
        "history": state.history,
    }

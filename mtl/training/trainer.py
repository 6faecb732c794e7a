"""The multi-task training loop: sample tasks, balance, step, evaluate, keep the best."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mtl.balancers.base import Balancer
from mtl.data.batching import TaskStream
from mtl.evaluation.metrics import TaskScores, average_macro_f1, format_table, task_scores
from mtl.models.multitask import MultiTaskModel
from mtl.samplers.base import TaskSampler
from mtl.training.gradients import GradientEngine, StepGradients
from mtl.training.loggers import CSVLogger, MetricsLogger
from mtl.training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """Raised when the run cannot go on (e.g. repeated non-finite losses)."""


@dataclass
class TrainerSettings:
    max_steps: int = 1000
    eval_every: int = 200
    log_every: int = 10
    lr: float = 3e-5
    head_lr: float | None = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    grad_clip: float | None = 1.0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    early_stopping_patience: int | None = None
    save_best: bool = True
    max_consecutive_nonfinite: int = 5
    progress: bool = True
    ema_accuracy: float = 0.9


@dataclass
class EvalResult:
    step: int
    scores: dict[str, TaskScores]
    predictions: dict[str, list[int]] = field(default_factory=dict)
    labels: dict[str, list[int]] = field(default_factory=dict)

    @property
    def average(self) -> float:
        return average_macro_f1(self.scores)

    def flat(self) -> dict[str, float]:
        out = {"avg_macro_f1": self.average}
        for t, s in self.scores.items():
            out.update({f"{t}/macro_f1": s.macro_f1, f"{t}/accuracy": s.accuracy, f"{t}/loss": s.loss})
        return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={name} but CUDA is not available here; use trainer.device=cpu or auto")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if name not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"trainer.precision must be auto, fp32, bf16 or fp16, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("fp16 with a loss scaler needs a CUDA device; use bf16 or fp32 on CPU")
    return name


class Trainer:
    """Owns the optimiser, the step loop, evaluation and the best checkpoint."""

    def __init__(
        self,
        model: MultiTaskModel,
        balancer: Balancer,
        sampler: TaskSampler,
        streams: Mapping[str, TaskStream],
        dev_loaders: Mapping[str, DataLoader],
        settings: TrainerSettings,
        run_dir: str | Path,
        logger: MetricsLogger | None = None,
        checkpoint_meta: dict[str, Any] | None = None,
    ) -> None:
        self.settings = s = settings
        self.device = resolve_device(s.device)
        self.precision = resolve_precision(s.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model = model.to(self.device)
        self.balancer = balancer.to(self.device)
        self.sampler = sampler
        self.streams = dict(streams)
        self.dev_loaders = dict(dev_loaders)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = logger or CSVLogger(self.run_dir)
        self.checkpoint_meta = checkpoint_meta or {}
        self.optimizer = build_optimizer(model, balancer, s.lr, s.head_lr, s.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, s.max_steps, s.warmup)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.engine = GradientEngine(
            model,
            balancer,
            autocast=self._autocast,
            loss_scale=self.scaler.scale if self.precision == "fp16" else None,
            scale_value=(lambda: float(self.scaler.get_scale())) if self.precision == "fp16" else None,
        )
        self.step = 0
        self.best_metric = -math.inf
        self.best_step = -1
        self.evals_without_improvement = 0
        self.task_accuracy: dict[str, float] = {}
        self.nonfinite_skipped = 0
        self._consecutive_nonfinite = 0
        self.samples_seen = 0
        self.train_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self._last_grad_norm: float | None = None

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _to_device(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # ------------------------------------------------------------------ one step
    def train_step(self) -> StepGradients | None:
        s = self.settings
        tasks = self.sampler.draw(self.step, s.max_steps)
        batches = {t: self._to_device(self.streams[t].next()) for t in tasks}
        self.model.train()
        result = self.engine.step(batches, self.step, s.max_steps, self.task_accuracy)
        bad = [t for t, x in zip(result.tasks, result.losses.tolist(), strict=True) if not math.isfinite(x)]
        grad_norm = None
        if not bad:
            if self.precision == "fp16":
                self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            if s.grad_clip:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, s.grad_clip))
            if grad_norm is not None and not math.isfinite(grad_norm) and self.precision != "fp16":
                bad = ["(gradient)"]
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_skipped += 1
            self._consecutive_nonfinite += 1
            log.warning("step %d: non-finite loss for %s; step skipped", self.step, ", ".join(bad))
            if self._consecutive_nonfinite >= s.max_consecutive_nonfinite:
                raise TrainingStopped(
                    f"{self._consecutive_nonfinite} consecutive steps with a non-finite loss or gradient "
                    f"(last: task {', '.join(bad)} at step {self.step}); try a lower optim.lr, "
                    "trainer.precision=fp32, or check the data of that task"
                )
            self.step += 1
            self.scheduler.step()
            return None
        self._consecutive_nonfinite = 0
        inp = result.balance_input
        self.balancer.before_optimizer_step(inp)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.balancer.after_optimizer_step(inp)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        for t, (correct, n) in result.correct.items():
            acc = correct / max(n, 1)
            prev = self.task_accuracy.get(t)
            self.task_accuracy[t] = acc if prev is None else s.ema_accuracy * prev + (1 - s.ema_accuracy) * acc
            self.samples_seen += n
        self._last_grad_norm = grad_norm
        self.step += 1
        return result

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, loaders: Mapping[str, DataLoader] | None = None, keep_predictions: bool = False) -> EvalResult:
        loaders = self.dev_loaders if loaders is None else loaders
        self.model.eval()
        scores, preds_all, labels_all = {}, {}, {}
        for task, loader in loaders.items():
            preds: list[int] = []
            labels: list[int] = []
            loss_sum, n = 0.0, 0
            for batch in loader:
                batch = self._to_device(batch)
                with self._autocast():
                    logits = self.model(task, batch).float()
                y = batch["labels"]
                loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                n += int(y.numel())
                preds.extend(logits.argmax(-1).tolist())
                labels.extend(y.tolist())
            scores[task] = task_scores(labels, preds, self.model.num_labels[task], loss_sum / max(n, 1))
            if keep_predictions:
                preds_all[task], labels_all[task] = preds, labels
        return EvalResult(self.step, scores, preds_all, labels_all)

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, path: Path, metric: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(
            {"model": self.model.state_dict(), "step": self.step, "avg_macro_f1": metric, **self.checkpoint_meta},
            tmp,
        )
        os.replace(tmp, path)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        s = self.settings
        best_path = self.run_dir / "checkpoints" / "best.pt"
        bar = tqdm(total=s.max_steps, initial=self.step, desc="train", disable=not s.progress, dynamic_ncols=True)
        last_eval: EvalResult | None = None
        best_eval: EvalResult | None = None
        stopped_early = False
        t_start = time.perf_counter()
        while self.step < s.max_steps:
            t0 = time.perf_counter()
            result = self.train_step()
            self.train_seconds += time.perf_counter() - t0
            bar.update(1)
            if result is not None and (self.step % s.log_every == 0 or self.step == 1):
                values = {f"loss/{t}": float(x) for t, x in zip(result.tasks, result.losses.tolist(), strict=True)}
                values.update(self.balancer.log_values())
                values.update(result.cosines())
                values.update({f"proportion/{t}": p for t, p in self.sampler.proportions().items()})
                values["lr"] = self.scheduler.get_last_lr()[0]
                if self._last_grad_norm is not None:
                    values["grad_norm"] = self._last_grad_norm
                values["samples_per_s"] = self.samples_seen / max(self.train_seconds, 1e-9)
                self.logger.log(self.step, values, "train")
                bar.set_postfix(loss=f"{float(result.losses.mean()):.3f}")
            if self.step % s.eval_every == 0 or self.step == s.max_steps:
                last_eval = self.evaluate()
                avg = last_eval.average
                self.logger.log(self.step, last_eval.flat(), "eval")
                self.history.append({"step": self.step, **last_eval.flat()})
                improved = avg > self.best_metric
                if improved:
                    self.best_metric, self.best_step, best_eval = avg, self.step, last_eval
                    self.evals_without_improvement = 0
                    if s.save_best:
                        self.save_model(best_path, avg)
                else:
                    self.evals_without_improvement += 1
                log.info("step %d: dev average macro-F1 %.4f%s", self.step, avg, " (best)" if improved else "")
                if s.early_stopping_patience and self.evals_without_improvement >= s.early_stopping_patience:
                    log.info("early stopping: no improvement in %d evaluations", self.evals_without_improvement)
                    stopped_early = True
                    break
        bar.close()
        wall = time.perf_counter() - t_start
        assert last_eval is not None and best_eval is not None
        return {
            "best": best_eval,
            "last": last_eval,
            "stopped_early": stopped_early,
            "wall_seconds": wall,
            "train_seconds": self.train_seconds,
            "samples_per_second": self.samples_seen / max(self.train_seconds, 1e-9),
        }

    def table(self, result: EvalResult, baselines: Mapping[str, float] | None = None) -> str:
        return format_table(result.scores, baselines)

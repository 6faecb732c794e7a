"""The multi-task training loop: sample tasks, balance, step, evaluate, keep the best.

Speed and scale (``docs/scale.md``): bf16 autocast or fp16 with a loss scaler, TF32 matmuls on
CUDA, optional ``torch.compile`` of the encoder, gradient accumulation that gives the same
update as the full batch (``trainer.grad_accum_steps``), torch.distributed under ``torchrun``
(gradients averaged after the engine step; sharded, gathered evaluation; rank 0 writes), and
complete resumable checkpoints (``trainer.checkpoint_every``, ``trainer.resume``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler, Subset
from tqdm.auto import tqdm

from mtl.balancers.base import Balancer
from mtl.data.batching import TaskStream
from mtl.evaluation.decision import DecisionSettings, score_rules
from mtl.evaluation.metrics import format_table, label_indices, multilabel_task_scores, task_scores
from mtl.evaluation.results import EvalResult
from mtl.models.multitask import MultiTaskModel
from mtl.samplers.base import TaskSampler
from mtl.training import checkpoint as ckpt
from mtl.training import distributed as mdist
from mtl.training.averaging import WeightAverage
from mtl.training.engine import GradientEngine, StepResult, batch_rows, split_batch
from mtl.training.loggers import CSVLogger, MetricsLogger
from mtl.training.optim import build_optimizer, build_scheduler
from mtl.training.tricks import Tricks
from mtl.utils.device import resolve_device, resolve_precision

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """Raised when the run cannot go on (e.g. repeated non-finite losses)."""


class OutOfMemory(TrainingStopped):
    """The accelerator ran out of memory; the message says which settings to lower."""


#: the fields of TrainerSettings that form the ``optim`` config group (the rest form ``trainer``)
OPTIM_KEYS = ("optimizer", "lr", "head_lr", "layer_decay", "weight_decay", "warmup", "grad_clip")


@dataclass
class TrainerSettings:
    """The ``optim`` and ``trainer`` config groups in one place: these defaults ARE the groups' defaults
    (``mtl.config`` registers them with Hydra), so Python and the command line train the same way."""

    # --- optim: AdamW with separate encoder and head learning rates, linear warm-up then linear decay
    optimizer: str = "adamw"  # adamw | adafactor (transformers' Adafactor at these learning rates)
    lr: float = 5.0e-5  # encoder
    head_lr: float | None = 1.0e-3  # task heads (None: same as lr)
    layer_decay: float | None = None  # layer-wise lr decay: layer i of L at lr * layer_decay^(L - i) (docs/training_tricks.md)
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of training (< 1) or a number of steps (>= 1)
    grad_clip: float | None = 1.0  # max global gradient norm (None: off)
    # --- trainer: the loop
    max_steps: int = 2000
    max_epochs: float | None = None  # if set, overrides max_steps (an epoch as the sampler defines it)
    eval_every: int = 500  # evaluate on dev every N steps, and always at the end
    log_every: int = 10
    precision: str = "auto"  # auto (bf16 on GPUs and on CPUs with native bf16, else fp16/fp32) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    early_stopping_patience: int | None = None  # stop after N evaluations without a better average macro-F1
    save_best: bool = True  # checkpoints/best.pt holds the best average dev macro-F1
    # steps with a NaN/inf loss or gradient are skipped; this many in a row, of one task or of any, stop the run
    max_consecutive_nonfinite: int = 5
    progress: bool = True
    # --- speed and scale (docs/scale.md)
    grad_accum_steps: int = 1  # split each task batch into k micro-batches (same update, ~1/k activations)
    compile: bool | str = False  # torch.compile the encoder (true, or a mode: reduce-overhead | max-autotune)
    tf32: bool = True  # TF32 matmuls/convolutions on Ampere+ GPUs (ignored on CPU)
    checkpoint_every: int | None = 500  # full resumable state to checkpoints/last.pt every N steps and at the end
    resume: str | None = None  # auto (this run dir's last.pt) | <checkpoint file> | <run dir>
    overwrite: bool = False  # replace the run already in the run directory (else that directory is refused)
    # --- training tricks (docs/training_tricks.md), all off by default
    adversarial: str | None = None  # null | fgm | pgd: adversarial perturbation of the word embeddings
    # the defaults of the four below are stated once, in mtl.training.tricks.Tricks
    adv_epsilon: float = Tricks.adv_epsilon  # the perturbation's L2 norm per example (pgd: its bound)
    adv_steps: int = Tricks.adv_steps  # pgd: ascent steps
    adv_alpha: float = Tricks.adv_alpha  # pgd: step size
    rdrop_alpha: float = Tricks.rdrop_alpha  # R-Drop: weight of the symmetric KL between two dropout passes (0: off)
    ema_decay: float | None = None  # evaluate and save an exponential moving average of the weights (e.g. 0.999)
    swa_start: float | None = None  # or stochastic weight averaging from this fraction of training (< 1) or step


class NullLogger:
    """What ranks other than 0 log to."""

    def log(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        return None

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        return None


@dataclass
class TrainerState:
    """Everything about the run's progress, saved and restored as a whole (with the model, optimiser,
    scheduler, scaler, balancer, sampler, streams and RNG states, in :meth:`Trainer.state_dict`)."""

    step: int = 0
    best_metric: float = -math.inf
    best_step: int = -1
    evals_without_improvement: int = 0
    nonfinite_skipped: int = 0
    overflow_skipped: int = 0  # fp16: steps the loss scaler skipped while lowering its scale
    consecutive_nonfinite: int = 0  # skipped steps in a row, whichever task
    consecutive_nonfinite_by_task: dict[str, int] = field(default_factory=dict)  # per task: its steps in a row
    samples_seen: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    last_eval: EvalResult | None = None
    best_eval: EvalResult | None = None
    stopped_early: bool = False
    finished: bool = False
    last_grad_norm: float | None = None
    resumed_from: str | None = None

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / max(self.train_seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["history"] = list(self.history)
        out["consecutive_nonfinite_by_task"] = dict(self.consecutive_nonfinite_by_task)
        for key in ("last_eval", "best_eval"):
            out[key] = out[key].to_dict() if out[key] is not None else None
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainerState:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for key in ("last_eval", "best_eval"):
            if kw.get(key) is not None:
                kw[key] = EvalResult.from_dict(kw[key])
        kw["history"] = list(kw.get("history") or [])
        kw["consecutive_nonfinite_by_task"] = dict(kw.get("consecutive_nonfinite_by_task") or {})
        return cls(**kw)


def enable_tf32() -> None:
    """TF32 for fp32 matmuls and convolutions on Ampere+ GPUs (no effect on CPU).

    Through the ``allow_tf32`` flags, which torch >= 2.9 mirrors into its ``fp32_precision`` settings.
    Setting ``torch.backends.cuda.matmul.fp32_precision`` alone instead leaves the legacy state behind,
    and every later ``torch.get_float32_matmul_precision()`` or ``matmul.allow_tf32`` read (Inductor's
    GEMM autotuning under ``trainer.compile=max-autotune`` among them) raises "mix of the legacy and
    new APIs".
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


class Trainer:
    """Owns the optimiser, the step loop, evaluation and the checkpoints."""

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
        decision: DecisionSettings | None = None,
        class_counts: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.settings = s = settings
        # every evaluation scores all decision rules; this one selects the best checkpoint (docs/losses.md)
        self.decision = decision or DecisionSettings()
        self.class_counts = {t: [int(c) for c in v] for t, v in (class_counts or {}).items()}
        if self.decision.rule == "logit_adjusted" and set(self.class_counts) != set(dev_loaders):
            raise ValueError("decision.rule=logit_adjusted needs the training class counts of every task")
        if int(s.grad_accum_steps) < 1:
            raise ValueError(f"trainer.grad_accum_steps must be >= 1, got {s.grad_accum_steps}")
        self.rank, self.world_size = mdist.get_rank(), mdist.get_world_size()
        self.is_main = self.rank == 0
        self.device = resolve_device(s.device)
        if self.device.type == "cuda" and self.device.index is not None:
            # the "current" device is the one the CUDA RNG state is saved from, the bf16 check and NCCL use
            torch.cuda.set_device(self.device)
        self.precision = resolve_precision(s.precision, self.device)
        if self.device.type == "cuda" and s.tf32:
            enable_tf32()
        self.model = model.to(self.device)
        self.balancer = balancer.to(self.device)
        mdist.broadcast_parameters(self.model)  # every rank starts from rank 0's weights
        mdist.broadcast_parameters(self.balancer)
        if s.compile:
            self._compile(s.compile)
        self.sampler = sampler
        self.streams = dict(streams)
        self.dev_loaders = dict(dev_loaders)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            self.logger: MetricsLogger = logger or CSVLogger(self.run_dir)
        else:
            self.logger = NullLogger()
        self.checkpoint_meta = checkpoint_meta or {}
        # fused AdamW on CUDA (one kernel for all parameters); torch's default elsewhere
        self.optimizer = build_optimizer(
            model, balancer, s.lr, s.head_lr, s.weight_decay, fused=True if self.device.type == "cuda" else None,
            layer_decay=s.layer_decay, optimizer=s.optimizer,
        )
        self.scheduler = build_scheduler(self.optimizer, s.max_steps, s.warmup)
        fp16 = self.precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.engine = GradientEngine(
            model,
            balancer,
            autocast=self._autocast,
            loss_scale=self.scaler.scale if fp16 else None,
            scale_value=(lambda: float(self.scaler.get_scale())) if fp16 else None,
            accum_steps=int(s.grad_accum_steps),
            tricks=Tricks(s.adversarial, float(s.adv_epsilon), int(s.adv_steps), float(s.adv_alpha),
                          float(s.rdrop_alpha)),
        )
        self.averager = self._build_averager()
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._shared_ids = {id(p) for p in self.model.shared_parameters()}
        self.state = TrainerState()
        self._resume_decided = False  # resume_from() called: fit() does not look for trainer.resume again

    @property
    def step(self) -> int:
        return self.state.step

    def _build_averager(self) -> WeightAverage | None:
        """EMA (``trainer.ema_decay``) or SWA (``trainer.swa_start``) of the trainable weights, or None."""
        s = self.settings
        if s.ema_decay is not None and s.swa_start is not None:
            raise ValueError("trainer.ema_decay and trainer.swa_start are alternatives: set one of them")
        if s.ema_decay is not None:
            return WeightAverage(self.model.parameters(), ema_decay=float(s.ema_decay))
        if s.swa_start is not None:
            start = float(s.swa_start)
            if start < 0:
                raise ValueError(f"trainer.swa_start={s.swa_start}: must be >= 0")
            first = int(round(start * s.max_steps)) if start < 1 else int(start)
            return WeightAverage(self.model.parameters(), swa_start=max(first, 1))
        return None

    def averaged(self):  # noqa: ANN201 - a context manager
        """Inside: the model holds the averaged weights when EMA/SWA is on (what evaluation and best.pt use)."""
        return self.averager.swapped() if self.averager is not None else nullcontext()

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _to_device(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _compile(self, how: bool | str) -> None:
        kwargs: dict[str, Any] = {}
        if isinstance(how, str) and how.lower() not in ("true", "default", "1", "yes"):
            kwargs["mode"] = how
        # in place (nn.Module.compile): parameter names and state_dict keys stay the same
        self.model.encoder.compile(**kwargs)
        log.info("torch.compile on the encoder%s", f" (mode={kwargs['mode']})" if kwargs else "")

    def _next_batches(self, tasks: list[str]) -> dict[str, list[dict[str, Tensor]]]:
        k = int(self.settings.grad_accum_steps)
        with ckpt.preserve_torch_rng():
            cpu = {t: self.streams[t].next() for t in tasks}
        return {t: [self._to_device(mb) for mb in split_batch(b, k)] for t, b in cpu.items()}

    def _oom_message(self, where: str, batches: Mapping[str, list[Mapping[str, Tensor]]] | None = None) -> str:
        k = int(self.settings.grad_accum_steps)
        shape = ""
        if batches:
            parts = []
            for t, mbs in batches.items():
                rows = sum(batch_rows(mb) for mb in mbs)
                tokens = max(int(mb["input_ids"].shape[1]) for mb in mbs) if "input_ids" in mbs[0] else 0
                parts.append(f"{t}: {rows} rows x {tokens} tokens")
            shape = f" ({'; '.join(parts)})"
        if where == "evaluation":
            hint = "Try a smaller data.eval_batch_size or a shorter encoder.max_length."
        else:
            hint = (
                f"Try a smaller data.batch_size, or trainer.grad_accum_steps={2 * k} (now {k}: the same update "
                f"from micro-batches of 1/{2 * k} of each task batch, less activation memory), a shorter "
                "encoder.max_length, trainer.precision=bf16, or encoder.freeze_embeddings=true."
            )
        return (
            f"out of memory on {self.device} during {where} at step {self.step}{shape}, "
            f"precision {self.precision}. {hint}"
        )

    # ------------------------------------------------------------------ one step
    def train_step(self) -> StepResult | None:
        s = self.settings
        tasks = self.sampler.draw(self.step, s.max_steps)
        batches = self._next_batches(tasks)
        self.model.train()
        try:
            return self._train_step(batches)
        except torch.OutOfMemoryError as exc:
            self.optimizer.zero_grad(set_to_none=True)
            raise OutOfMemory(self._oom_message("training", batches)) from exc

    def _train_step(self, batches: Mapping[str, list[dict[str, Tensor]]]) -> StepResult | None:
        s = self.settings
        fp16 = self.precision == "fp16"
        result = self.engine.step(batches, self.step, s.max_steps)
        if self.world_size > 1:
            # average every gradient over ranks (parameters mode already averaged the shared ones)
            skip = self._shared_ids if result.shared_grads_reduced else set()
            mdist.all_reduce_gradients(p for p in self._params if id(p) not in skip)
        bad = [t for t, x in zip(result.tasks, result.losses.tolist(), strict=True) if not math.isfinite(x)]
        grad_norm = None
        overflow = False
        unscaled = False
        if not bad:
            if fp16:
                self.scaler.unscale_(self.optimizer)
                unscaled = True
            # the guard's one host sync per step (the losses are on the host already)
            if s.grad_clip:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self._params, s.grad_clip))
            else:
                grads = [p.grad for p in self._params if p.grad is not None]
                grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
            if not math.isfinite(grad_norm):
                # fp16: an overflow while the scale is > 1 is the scaler's normal search for its scale
                # (read here, not every step: unscale_ leaves the scale as it was, update() changes it)
                if fp16 and float(self.scaler.get_scale()) > 1.0:
                    overflow = True
                else:
                    bad = ["(gradient)"]
        if overflow:
            self.scaler.update()  # found inf: lowers the scale; the optimiser step is skipped
            self.optimizer.zero_grad(set_to_none=True)
            self.state.overflow_skipped += 1
            log.debug("step %d: fp16 gradient overflow, loss scale now %g", self.step, self.scaler.get_scale())
            self._skip_step()
            return None
        if bad:
            if unscaled:
                self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self._count_nonfinite(result.tasks, bad)
            self._skip_step()
            return None
        self.state.consecutive_nonfinite = 0
        for t in result.tasks:
            self.state.consecutive_nonfinite_by_task[t] = 0
        self.balancer.before_optimizer_step()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.balancer.after_optimizer_step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.averager is not None:
            self.averager.update(self.step + 1)
        self.state.samples_seen += sum(n for _, n in result.counts.values())
        self.state.last_grad_norm = grad_norm
        self.state.step += 1
        return result

    def _count_nonfinite(self, tasks: list[str], bad: list[str]) -> None:
        """Count a skipped step against the tasks to blame; stop the run when one task (or every step) keeps
        failing. ``bad == ["(gradient)"]``: finite losses, non-finite total gradient: the step's tasks."""
        s, st = self.settings, self.state
        gradient_only = bad == ["(gradient)"]
        blamed = list(tasks) if gradient_only else bad
        st.nonfinite_skipped += 1
        st.consecutive_nonfinite += 1
        counts = st.consecutive_nonfinite_by_task
        for t in tasks:  # a task with a finite loss in a step skipped for another task is not broken
            counts[t] = counts.get(t, 0) + 1 if t in blamed else 0
        what = (f"non-finite gradient with finite losses (task {', '.join(blamed)})" if gradient_only
                else f"non-finite loss (task {', '.join(blamed)})")
        log.warning("step %d: %s; step skipped", self.step, what)
        worst = max(blamed, key=lambda t: st.consecutive_nonfinite_by_task.get(t, 0))
        n_task = st.consecutive_nonfinite_by_task.get(worst, 0)
        if n_task >= s.max_consecutive_nonfinite:
            raise TrainingStopped(
                f"{n_task} consecutive steps of task {worst} with a non-finite loss or gradient (last: "
                f"task {', '.join(blamed)} at step {self.step}), so task {worst} does not train; try a lower "
                f"optim.lr, trainer.precision=fp32, or check the data of task {worst}"
            )
        if st.consecutive_nonfinite >= s.max_consecutive_nonfinite:
            raise TrainingStopped(
                f"{st.consecutive_nonfinite} consecutive steps skipped with a non-finite loss or gradient (last: "
                f"task {', '.join(blamed)} at step {self.step}); try a lower optim.lr, trainer.precision=fp32, "
                "or check the data of those tasks"
            )

    def _skip_step(self) -> None:
        """A skipped step still uses up its data and its place in the schedule."""
        self.state.step += 1
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended here
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            self.scheduler.step()

    # ------------------------------------------------------------------ evaluation
    def _visit_order(self, loader: DataLoader, sharded: bool) -> tuple[DataLoader, list[int] | None]:
        """The loader to evaluate in this process and the dataset rows it visits, in visiting order.

        A loader whose sampler has an ``order`` (:class:`~mtl.data.batching.LengthSortedSampler`) visits
        its rows sorted by length; sharded under torch.distributed, rank ``r`` takes every ``W``-th row of
        that order. ``None``: the loader is used as it is, rows in the dataset's order.
        """
        order = getattr(loader.sampler, "order", None)
        shard = sharded and self.world_size > 1 and loader.batch_size is not None
        if order is None and not (shard and isinstance(loader.sampler, SequentialSampler)):
            return loader, None
        rows = list(order) if order is not None else list(range(len(loader.dataset)))  # type: ignore[arg-type]
        if shard:
            rows = rows[self.rank :: self.world_size]
        sub = DataLoader(
            Subset(loader.dataset, rows), batch_size=loader.batch_size, shuffle=False, collate_fn=loader.collate_fn,
            num_workers=loader.num_workers, pin_memory=loader.pin_memory,
        )
        return sub, rows

    @torch.no_grad()
    def evaluate(
        self, loaders: Mapping[str, DataLoader] | None = None, keep_predictions: bool = False, sharded: bool = False
    ) -> EvalResult:
        """Dev scores (predictions and labels in the datasets' order with ``keep_predictions``).

        ``sharded=True`` (what :meth:`fit` uses) is a collective under torch.distributed: every rank
        scores its strided share of each loader's dataset and the shards are gathered, so all ranks
        get the exact full-dev metrics. The default evaluates everything in this process (safe to call
        on one rank alone, e.g. rank 0 after training).
        """
        loaders = self.dev_loaders if loaders is None else loaders
        try:
            with ckpt.preserve_torch_rng():
                return self._evaluate(loaders, keep_predictions, sharded)
        except torch.OutOfMemoryError as exc:
            raise OutOfMemory(self._oom_message("evaluation")) from exc

    def _evaluate(self, loaders: Mapping[str, DataLoader], keep_predictions: bool, sharded: bool) -> EvalResult:
        self.model.eval()
        scores, preds_all, labels_all = {}, {}, {}
        decisions: dict[str, dict[str, Any]] = {}
        for task, full_loader in loaders.items():
            num_labels = self.model.num_labels[task]
            multi = self.model.is_multi_label(task)
            loader, rows = self._visit_order(full_loader, sharded)
            chunks: list[Tensor] = []
            labels: list[Any] = []
            loss_sum, n = 0.0, 0
            for batch in loader:
                batch = self._to_device(batch)
                with self._autocast():
                    logits = self.model(task, batch).float()
                y = batch["labels"]
                if multi:  # multi-hot [B, C]: the dev loss is the task's own (multi-label) loss
                    loss_sum += float(self.model.task_loss(task, logits, y, reduction="sum"))
                    n += int(y.shape[0])
                else:
                    loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                    n += int(y.numel())
                chunks.append(logits.cpu())
                labels.extend(y.tolist())
            task_logits = torch.cat(chunks) if chunks else torch.zeros(0, num_labels)
            if rows is not None:  # put every row's logits back at its dataset row (gathering the shards)
                parts = [(rows, task_logits, labels, loss_sum, n)]
                if sharded and self.world_size > 1:
                    parts = mdist.all_gather_object(parts[0])
                total = len(full_loader.dataset)  # type: ignore[arg-type]
                task_logits, labels = torch.zeros(total, num_labels), [0] * total
                loss_sum, n = 0.0, 0
                for idx, z, lab, ls, k in parts:
                    task_logits[torch.as_tensor(idx, dtype=torch.long)] = z
                    for i, li in zip(idx, lab, strict=True):
                        labels[i] = li
                    loss_sum += ls
                    n += k
            if multi:  # threshold 0 (ZLPR's decision rule); the single-label decision rules do not apply
                pred_hot = task_logits.numpy() > 0
                true_hot = torch.as_tensor(labels, dtype=torch.float32).reshape(-1, num_labels).numpy() > 0.5
                scores[task] = multilabel_task_scores(true_hot, pred_hot, num_labels, loss_sum / max(n, 1))
                preds_ml, labels_ml = label_indices(pred_hot, num_labels), label_indices(true_hot, num_labels)
                decisions[task] = {"multi_label": True, "macro_f1": {}, "biases": []}
                if keep_predictions:  # flattened: what never_predicted reads in the run's summary
                    decisions[task]["predictions"] = {"argmax": [i for row in preds_ml for i in row]}
                    preds_all[task], labels_all[task] = preds_ml, labels_ml
                continue
            preds = task_logits.argmax(-1).tolist()
            scores[task] = task_scores(labels, preds, num_labels, loss_sum / max(n, 1))
            decided = score_rules(task_logits, labels, num_labels, self.decision, self.class_counts.get(task))
            if not keep_predictions:
                decided.pop("predictions")
            decisions[task] = decided
            if keep_predictions:
                preds_all[task], labels_all[task] = preds, labels
        result = EvalResult(self.step, scores, preds_all, labels_all, decisions, self.decision.rule)
        return EvalResult.from_dict(result.to_dict())  # plain Python throughout (a checkpoint keeps it)

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, path: Path, metric: float) -> None:
        if not self.is_main:
            return
        try:
            ckpt.atomic_save(
                {"model": self.model.state_dict(), "step": self.step, "avg_macro_f1": metric,
                 "decision": self.decision_meta(self.state.best_eval), **self.checkpoint_meta},
                path,
            )
        except OSError as exc:
            raise ckpt.CheckpointError(f"cannot write checkpoint {path}: {type(exc).__name__}: {exc}") from exc

    def decision_meta(self, ev: EvalResult | None) -> dict[str, Any]:
        """What prediction needs to apply the run's decision rule: the rule, τ, the training class counts
        and the per-class biases fitted on all of dev at evaluation ``ev`` (the best one)."""
        d = self.decision
        return {
            "rule": d.rule, "tau": float(d.tau), "class_counts": self.class_counts,
            "biases": {t: list(v["biases"]) for t, v in (ev.decisions if ev is not None else {}).items()},
            "step": ev.step if ev is not None else None,
        }

    def _logger_state(self) -> Any:
        lg = self.logger
        return lg.state_dict() if hasattr(lg, "state_dict") else None  # type: ignore[attr-defined]

    def _load_logger_state(self, state: Any) -> None:
        if state is not None and self.is_main and hasattr(self.logger, "load_state_dict"):
            self.logger.load_state_dict(state)  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly (RNG states of every rank included)."""
        rng = mdist.all_gather_object(ckpt.capture_rng())
        return {
            "format": ckpt.FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "balancer": self.balancer.state_dict(),
            "averager": self.averager.state_dict() if self.averager is not None else None,
            "sampler": self.sampler.state_dict(),
            "streams": {t: s.state_dict() for t, s in self.streams.items()},
            "rng": rng,
            "world_size": self.world_size,
            "logger": self._logger_state(),
            "trainer": self.state.to_dict(),
            # what a plain model checkpoint has too, so last.pt also serves for prediction
            "step": self.step,
            "avg_macro_f1": self.state.best_metric,
            "decision": self.decision_meta(self.state.best_eval),
            **self.checkpoint_meta,
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the full state atomically (rank 0); every rank must call it (RNG states are gathered)."""
        path = Path(path) if path is not None else self.run_dir / "checkpoints" / ckpt.LAST
        state = self.state_dict()
        if self.is_main:  # verified, the one before it kept as prev.pt (a fallback for an unreadable last.pt)
            ckpt.save_rotating(state, path)
            log.info("step %d: checkpoint %s", self.step, path)
        return path

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != ckpt.FORMAT:
            raise ValueError(
                "not a resumable trainer checkpoint (best.pt holds only the model; resume from checkpoints/last.pt)"
            )
        old_cfg, new_cfg = state.get("config"), self.checkpoint_meta.get("config")
        if isinstance(old_cfg, dict) and isinstance(new_cfg, dict):
            from mtl.training.validate import check_resume_identity

            check_resume_identity(old_cfg, new_cfg, "the checkpoint")  # before any state is loaded
            diff = ckpt.config_differences(old_cfg, new_cfg)
            if diff:
                log.warning("resuming with a different configuration for: %s", ", ".join(diff[:20]))
        self.model.load_state_dict(state["model"])
        ckpt.load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.balancer.load_state_dict(state["balancer"])
        if self.averager is not None:
            if not state.get("averager"):
                raise ValueError("the checkpoint holds no weight average (EMA/SWA) for this run to continue")
            self.averager.load_state_dict(state["averager"])
        self.sampler.load_state_dict(state["sampler"])
        missing = set(self.streams) - set(state["streams"])
        if missing:
            raise ValueError(f"the checkpoint has no data position for tasks {sorted(missing)}")
        for t, stream in self.streams.items():
            stream.load_state_dict(state["streams"][t])
        self.state = TrainerState.from_dict(state["trainer"])
        self._load_logger_state(state.get("logger"))
        rng = state["rng"]
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            log.warning(
                "checkpoint written by %d process(es), resuming with %d: the data shards and dropout "
                "streams differ from an uninterrupted run", saved_world, self.world_size,
            )
        ckpt.restore_rng(rng[self.rank] if self.rank < len(rng) else rng[0])

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from the trainer checkpoint ``path`` (its ``prev.pt`` when ``path`` is unreadable)."""
        self.resume_from(ckpt.load_for_resume(path))

    def resume_from(self, point: ckpt.ResumePoint | None) -> None:
        """Restore ``point`` (None: start fresh); :meth:`fit` then no longer looks for ``trainer.resume``."""
        self._resume_decided = True
        if point is None:
            return
        old_cfg, new_cfg = point.state.get("config"), self.checkpoint_meta.get("config")
        if isinstance(old_cfg, dict) and isinstance(new_cfg, dict):
            from mtl.training.validate import check_resume_identity

            check_resume_identity(old_cfg, new_cfg, point.path)  # one line naming the file
        try:
            self.load_state_dict(point.state)
        except (KeyError, RuntimeError, ValueError) as exc:  # a state that does not fit this run: name the file
            raise ckpt.CheckpointError(f"cannot resume from {point.path}: {type(exc).__name__}: {exc}") from exc
        self.state.resumed_from = str(point.path)
        log.info("resumed from %s at step %d", point.path, self.step)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainerState:
        """Train to ``max_steps`` (or early stopping), resuming first if asked; returns the final state."""
        s = self.settings
        if not self._resume_decided:  # run() decides (and checks) before the data is read; direct use: here
            self.resume_from(ckpt.find_resume(s.resume, self.run_dir))
        best_path = self.run_dir / "checkpoints" / "best.pt"
        every = int(s.checkpoint_every or 0)
        # a progress bar on a terminal; in a file or a cluster log, one plain line every log_every steps
        on_terminal = sys.stderr.isatty()
        bar = tqdm(
            total=s.max_steps, initial=min(self.step, s.max_steps), desc="train",
            disable=not (s.progress and self.is_main and on_terminal), dynamic_ncols=True,
        )
        log_lines = s.progress and self.is_main and not on_terminal
        start_step, t_fit = self.step, time.perf_counter()
        while self.step < s.max_steps and not self.state.stopped_early:
            t0 = time.perf_counter()
            result = self.train_step()
            self.state.train_seconds += time.perf_counter() - t0
            bar.update(1)
            if result is not None and (self.step % s.log_every == 0 or self.step == 1):
                self._log_train(result)
                bar.set_postfix(loss=f"{float(result.losses.mean()):.3f}")
                if log_lines:
                    self._progress_line(result, start_step, time.perf_counter() - t_fit)
            if self.step % s.eval_every == 0 or self.step == s.max_steps:
                self._evaluate_and_track(best_path)
            if every and self.step % every == 0 and self.step < s.max_steps and not self.state.stopped_early:
                self.save_checkpoint()
        bar.close()
        if self.state.last_eval is None:  # max_steps reached before any step of this process (e.g. max_steps=0)
            self._evaluate_and_track(best_path)
        if not self.state.finished:
            self.state.finished = True
            if every:
                self.save_checkpoint()
        assert self.state.last_eval is not None and self.state.best_eval is not None
        return self.state

    def _progress_line(self, result: StepResult, start_step: int, elapsed: float) -> None:
        """``step 120/360  loss 1.234  31.2 samples/s  ETA 2m05s`` (ETA from this process's pace so far)."""
        done = self.step - start_step
        eta = elapsed / max(done, 1) * (self.settings.max_steps - self.step)
        log.info(
            "step %d/%d  loss %.4f  %.1f samples/s  ETA %dm%02ds", self.step, self.settings.max_steps,
            float(result.losses.mean()), self.state.samples_per_second, eta // 60, eta % 60,
        )

    def _log_train(self, result: StepResult) -> None:
        values = {f"loss/{t}": float(x) for t, x in zip(result.tasks, result.losses.tolist(), strict=True)}
        values.update(self.balancer.log_values())
        values.update(result.cosines())
        values.update({f"proportion/{t}": p for t, p in self.sampler.proportions().items()})
        values["lr"] = self.scheduler.get_last_lr()[0]
        if self.state.last_grad_norm is not None:
            values["grad_norm"] = self.state.last_grad_norm
        if self.precision == "fp16":
            values["loss_scale"] = float(self.scaler.get_scale())
        values["samples_per_s"] = self.state.samples_per_second
        self.logger.log(self.step, values, "train")

    def _evaluate_and_track(self, best_path: Path) -> None:
        with self.averaged():  # EMA/SWA: evaluated (and best.pt saved) with the averaged weights
            self._evaluate_and_track_inner(best_path)

    def _evaluate_and_track_inner(self, best_path: Path) -> None:
        s = self.settings
        ev = self.evaluate(keep_predictions=True, sharded=True)  # the best one's predictions feed the report
        self.state.last_eval = ev
        avg = ev.average
        self.logger.log(self.step, ev.flat(), "eval")
        self.state.history.append({"step": self.step, **ev.flat()})
        improved = avg > self.state.best_metric
        if improved:
            self.state.best_metric, self.state.best_step, self.state.best_eval = avg, self.step, ev
            self.state.evals_without_improvement = 0
            if s.save_best:
                self.save_model(best_path, avg)
        else:
            self.state.evals_without_improvement += 1
        log.info("step %d: dev average macro-F1 %.4f%s", self.step, avg, " (best)" if improved else "")
        if self.state.best_eval is None:  # a NaN average never "improves": keep the first evaluation as the best
            self.state.best_eval, self.state.best_step = ev, self.step
        if s.early_stopping_patience and self.state.evals_without_improvement >= s.early_stopping_patience:
            log.info("early stopping: no improvement in %d evaluations", self.state.evals_without_improvement)
            self.state.stopped_early = True

    def table(self, result: EvalResult, baselines: Mapping[str, float] | None = None) -> str:
        return format_table(result.scores, baselines)


__all__ = [
    "NullLogger",
    "OutOfMemory",
    "Trainer",
    "TrainerSettings",
    "TrainerState",
    "TrainingStopped",
    "resolve_device",
    "resolve_precision",
]

"""The named build steps of a run, from the composed config to a ready :class:`Trainer`.

``run()`` is these steps in order (data -> model -> balancer/sampler -> loaders -> trainer); the
benchmark scripts and tests call the same steps instead of re-creating parts of them:

    encoder, tokenizer = build_encoder(cfg.encoder)
    data = build_data(cfg, tokenizer)
    model = build_model(cfg, encoder, data.num_labels)
    balancer = build_balancer(cfg.balancer, data.tasks)
    sampler = build_sampler(cfg.sampler, data.train_sizes, seed=cfg.seed)
    check_compatible(balancer, sampler)
    streams = build_streams(cfg.data, data.train, seed=cfg.seed)
    dev_loaders = build_dev_loaders(cfg.data, data.dev, tokenizer)
    trainer = Trainer(model, balancer, sampler, streams, dev_loaders, build_settings(cfg, max_steps), run_dir)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from mtl import balancers, samplers
from mtl.balancers import Balancer
from mtl.data.batching import LengthSortedSampler, TaskBatchSampler, TaskStream
from mtl.data.loading import collate_for, is_multi_label, load_task, tokenize_split
from mtl.evaluation.decision import DecisionSettings
from mtl.models.encoder import load_encoder
from mtl.models.multitask import MultiTaskModel, build_multitask
from mtl.samplers import SAMPLERS, TaskSampler
from mtl.training.trainer import TrainerSettings
from mtl.utils.device import resolve_device

log = logging.getLogger(__name__)

__all__ = [
    "RunData",
    "build_balancer",
    "build_data",
    "build_dev_loaders",
    "build_encoder",
    "build_model",
    "build_sampler",
    "build_settings",
    "build_streams",
    "check_compatible",
    "check_loss_types",
    "max_steps_for",
    "pin_memory_for",
    "seed_everything",
]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _options(cfg: DictConfig | Mapping[str, Any] | None, drop: tuple[str, ...] = ("name",)) -> dict[str, Any]:
    """A config node as plain keyword arguments (interpolations resolved), without ``drop``'s keys."""
    if cfg is None:
        return {}
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    assert isinstance(data, dict)
    return {k: v for k, v in data.items() if k not in drop}


# ----------------------------------------------------------------------------------------- encoder


def build_encoder(enc_cfg: DictConfig) -> tuple[torch.nn.Module, Any]:
    """``(encoder, tokenizer)`` for ``cfg.encoder``; the input embeddings frozen when it says so."""
    encoder, tokenizer = load_encoder(enc_cfg.name_or_path, **_options(enc_cfg.get("kwargs")))
    if enc_cfg.freeze_embeddings:
        emb = encoder.get_input_embeddings()
        for p in emb.parameters():
            p.requires_grad_(False)
        log.info("froze the input embedding matrix (%s parameters)", f"{sum(p.numel() for p in emb.parameters()):,}")
    return encoder, tokenizer


# ----------------------------------------------------------------------------------------- data


@dataclass
class RunData:
    """Every task's tokenised train and dev sets, its label list and its read report (``multi_label``: the
    tasks declared ``type: multi_label``, whose ``labels`` columns are multi-hot)."""

    labels: dict[str, list[str]] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # task -> datasets.Dataset
    dev: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    multi_label: set[str] = field(default_factory=set)

    @property
    def tasks(self) -> list[str]:
        return list(self.labels)

    @property
    def num_labels(self) -> dict[str, int]:
        return {t: len(v) for t, v in self.labels.items()}

    @property
    def train_sizes(self) -> dict[str, int]:
        return {t: len(ds) for t, ds in self.train.items()}

    @property
    def class_counts(self) -> dict[str, list[int]]:
        """Each task's training label counts (after capping and skipping): the class priors of its loss. A
        multi-label task: per label, the number of training rows that carry it."""
        from mtl.losses import class_counts_from_labels

        out = {}
        for t, ds in self.train.items():
            if t in self.multi_label:
                hot = np.asarray(ds["labels"], dtype=np.float64).reshape(len(ds), len(self.labels[t]))
                out[t] = [int(c) for c in (hot > 0.5).sum(axis=0).tolist()]
            else:
                out[t] = class_counts_from_labels(list(ds["labels"]), len(self.labels[t]))
        return out


def build_data(cfg: DictConfig, tokenizer: Any, tasks: Sequence[str] | None = None, with_dev: bool = True) -> RunData:
    """Read, split and tokenise (cached) each task of ``cfg.tasks`` (or ``tasks``)."""
    names = list(tasks) if tasks is not None else list(cfg.tasks.keys())
    if not names:
        raise ValueError("no tasks selected: pass e.g. tasks=[ocnli,ocemotion,tnews]")
    max_length = int(cfg.encoder.max_length)
    out = RunData()
    for task in names:
        td = load_task(task, cfg.tasks[task], cfg.data, seed=int(cfg.seed))
        out.labels[task] = list(td.labels)
        out.reports[task] = td.report.to_dict()
        if td.multi_label:
            out.multi_label.add(task)
        out.train[task] = tokenize_split(td.train, tokenizer, max_length, cfg.data, num_labels=td.num_labels)
        if with_dev:
            out.dev[task] = tokenize_split(td.dev, tokenizer, max_length, cfg.data, num_labels=td.num_labels)
        log.info("%s: %d train / %d dev examples, %d labels", task, len(td.train), len(td.dev), len(td.labels))
    return out


# ----------------------------------------------------------------------------------------- model


def build_model(
    cfg: DictConfig, encoder: torch.nn.Module, num_labels: Mapping[str, int],
    class_counts: Mapping[str, list[int]] | None = None,
) -> MultiTaskModel:
    """The shared encoder with one head per task (``cfg.model``: features, heads, sharing; the default pooling and
    ``max_length`` from ``cfg.encoder``) and each task's training loss (``cfg.loss``, a task's ``tasks.<t>.loss``
    over it; class-aware losses need ``class_counts``). Logs the structure: its shared representation, the
    shared and per-task parameter counts and the estimated step cost (``MultiTaskModel.describe``)."""
    enc = {"pooling": cfg.encoder.pooling, "max_length": int(cfg.encoder.max_length)}
    model = build_multitask(encoder, dict(num_labels), _options(cfg.model, drop=()), enc)
    model.set_losses(build_losses(cfg, num_labels, class_counts))
    log.info("%s", model.describe())
    return model


def loss_config(cfg: DictConfig, task: str) -> dict[str, Any]:
    """Task ``task``'s loss node: ``cfg.loss``, overridden by ``tasks.<task>.loss`` (a different ``name`` there
    starts from that loss's defaults)."""
    from mtl.config import default_node

    base = _options(cfg.get("loss") or {"name": "ce"}, drop=())
    own = _options(cfg.tasks[task].get("loss"), drop=()) if cfg.tasks[task].get("loss") else {}
    if own.get("name", base["name"]) != base["name"]:
        base = default_node("loss", own["name"])
    return {**base, **own}


def check_loss_types(cfg: DictConfig, tasks: Sequence[str] | None = None) -> None:
    """A multi-label task (``type: multi_label``) needs a multi-label loss (``multi_label = True``: ``zlpr``), a
    single-label task a single-label one: a ValueError naming the task, its loss and the setting to change."""
    from mtl.losses import LOSSES

    for task in list(tasks) if tasks is not None else list(cfg.tasks.keys()):
        name = str(loss_config(cfg, task)["name"])
        takes_multi_hot = bool(getattr(LOSSES.get(name), "multi_label", False))
        multi = is_multi_label(cfg.tasks[task], task)
        if multi and not takes_multi_hot:
            multi_losses = [n for n in LOSSES.names() if getattr(LOSSES.get(n), "multi_label", False)]
            raise ValueError(
                f"task {task!r} is multi-label (type: multi_label) but its loss {name!r} takes one class index per "
                f"row; give it a multi-label loss ({', '.join(multi_losses)}): tasks.{task}.loss={{name: zlpr}} on the "
                f"command line (+tasks.{task}.loss=... if its config has no loss), or `loss: {{name: zlpr}}` in its "
                "task config"
            )
        if not multi and takes_multi_hot:
            raise ValueError(
                f"task {task!r} is single-label but its loss {name!r} is a multi-label loss (multi-hot targets); give "
                f"it a single-label loss, e.g. +tasks.{task}.loss={{name: ce}}, or set {name!r} only on the multi-label "
                f"tasks (tasks.<t>.loss={{name: {name}}}) instead of loss={name}; a task with several labels per row "
                "is declared `type: multi_label` (docs/multilabel.md)"
            )


def build_losses(
    cfg: DictConfig, num_labels: Mapping[str, int], class_counts: Mapping[str, list[int]] | None = None
) -> dict[str, torch.nn.Module]:
    """One ``mtl.losses`` module per task (see :func:`loss_config`); a loss that does not fit its task's type
    (:func:`check_loss_types`) is a ValueError."""
    from mtl.losses import build_loss

    check_loss_types(cfg, list(num_labels))
    out = {}
    for task, n in num_labels.items():
        node = loss_config(cfg, task)
        counts = (class_counts or {}).get(task)
        out[task] = build_loss(node.pop("name"), num_labels=int(n), class_counts=counts, **node)
        if counts is not None:
            log.info("%s: loss %s, training label counts %s", task, type(out[task]).__name__, counts)
    return out


# ----------------------------------------------------------------------------------------- balancer, sampler


def build_balancer(cfg: DictConfig, task_names: list[str]) -> Balancer:
    """``balancer.name`` picks a registered class; a ``_target_`` instead instantiates any class."""
    if "_target_" in cfg:
        from hydra.utils import instantiate

        balancer = instantiate(cfg, task_names=task_names)
    else:
        balancer = balancers.build_balancer(cfg.name, task_names, **_options(cfg))  # typos named
    if not isinstance(balancer, Balancer):
        raise TypeError(f"balancer config built a {type(balancer).__name__}, not an mtl Balancer")
    return balancer


def build_sampler(cfg: DictConfig, task_sizes: Mapping[str, int], seed: int) -> TaskSampler:
    """``sampler.name`` picks a registered class; a ``_target_`` instead instantiates any class."""
    if "_target_" in cfg:
        from hydra.utils import instantiate

        sampler = instantiate(cfg, task_sizes=dict(task_sizes), seed=int(seed))
    else:
        sampler = samplers.build_sampler(cfg.name, dict(task_sizes), seed=int(seed), **_options(cfg))  # typos named
    if not isinstance(sampler, TaskSampler):
        raise TypeError(f"sampler config built a {type(sampler).__name__}, not an mtl TaskSampler")
    return sampler


def check_compatible(balancer: Balancer, sampler: TaskSampler) -> None:
    """Gradient methods compare task gradients within a step, so every step needs every task."""
    if balancer.needs_gramian and sampler.one_task_per_step:
        multi = [n for n in SAMPLERS.names() if not SAMPLERS.get(n).one_task_per_step]
        raise ValueError(
            f"balancer {balancer.registry_name!r} is a gradient-level method: it compares the tasks' "
            f"gradients within one step, but sampler {sampler.registry_name!r} feeds one task per step. "
            f"Use a sampler that gives every task a batch each step: {', '.join('sampler=' + m for m in multi)}"
        )


# ----------------------------------------------------------------------------------------- loaders


def pin_memory_for(device: str) -> bool:
    """Pin host batches only when ``trainer.device`` resolves to a GPU: page-locked memory speeds the
    host-to-GPU copy and is wasted (and scarce) for a CPU run on a machine that has a GPU."""
    return resolve_device(device).type == "cuda"


def build_streams(
    data_cfg: DictConfig, train: Mapping[str, Any], tokenizer: Any, *, seed: int, rank: int = 0, world_size: int = 1,
    pin_memory: bool = False,
) -> dict[str, TaskStream]:
    """One endless, resumable batch stream per task (each rank its own shard of every task)."""
    coll = collate_for(data_cfg, tokenizer)
    grouped = bool(data_cfg.group_by_length)
    max_tokens = data_cfg.get("max_tokens")
    streams = {}
    for i, (task, ds) in enumerate(train.items()):
        bs = TaskBatchSampler(
            len(ds), int(data_cfg.batch_size), seed=int(seed) * 1000 + i,
            lengths=ds["length"] if grouped or max_tokens else None,
            group_by_length=grouped, rank=rank, world_size=world_size, max_tokens=max_tokens,
        )
        streams[task] = TaskStream(ds, bs, coll, num_workers=int(data_cfg.num_workers), pin_memory=pin_memory)
    return streams


def build_dev_loaders(
    data_cfg: DictConfig, dev: Mapping[str, Any], tokenizer: Any, pin_memory: bool = False
) -> dict[str, DataLoader]:
    """A loader per task's dev set, its rows visited longest first (little padding); the evaluation puts
    the predictions back in the dataset's order (``LengthSortedSampler.order``)."""
    coll = collate_for(data_cfg, tokenizer)
    return {
        t: DataLoader(ds, batch_size=int(data_cfg.eval_batch_size), sampler=LengthSortedSampler(ds["length"]),
                      collate_fn=coll, pin_memory=pin_memory)
        for t, ds in dev.items()
    }


# ----------------------------------------------------------------------------------------- settings


def max_steps_for(cfg: DictConfig, sampler: TaskSampler, world_size: int = 1) -> int:
    """``trainer.max_steps``, or ``trainer.max_epochs`` epochs of ``sampler`` when that is set."""
    tr = cfg.trainer
    if tr.max_epochs:
        steps = int(round(float(tr.max_epochs) * sampler.steps_per_epoch(int(cfg.data.batch_size) * world_size)))
        log.info("trainer.max_epochs=%s -> %d steps", tr.max_epochs, steps)
        return steps
    return int(tr.max_steps)


def build_decision(cfg: DictConfig) -> DecisionSettings:
    """The run's decision rule (the ``decision`` group; absent in older configs: argmax)."""
    node = cfg.get("decision")
    return DecisionSettings(**_options(node, drop=())) if node is not None else DecisionSettings()


def build_settings(cfg: DictConfig, max_steps: int | None = None) -> TrainerSettings:
    """The Trainer's settings from the ``optim`` and ``trainer`` groups (every key of both is a field of
    :class:`TrainerSettings`, whose defaults are the groups' defaults), ``max_steps`` resolved."""
    values = {**_options(cfg.optim, drop=()), **_options(cfg.trainer, drop=())}
    if max_steps is not None:
        values["max_steps"] = int(max_steps)
    return TrainerSettings(**values)

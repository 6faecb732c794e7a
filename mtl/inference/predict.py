"""Predictions of a loaded checkpoint on examples: logits, or label indices, in the examples' order.

Multi-label tasks (``type: multi_label``): :func:`multi_label_predictions` (each row's labels with a logit
above 0); the single-label decision rules and the submission (:func:`predict`) do not apply to them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mtl.data.loading import collate, is_multi_label, tokenize_examples
from mtl.data.readers import Example
from mtl.evaluation.decision import RULES, decide
from mtl.inference.checkpoint import LoadedCheckpoint
from mtl.models.multitask import ENCODER_INPUTS

__all__ = ["apply_rule", "multi_label_loss", "multi_label_predictions", "predict", "predict_logits"]


@torch.no_grad()
def predict_logits(
    ckpt: LoadedCheckpoint, task: str, examples: Sequence[Example], batch_size: int = 128
) -> torch.Tensor:
    """``(len(examples), num_labels)`` float logits on CPU, rows in the examples' order (batched by length)."""
    if task not in ckpt.labels:
        raise KeyError(f"the checkpoint has no head for task {task!r}; it has {', '.join(ckpt.tasks)}")
    out = torch.zeros(len(examples), len(ckpt.labels[task]))
    if not examples:
        return out
    ds = tokenize_examples(examples, ckpt.tokenizer, ckpt.max_length, num_labels=len(ckpt.labels[task]))
    lengths = ds["length"]
    order = sorted(range(len(ds)), key=lambda i: lengths[i])
    coll = collate(ckpt.tokenizer)
    model = ckpt.model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = coll([ds[i] for i in idx])
        inputs = {k: v.to(ckpt.device) for k, v in batch.items() if k in ENCODER_INPUTS}
        out[torch.tensor(idx)] = model(task, inputs).float().cpu()
    return out


def apply_rule(ckpt: LoadedCheckpoint, task: str, logits: torch.Tensor, rule: str | None = None) -> np.ndarray:
    """Label indices of ``logits`` under ``rule`` (default: the checkpoint's decision rule): ``argmax``;
    ``logit_adjusted`` with the run's τ and training class counts; ``tuned_biases`` with the per-class biases
    fitted on all of dev at the best evaluation (all saved in the checkpoint)."""
    rule = rule or ckpt.decision_rule
    if rule not in RULES:
        raise ValueError(f"unknown decision rule {rule!r}; choose one of {', '.join(RULES)}")
    d = ckpt.decision
    counts = (d.get("class_counts") or {}).get(task)
    biases = (d.get("biases") or {}).get(task)
    if rule == "logit_adjusted" and counts is None:
        raise ValueError(f"{ckpt.path}: decision rule logit_adjusted needs the training class counts of task "
                         f"{task!r}, which this checkpoint does not hold (written before they were saved)")
    if rule == "tuned_biases" and biases is None:
        raise ValueError(f"{ckpt.path}: decision rule tuned_biases needs the biases fitted on dev for task "
                         f"{task!r}, which this checkpoint does not hold (written before they were saved)")
    return decide(logits, rule, class_counts=counts, tau=float(d.get("tau", 1.0)), biases=biases)


def multi_label_predictions(logits: torch.Tensor) -> list[list[int]]:
    """A multi-label task's predictions: per row, the (ascending) indices of the labels whose logit is above 0
    (the decision rule of the ``zlpr`` loss)."""
    return [row.nonzero().flatten().tolist() for row in (logits > 0)]


def multi_label_loss(ckpt: LoadedCheckpoint, task: str, logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The mean of a multi-label task's own training loss (``tasks.<t>.loss``, else the run's ``loss``; unflooded,
    as the dev loss in training) on multi-hot ``targets`` ``[N, C]``."""
    from mtl.losses import LOSSES, build_loss, loss_options

    own = dict(ckpt.task_config(task).get("loss") or {})
    run_loss = dict(ckpt.config.get("loss") or {})
    name = str(own.get("name") or run_loss.get("name") or "zlpr")
    node = {**(run_loss if run_loss.get("name", name) == name else {}), **own}
    if name not in LOSSES.names() or not getattr(LOSSES.get(name), "multi_label", False):
        name, node = "zlpr", {}
    options = {k: v for k, v in node.items() if k in loss_options(name)}
    loss = build_loss(name, num_labels=int(logits.shape[1]), **options)
    return float(loss(logits.float(), targets, reduction="sum")) / max(int(logits.shape[0]), 1)


def predict(ckpt: LoadedCheckpoint, task: str, examples: Sequence[Example], batch_size: int = 128,
            rule: str | None = None) -> list[int]:
    """Predicted label indices (into ``ckpt.labels[task]``) for ``examples``, in their order, under ``rule``
    (default: the checkpoint's decision rule, :func:`apply_rule`). Single-label tasks only: a multi-label
    task's predictions are :func:`multi_label_predictions` of :func:`predict_logits`."""
    if is_multi_label(ckpt.task_config(task), task):
        raise ValueError(
            f"task {task!r} is multi-label: test-set submissions are for the single-label Tianchi tasks only; "
            f"score it on labelled data instead (mtl-predict <run> --labelled {task}=FILE, or --split dev)"
        )
    return [int(i) for i in apply_rule(ckpt, task, predict_logits(ckpt, task, examples, batch_size), rule).tolist()]

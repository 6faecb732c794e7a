"""Competition metrics: per-task macro-F1 (scikit-learn's definition) and their average.

Single-label tasks: macro-F1 over the task's classes, accuracy. Multi-label tasks (``type: multi_label``,
``docs/multilabel.md``): macro-F1 and micro-F1 over the labels of multi-hot ``[N, C]`` arrays, and
exact-match (subset) accuracy; the macro-F1 is what the run's average uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


@dataclass
class TaskScores:
    """One task's dev scores. ``micro_f1``: multi-label tasks only (micro-F1 over the labels); NaN otherwise,
    and in scores written before it existed (``TaskScores(**old_dict)`` still works).

    A NaN ``micro_f1`` is not stored on the instance (reading it gives the class default, NaN), so ``vars()``
    of a single-label task's scores, what ``metrics.json`` and the checkpoints hold, is what it was before.
    """

    macro_f1: float
    accuracy: float
    loss: float
    n: int
    micro_f1: float = float("nan")

    def __post_init__(self) -> None:
        if isinstance(self.micro_f1, float) and math.isnan(self.micro_f1):
            del self.__dict__["micro_f1"]


def task_scores(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int, loss: float = float("nan")) -> TaskScores:
    """Macro-F1 over the task's *full* label set, so an unpredicted class still counts as 0 F1."""
    labels = list(range(num_labels))
    f1 = f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return TaskScores(float(f1), float(accuracy_score(y_true, y_pred)), float(loss), len(y_true))


def multi_hot_array(rows: Any, num_labels: int) -> np.ndarray:
    """``rows`` as a boolean ``[N, num_labels]`` array.

    Accepted: a 2-D array (multi-hot; bool, or numbers where > 0.5 is on), rows of floats or bools
    (multi-hot rows, as the tokenised datasets hold them), or rows of ints (each row the list of its label
    indices, as ``EvalResult`` keeps them; ``[]`` for none).
    """
    if isinstance(rows, np.ndarray) and rows.ndim == 2:
        arr = rows
    else:
        rows = list(rows)
        if not rows:
            return np.zeros((0, int(num_labels)), dtype=bool)
        values = [v for r in rows for v in r]
        if values and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
            out = np.zeros((len(rows), int(num_labels)), dtype=bool)
            for i, r in enumerate(rows):
                for j in r:
                    if not 0 <= int(j) < num_labels:
                        raise ValueError(f"label index {j} outside [0, {num_labels})")
                    out[i, int(j)] = True
            return out
        if not values:  # every row empty: label index lists without labels
            return np.zeros((len(rows), int(num_labels)), dtype=bool)
        arr = np.asarray(rows)
    if arr.ndim != 2 or arr.shape[1] != num_labels:
        raise ValueError(f"multi-hot labels must be [N, {num_labels}], got shape {list(arr.shape)}")
    return arr.astype(bool) if arr.dtype == bool else arr > 0.5


def label_indices(rows: Any, num_labels: int) -> list[list[int]]:
    """Each row's label indices (ascending) from multi-hot rows (:func:`multi_hot_array`'s inputs)."""
    return [np.flatnonzero(r).tolist() for r in multi_hot_array(rows, num_labels)]


def multilabel_task_scores(y_true: Any, y_pred: Any, num_labels: int, loss: float = float("nan")) -> TaskScores:
    """Multi-label scores of multi-hot ``[N, C]`` arrays (or label-index rows, :func:`multi_hot_array`).

    ``macro_f1``: the unweighted mean of the C per-label F1 (a label never true nor predicted counts 0);
    ``micro_f1``: F1 of the pooled per-label decisions; both scikit-learn's ``f1_score`` with
    ``zero_division=0``. ``accuracy``: exact-match (subset) accuracy, the share of rows whose whole label set
    is right.
    """
    t, p = multi_hot_array(y_true, num_labels), multi_hot_array(y_pred, num_labels)
    if t.shape != p.shape:
        raise ValueError(f"{t.shape[0]} true rows for {p.shape[0]} predicted rows")
    if t.shape[0] == 0:
        return TaskScores(0.0, 0.0, float(loss), 0, 0.0)
    labels = list(range(num_labels))
    macro = f1_score(t, p, labels=labels, average="macro", zero_division=0)
    micro = f1_score(t, p, labels=labels, average="micro", zero_division=0)
    exact = float(np.mean(np.all(t == p, axis=1)))
    return TaskScores(float(macro), exact, float(loss), int(t.shape[0]), float(micro))


def average_macro_f1(scores: Mapping[str, TaskScores]) -> float:
    """The Tianchi score: the unweighted mean of per-task macro-F1."""
    return float(np.mean([s.macro_f1 for s in scores.values()])) if scores else float("nan")


def _is_multi_label(y_true: Any) -> bool:
    if isinstance(y_true, np.ndarray):
        return y_true.ndim == 2
    return any(isinstance(y, list | tuple | np.ndarray) for y in y_true)


def majority_macro_f1(y_true: Sequence[int], num_labels: int) -> float:
    """Macro-F1 of always predicting the most frequent class: the floor a model must beat.

    Multi-label rows (:func:`multi_hot_array`'s inputs): each label's majority vote, i.e. every row gets
    exactly the labels that at least half of the rows carry.
    """
    if _is_multi_label(y_true):
        t = multi_hot_array(y_true, num_labels)
        pred = np.broadcast_to(t.mean(axis=0) >= 0.5, t.shape) if t.shape[0] else t
        return multilabel_task_scores(t, np.asarray(pred), num_labels).macro_f1
    counts = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=num_labels)
    pred = np.full(len(y_true), int(counts.argmax()))
    return task_scores(y_true, pred, num_labels).macro_f1


def confusion(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> np.ndarray:
    return confusion_matrix(y_true, y_pred, labels=list(range(num_labels)))


def format_table(scores: Mapping[str, TaskScores], baselines: Mapping[str, float] | None = None) -> str:
    """A plain-text table: one row per task, then the average (a micro-F1 column when a task has one)."""
    micro = any(math.isfinite(getattr(s, "micro_f1", math.nan)) for s in scores.values())
    w = max([12, *(len(t) + 2 for t in scores)])  # the task column: 12 wide unless a name is longer
    head = f"{'task':<{w}}{'macro-F1':>10}{'accuracy':>10}{'loss':>9}{'n':>8}"
    if micro:
        head += f"{'micro-F1':>10}"
    if baselines:
        head += f"{'majority F1':>13}"
    lines = [head, "-" * len(head)]
    for task, s in scores.items():
        row = f"{task:<{w}}{s.macro_f1:>10.4f}{s.accuracy:>10.4f}{s.loss:>9.4f}{s.n:>8d}"
        if micro:
            row += f"{s.micro_f1:>10.4f}" if math.isfinite(s.micro_f1) else f"{'-':>10}"
        if baselines:
            row += f"{baselines.get(task, float('nan')):>13.4f}"
        lines.append(row)
    lines.append("-" * len(head))
    lines.append(f"{'average':<{w}}{average_macro_f1(scores):>10.4f}")
    return "\n".join(lines)

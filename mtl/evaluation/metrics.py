"""Competition metrics: per-task macro-F1 (scikit-learn's definition) and their average."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


@dataclass
class TaskScores:
    macro_f1: float
    accuracy: float
    loss: float
    n: int


def task_scores(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int, loss: float = float("nan")) -> TaskScores:
    """Macro-F1 over the task's *full* label set, so an unpredicted class still counts as 0 F1."""
    labels = list(range(num_labels))
    f1 = f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return TaskScores(float(f1), float(accuracy_score(y_true, y_pred)), float(loss), len(y_true))


def average_macro_f1(scores: Mapping[str, TaskScores]) -> float:
    """The Tianchi score: the unweighted mean of per-task macro-F1."""
    return float(np.mean([s.macro_f1 for s in scores.values()])) if scores else float("nan")


def majority_macro_f1(y_true: Sequence[int], num_labels: int) -> float:
    """Macro-F1 of always predicting the most frequent class: the floor a model must beat."""
    counts = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=num_labels)
    pred = np.full(len(y_true), int(counts.argmax()))
    return task_scores(y_true, pred, num_labels).macro_f1


def confusion(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> np.ndarray:
    return confusion_matrix(y_true, y_pred, labels=list(range(num_labels)))


def format_table(scores: Mapping[str, TaskScores], baselines: Mapping[str, float] | None = None) -> str:
    """A plain-text table: one row per task, then the average."""
    head = f"{'task':<12}{'macro-F1':>10}{'accuracy':>10}{'loss':>9}{'n':>8}"
    if baselines:
        head += f"{'majority F1':>13}"
    lines = [head, "-" * len(head)]
    for task, s in scores.items():
        row = f"{task:<12}{s.macro_f1:>10.4f}{s.accuracy:>10.4f}{s.loss:>9.4f}{s.n:>8d}"
        if baselines:
            row += f"{baselines.get(task, float('nan')):>13.4f}"
        lines.append(row)
    lines.append("-" * len(head))
    lines.append(f"{'average':<12}{average_macro_f1(scores):>10.4f}")
    return "\n".join(lines)

"""One evaluation's outcome: per-task scores, every decision rule's score, and (when kept) the predictions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtl.evaluation.metrics import TaskScores, average_macro_f1

__all__ = ["EvalResult"]


@dataclass
class EvalResult:
    """Scores of one dev evaluation at ``step``.

    ``scores``: the plain argmax scores (macro-F1, accuracy, loss) per task. ``decisions``: per task, the
    macro-F1 of every decision rule (``mtl.evaluation.decision.score_rules``: ``{"macro_f1": {rule: f1},
    "biases": [...], "predictions": {rule: [...]}}``; empty when the evaluation did not score them). ``rule``:
    the run's decision rule; :attr:`average` is the average macro-F1 under it (what selects the best
    checkpoint). ``predictions``/``labels``: ``{task: label indices}`` of the argmax rule in the dev set's order
    (empty when the evaluation did not keep them).

    Multi-label tasks (``docs/multilabel.md``): the decision rules do not apply. Their ``decisions`` entry is
    ``{"multi_label": True, "macro_f1": {}, "biases": [], "predictions": {"argmax": [...]}}`` (the label
    indices predicted over all rows, flattened: what ``never_predicted`` reads), their ``predictions`` and
    ``labels`` hold one list of label indices per row (threshold 0), and under every rule they score their
    plain macro-F1, as does any task without rule scores when other tasks have them.
    """

    step: int
    scores: dict[str, TaskScores]
    predictions: dict[str, list[int]] = field(default_factory=dict)
    labels: dict[str, list[int]] = field(default_factory=dict)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    rule: str = "argmax"

    @property
    def argmax_average(self) -> float:
        """The average macro-F1 of the plain argmax rule."""
        return average_macro_f1(self.scores)

    def is_multi_label(self, task: str) -> bool:
        """Whether ``task`` was scored as a multi-label task."""
        return bool((self.decisions.get(task) or {}).get("multi_label"))

    def _rule_scores(self, task: str) -> dict[str, float] | None:
        """``task``'s per-rule macro-F1, or None when it has none (no entry, or a multi-label task)."""
        d = self.decisions.get(task) or {}
        return None if d.get("multi_label") or not d.get("macro_f1") else d["macro_f1"]

    def task_macro_f1(self, task: str, rule: str | None = None) -> float:
        """``task``'s macro-F1 under ``rule`` (default: the run's rule). A task without rule scores (a
        multi-label task, or one left out while others have them) scores its plain macro-F1 under every rule."""
        rule = rule or self.rule
        own = self._rule_scores(task)
        if rule == "argmax" or own is None:
            if rule != "argmax" and not (self.is_multi_label(task) or self._any_rule_scores()):
                raise KeyError(f"evaluation at step {self.step} has no {rule!r} scores for task {task!r}")
            return self.scores[task].macro_f1
        return float(own[rule])

    def _any_rule_scores(self) -> bool:
        return any(self._rule_scores(t) is not None for t in self.scores)

    def rule_average(self, rule: str) -> float:
        if rule == "argmax":
            return self.argmax_average
        return float(np.mean([self.task_macro_f1(t, rule) for t in self.scores])) if self.scores else float("nan")

    @property
    def average(self) -> float:
        """The average macro-F1 under the run's decision rule."""
        return self.rule_average(self.rule)

    def rules(self) -> list[str]:
        """The rules every task with rule scores was scored with, in report order (tasks without them, e.g.
        multi-label ones, score their plain macro-F1 under each); ``["argmax"]`` when none has them."""
        scored = [own for t in self.scores if (own := self._rule_scores(t)) is not None]
        if not scored:
            return ["argmax"]
        common = set.intersection(*(set(d) for d in scored))
        return [r for r in (*("argmax", "logit_adjusted", "tuned_biases"), "tuned_biases_in_sample") if r in common]

    def flat(self) -> dict[str, float]:
        out = {"avg_macro_f1": self.average}
        for r in self.rules():
            if r != "argmax" or self.rule != "argmax":
                out[f"avg_macro_f1/{r}"] = self.rule_average(r)
        for t, s in self.scores.items():
            out.update({f"{t}/macro_f1": s.macro_f1, f"{t}/accuracy": s.accuracy, f"{t}/loss": s.loss})
            if self.is_multi_label(t):
                out[f"{t}/micro_f1"] = s.micro_f1
            for r in self.rules():
                if r != "argmax":
                    out[f"{t}/macro_f1/{r}"] = self.task_macro_f1(t, r)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data (a resumable checkpoint keeps it), predictions and labels included."""
        return {
            "step": self.step,
            "scores": {t: vars(s) for t, s in self.scores.items()},
            "predictions": {t: list(p) for t, p in self.predictions.items()},
            "labels": {t: list(y) for t, y in self.labels.items()},
            "decisions": {t: _plain(d) for t, d in self.decisions.items()},
            "rule": self.rule,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        """The inverse of :meth:`to_dict`; a dict without predictions/labels/decisions (older checkpoints)
        gives empty ones and the argmax rule."""
        return cls(
            int(d["step"]),
            {t: TaskScores(**s) for t, s in d["scores"].items()},
            {t: [_row(i) for i in p] for t, p in (d.get("predictions") or {}).items()},
            {t: [_row(i) for i in y] for t, y in (d.get("labels") or {}).items()},
            {t: _plain(v) for t, v in (d.get("decisions") or {}).items()},
            str(d.get("rule") or "argmax"),
        )


def _row(value: Any) -> Any:
    """One row's prediction or label: a class index, or (a multi-label task) a list of label indices."""
    if isinstance(value, list | tuple | np.ndarray):
        return [int(i) for i in value]
    return int(value)


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    """A :func:`score_rules` result (or a multi-label task's entry) as plain Python (numpy arrays as lists)."""
    out = {
        "macro_f1": {r: float(v) for r, v in (d.get("macro_f1") or {}).items()},
        "biases": [float(b) for b in d.get("biases") or []],
        "predictions": {r: [int(i) for i in np.asarray(p, dtype=np.int64).reshape(-1).tolist()]
                        for r, p in (d.get("predictions") or {}).items()},
    }
    if d.get("multi_label"):
        out["multi_label"] = True
    return out

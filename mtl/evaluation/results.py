"""One evaluation's outcome: per-task scores and, when kept, the predictions and gold labels on dev."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mtl.evaluation.metrics import TaskScores, average_macro_f1

__all__ = ["EvalResult"]


@dataclass
class EvalResult:
    """Scores of one dev evaluation at ``step``; ``predictions``/``labels``: ``{task: label indices}``
    in the dev set's order (empty when the evaluation did not keep them)."""

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

    def to_dict(self) -> dict[str, Any]:
        """Plain data (a resumable checkpoint keeps it), predictions and labels included."""
        return {
            "step": self.step,
            "scores": {t: vars(s) for t, s in self.scores.items()},
            "predictions": {t: list(p) for t, p in self.predictions.items()},
            "labels": {t: list(y) for t, y in self.labels.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        """The inverse of :meth:`to_dict`; a dict without predictions/labels (older checkpoints) gives empty ones."""
        return cls(
            int(d["step"]),
            {t: TaskScores(**s) for t, s in d["scores"].items()},
            {t: [int(i) for i in p] for t, p in (d.get("predictions") or {}).items()},
            {t: [int(i) for i in y] for t, y in (d.get("labels") or {}).items()},
        )

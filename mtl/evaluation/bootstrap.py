"""How much a dev score moves with the dev sample: the bootstrap standard error of macro-F1.

A run's dev macro-F1 is measured on a finite sample of rows; a second sample of the same size from the same
distribution would give another value. The (nonparametric) bootstrap estimates that spread from the one
sample (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 6): draw ``n`` rows with
replacement from the ``n`` dev rows, score the fixed predictions on them, repeat ``R`` times; the standard
deviation of the ``R`` scores is the standard error of the score:

    SE(F1) ≈ sd_r( macroF1(y[I_r], ŷ[I_r]) ),      I_r ~ Uniform({1..n})^n

Each task is resampled independently (its own dev set), and the average over tasks of each replicate gives
the standard error of the average macro-F1. It is the evaluation's noise only (the model is held fixed): a
lower bound on the run-to-run spread, which adds the training's own noise. Macro-F1 is scikit-learn's
``f1_score(average="macro", labels=range(C), zero_division=0)``, computed from confusion matrices.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mtl.evaluation.decision import _f1_from_confusion

__all__ = ["DEFAULT_REPLICATES", "macro_f1_replicates", "dev_standard_errors", "run_dev_standard_errors"]

#: bootstrap replicates per task (the standard error's own relative error is about 1 / sqrt(2R): ~2 %)
DEFAULT_REPLICATES = 1000


def macro_f1_replicates(y_true: Any, y_pred: Any, num_labels: int, replicates: int = DEFAULT_REPLICATES,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """Macro-F1 of ``replicates`` bootstrap resamples of the rows (``[replicates]``): row indices drawn
    with ``rng.integers(0, n, (replicates, n))``."""
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"need as many predictions as labels, at least one: got {y.size} labels, {p.size} predictions")
    k = int(num_labels)
    if y.min() < 0 or p.min() < 0 or y.max() >= k or p.max() >= k:
        raise ValueError(f"labels and predictions must lie in range({k})")
    rng = rng if rng is not None else np.random.default_rng(0)
    idx = rng.integers(0, y.size, size=(int(replicates), y.size))
    cells = (y * k + p)[idx] + (np.arange(int(replicates)) * k * k)[:, None]
    conf = np.bincount(cells.reshape(-1), minlength=int(replicates) * k * k).reshape(int(replicates), k, k)
    return _f1_from_confusion(conf)


def dev_standard_errors(tasks: Mapping[str, Mapping[str, Any]], replicates: int = DEFAULT_REPLICATES,
                        seed: int = 0) -> dict[str, Any]:
    """Bootstrap standard errors from ``{task: {"labels", "predictions", "label_names"}}`` (the ``tasks`` of a
    run's ``dev_predictions.json``): ``{"tasks": {task: se}, "average": se, "replicates": R}``."""
    rng = np.random.default_rng(seed)
    reps = {}
    for name, t in tasks.items():
        reps[name] = macro_f1_replicates(t["labels"], t["predictions"], len(t["label_names"]), replicates, rng)
    if not reps:
        raise ValueError("no tasks to resample")
    average = np.mean(np.stack(list(reps.values())), axis=0)
    return {"tasks": {k: float(np.std(v, ddof=1)) for k, v in reps.items()},
            "average": float(np.std(average, ddof=1)), "replicates": int(replicates)}


def run_dev_standard_errors(run_dir: str | Path, replicates: int = DEFAULT_REPLICATES) -> dict[str, Any] | None:
    """:func:`dev_standard_errors` of a run's best checkpoint (argmax predictions in its
    ``dev_predictions.json``, multi-label tasks left out); None when the run has no such file."""
    path = Path(run_dir) / "dev_predictions.json"
    if not path.is_file():
        return None
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))["tasks"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a dev_predictions.json ({err})") from err
    single = {k: t for k, t in tasks.items() if t.get("labels") and not isinstance(t["labels"][0], list)}
    return dev_standard_errors(single, replicates) if single else None

"""Decision rules for macro-F1: from a task's logits to class predictions, and an honest score for tuned ones.

Macro-F1 averages the per-class F1 over every class, so a rare class that is never predicted costs
``1/C`` of the score; the argmax of a model trained with cross-entropy under-predicts rare classes. Three
rules, all on ``[N, C]`` logits (numpy arrays or torch tensors; predictions come back as int64 numpy):

* :func:`argmax`: the plain rule.
* :func:`logit_adjusted_predictions`: ``argmax(z − τ log π)``, the post-hoc logit adjustment of Menon et
  al., "Long-tail learning via logit adjustment", ICLR 2021, https://arxiv.org/abs/2007.07314 (eq. 8): for
  ``τ = 1`` the Bayes rule for the balanced error when ``softmax(z)`` estimates ``P(y|x)``. No fitting.
* :func:`fit_biases`: per-class additive biases ``b`` chosen on labelled rows to maximise macro-F1 of
  ``argmax(z + b)`` (coordinate ascent over a grid; the plug-in threshold tuning for F-measures studied by
  Lipton, Elkan & Narayanaswamy, "Optimal Thresholding of Classifiers to Maximize F1 Measure", ECML PKDD
  2014, https://arxiv.org/abs/1402.1892, and by Narasimhan, Vaish & Agarwal, "On the Statistical Consistency of Plug-in Classifiers for
  Non-decomposable Performance Measures", NeurIPS 2014).

Biases tuned on the dev set score optimistically on that same dev set. :func:`cross_fitted_scores`
reports the honest number: two-fold cross-fitting (fit on one half, predict the other, swap), the
macro-F1 of the out-of-fold predictions, beside the raw argmax score and the in-sample tuned score, and
the biases fitted on all rows (what a submission would apply to the test logits).

At evaluation time the run scores every rule side by side (:func:`score_rules`); the ``decision`` config group
(:class:`DecisionSettings`) says which one is *the run's* rule: the one its best checkpoint is selected by
(tuned biases by their cross-fitted score), and the one ``mtl-predict`` applies to test logits
(:func:`decide`).

Macro-F1 here is scikit-learn's ``f1_score(average="macro", labels=range(C), zero_division=0)``
(:func:`mtl.evaluation.metrics.task_scores`); the search uses an equivalent vectorised count
(:func:`macro_f1`, checked against scikit-learn in the tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtl.evaluation.metrics import task_scores

#: the default bias grid: −3 … 3 in steps of 0.1 (0 included exactly), in logit units
DEFAULT_GRID = np.round(np.arange(-30, 31) / 10.0, 1)


def _logits(logits: Any) -> np.ndarray:
    """``logits`` as a 2-D float64 numpy array (torch tensors are detached and moved to the CPU)."""
    if hasattr(logits, "detach"):
        logits = logits.detach().float().cpu().numpy()
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"logits must be [N, C], got shape {list(z.shape)}")
    return z


def _labels(labels: Any, n: int, num_labels: int) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} rows of logits")
    if y.size and (y.min() < 0 or y.max() >= num_labels):
        raise ValueError(f"labels must lie in [0, {num_labels}), got [{y.min()}, {y.max()}]")
    return y


def argmax(logits: Any) -> np.ndarray:
    """The plain decision rule: the highest logit of each row (ties: the lowest class index)."""
    return _logits(logits).argmax(axis=1).astype(np.int64)


def logit_adjusted_predictions(logits: Any, prior: Any, tau: float = 1.0) -> np.ndarray:
    """``argmax(z − τ log π)`` (Menon et al. 2021, post-hoc logit adjustment).

    ``prior``: the training label prior (``mtl.losses.class_prior(counts)``), C positive numbers (they
    need not sum to 1: a constant shift does not change the argmax). A zero entry is a ValueError: the
    rule would predict that class everywhere; smooth the counts first (``class_prior(counts, min_count=1)``).
    """
    z = _logits(logits)
    if hasattr(prior, "detach"):
        prior = prior.detach().cpu().numpy()
    p = np.asarray(prior, dtype=np.float64).reshape(-1)
    if p.shape[0] != z.shape[1]:
        raise ValueError(f"prior has {p.shape[0]} entries for {z.shape[1]} classes")
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError(
            f"prior must be finite and positive (log π), got {p.tolist()}; "
            "for zero counts use class_prior(counts, min_count=1)"
        )
    return argmax(z - float(tau) * np.log(p))


def apply_biases(logits: Any, biases: Any) -> np.ndarray:
    """``argmax(z + b)``: the predictions of fitted per-class biases (e.g. on test logits)."""
    z = _logits(logits)
    b = np.asarray(biases, dtype=np.float64).reshape(-1)
    if b.shape[0] != z.shape[1]:
        raise ValueError(f"{b.shape[0]} biases for {z.shape[1]} classes")
    return argmax(z + b)


def _f1_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Macro-F1 of each confusion matrix in ``conf`` ``[..., C, C]`` (rows: true, columns: predicted)."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1).astype(np.float64)
    denom = conf.sum(axis=-1) + conf.sum(axis=-2)  # 2TP + FN + FP
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.mean(axis=-1)


def macro_f1(y_true: Any, y_pred: Any, num_labels: int) -> float:
    """Macro-F1 over ``range(num_labels)``, an unpredicted and absent class counting 0 (as scikit-learn's
    ``zero_division=0``): ``mean_c 2TP_c / (2TP_c + FP_c + FN_c)``."""
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    conf = np.bincount(y * num_labels + p, minlength=num_labels * num_labels).reshape(num_labels, num_labels)
    return float(_f1_from_confusion(conf))


def _class_candidates(z: np.ndarray, b: np.ndarray, c: int, grid: np.ndarray) -> np.ndarray:
    """Predictions ``[G, N]`` of ``argmax(z + b)`` with ``b_c`` replaced by each grid value."""
    others = z + b
    others[:, c] = -np.inf
    best_other = others.max(axis=1)
    arg_other = others.argmax(axis=1)
    score_c = z[:, c][None, :] + grid[:, None]  # [G, N]
    # numpy's argmax keeps the lowest index on ties: class c wins a tie only against higher classes
    wins = (score_c > best_other[None, :]) | ((score_c == best_other[None, :]) & (c < arg_other)[None, :])
    return np.where(wins, c, arg_other[None, :])


def _batched_macro_f1(y: np.ndarray, preds: np.ndarray, num_labels: int) -> np.ndarray:
    """Macro-F1 of each row of ``preds`` ``[G, N]`` against ``y``."""
    g = preds.shape[0]
    codes = (np.arange(g)[:, None] * num_labels + y[None, :]) * num_labels + preds
    conf = np.bincount(codes.reshape(-1), minlength=g * num_labels * num_labels)
    return _f1_from_confusion(conf.reshape(g, num_labels, num_labels))


def fit_biases(logits: Any, labels: Any, num_labels: int, rounds: int = 3,
               grid: Sequence[float] | None = None) -> np.ndarray:
    """Per-class additive biases ``b`` (float64 ``[C]``) maximising the macro-F1 of ``argmax(z + b)``.

    Coordinate ascent from ``b = 0``: each round visits the classes in order and sets ``b_c`` to the grid
    value with the highest macro-F1 given the other biases, changing it only on a strict improvement (among
    equally good grid values, the one closest to the current ``b_c``, then the smallest); stops after
    ``rounds`` rounds or a round without change. Deterministic, and the in-sample macro-F1 never falls
    below argmax's. ``grid`` (default :data:`DEFAULT_GRID`, −3 … 3 by 0.1) is in logit units. Only the
    differences between the biases matter (a common shift leaves every argmax unchanged), so biases fitted
    on different rows may differ by a near-constant offset.
    """
    z = _logits(logits)
    if z.shape[1] != num_labels:
        raise ValueError(f"logits have {z.shape[1]} columns for {num_labels} labels")
    y = _labels(labels, z.shape[0], num_labels)
    values = DEFAULT_GRID if grid is None else np.asarray(list(grid), dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("grid must be a non-empty sequence of finite numbers")
    values = np.unique(values)  # sorted: ties go to the smallest value at equal distance
    b = np.zeros(num_labels, dtype=np.float64)
    if z.shape[0] == 0:
        return b
    current = macro_f1(y, argmax(z), num_labels)
    for _ in range(int(rounds)):
        changed = False
        for c in range(num_labels):
            scores = _batched_macro_f1(y, _class_candidates(z, b, c, values), num_labels)
            best = scores.max()
            if best <= current + 1e-12:
                continue
            tied = np.flatnonzero(scores >= best - 1e-12)
            pick = tied[np.argmin(np.abs(values[tied] - b[c]))]  # first of equal distance: the smallest
            b[c], current, changed = float(values[pick]), float(best), True
        if not changed:
            break
    return b


def stratified_halves(labels: Any, seed: int = 0) -> np.ndarray:
    """Fold ids (0 or 1) ``[N]``: each class's rows shuffled with ``seed`` and dealt alternately, the
    classes one after another, so both halves hold about half of every class and sizes differ by at most 1."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]) if y.size else y
    folds = np.empty(y.shape[0], dtype=np.int64)
    folds[order] = np.arange(order.shape[0]) % 2
    return folds


def cross_fitted_scores(logits: Any, labels: Any, num_labels: int, seed: int = 0, rounds: int = 3,
                        grid: Sequence[float] | None = None) -> dict[str, Any]:
    """Raw, in-sample tuned and two-fold cross-fitted macro-F1 of per-class biases on labelled rows.

    Returns a dict:

    * ``argmax_macro_f1``: macro-F1 of the plain argmax (all rows);
    * ``cross_fitted_macro_f1``: macro-F1 of the out-of-fold predictions (each half predicted with biases
      fitted on the other half): the honest score of "tune biases on dev";
    * ``in_sample_macro_f1``: macro-F1 on all rows of the biases fitted on all rows (optimistic);
    * ``biases``: float64 ``[C]``, fitted on all rows (what a submission would apply);
    * ``fold_biases``: float64 ``[2, C]``, row ``k`` fitted on fold ``k`` (and applied to the other fold);
    * ``folds``: int64 ``[N]`` fold ids (:func:`stratified_halves`); ``oof_predictions``: int64 ``[N]``;
    * ``n``: the number of rows.

    Scores are scikit-learn's macro-F1 (:func:`mtl.evaluation.metrics.task_scores`). Needs at least 2 rows.
    """
    z = _logits(logits)
    if z.shape[1] != num_labels:
        raise ValueError(f"logits have {z.shape[1]} columns for {num_labels} labels")
    y = _labels(labels, z.shape[0], num_labels)
    if y.shape[0] < 2:
        raise ValueError(f"cross-fitting needs at least 2 rows, got {y.shape[0]}")
    folds = stratified_halves(y, seed)
    oof = np.empty_like(y)
    fold_biases = np.zeros((2, num_labels), dtype=np.float64)
    for k in (0, 1):  # fit on fold k, predict the other fold
        fit, held = folds == k, folds != k
        fold_biases[k] = fit_biases(z[fit], y[fit], num_labels, rounds=rounds, grid=grid)
        oof[held] = apply_biases(z[held], fold_biases[k])
    biases = fit_biases(z, y, num_labels, rounds=rounds, grid=grid)
    return {
        "argmax_macro_f1": task_scores(y, argmax(z), num_labels).macro_f1,
        "cross_fitted_macro_f1": task_scores(y, oof, num_labels).macro_f1,
        "in_sample_macro_f1": task_scores(y, apply_biases(z, biases), num_labels).macro_f1,
        "biases": biases,
        "fold_biases": fold_biases,
        "folds": folds,
        "oof_predictions": oof,
        "n": int(y.shape[0]),
    }


# ---------------------------------------------------------------------------------------------------- the run's rule

#: the decision rules, in the order they are reported
RULES = ("argmax", "logit_adjusted", "tuned_biases")


@dataclass
class DecisionSettings:
    """The ``decision`` config group (``decision=argmax|logit_adjusted|tuned_biases``); these defaults are
    the group's defaults.

    Every evaluation scores all rules side by side; ``rule`` is the run's own: the best checkpoint is the
    one with the best average under it (``tuned_biases``: the two-fold cross-fitted score, never the
    in-sample one), and ``mtl-predict`` applies it to the test logits (the biases fitted on all of dev at
    the best evaluation, or ``τ·log π`` with the training prior π saved in the checkpoint).
    """

    rule: str = "argmax"  # argmax | logit_adjusted | tuned_biases
    tau: float = 1.0  # logit_adjusted: argmax(z - tau * log prior)
    seed: int = 0  # tuned_biases: the stratified dev halves of the cross-fitting
    rounds: int = 3  # tuned_biases: coordinate-ascent rounds

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"decision.rule={self.rule}: choose one of {', '.join(RULES)}")
        if not np.isfinite(float(self.tau)):
            raise ValueError(f"decision.tau={self.tau}: must be a finite number")
        if int(self.rounds) < 1:
            raise ValueError(f"decision.rounds={self.rounds}: must be a positive integer")


def log_prior(counts: Sequence[float]) -> np.ndarray:
    """``log π`` from training label counts, each count raised to at least 1 (a class absent from training
    still gets a finite adjustment, as ``mtl.losses.class_prior(counts, min_count=1)``)."""
    c = np.maximum(np.asarray(counts, dtype=np.float64).reshape(-1), 1.0)
    return np.log(c / c.sum())


def decide(logits: Any, rule: str, *, class_counts: Sequence[float] | None = None, tau: float = 1.0,
           biases: Sequence[float] | None = None) -> np.ndarray:
    """Predictions of ``rule`` on ``logits`` ``[N, C]``: ``argmax``; ``logit_adjusted`` (needs the training
    ``class_counts``); ``tuned_biases`` (needs the fitted ``biases``)."""
    if rule == "argmax":
        return argmax(logits)
    if rule == "logit_adjusted":
        if class_counts is None:
            raise ValueError("decision rule logit_adjusted needs the training class counts (none were saved)")
        return argmax(_logits(logits) - float(tau) * log_prior(class_counts))
    if rule == "tuned_biases":
        if biases is None:
            raise ValueError("decision rule tuned_biases needs fitted biases (none were saved)")
        return apply_biases(logits, biases)
    raise ValueError(f"unknown decision rule {rule!r}; choose one of {', '.join(RULES)}")


def score_rules(logits: Any, labels: Any, num_labels: int, settings: DecisionSettings,
                class_counts: Sequence[float] | None = None) -> dict[str, Any]:
    """Every rule on one task's labelled dev logits, side by side.

    Returns ``{"macro_f1": {rule: score}, "predictions": {rule: int64 [N]}, "biases": [C] floats}``:
    ``argmax``; ``logit_adjusted`` (only with ``class_counts``); ``tuned_biases``, the honest two-fold
    cross-fitted score (its predictions are the out-of-fold ones) beside ``tuned_biases_in_sample``
    (optimistic, for reference; no predictions); ``biases`` fitted on all rows (what prediction applies).
    With fewer than 2 rows tuning is impossible: the biases are zeros and tuned_biases scores as argmax.
    """
    z = _logits(logits)
    y = _labels(labels, z.shape[0], num_labels)
    raw = argmax(z)
    preds: dict[str, np.ndarray] = {"argmax": raw}
    if class_counts is not None:
        preds["logit_adjusted"] = decide(z, "logit_adjusted", class_counts=class_counts, tau=settings.tau)
    if y.shape[0] >= 2:
        cf = cross_fitted_scores(z, y, num_labels, seed=settings.seed, rounds=settings.rounds)
        preds["tuned_biases"], biases = cf["oof_predictions"], cf["biases"]
        in_sample = float(cf["in_sample_macro_f1"])
    else:
        preds["tuned_biases"], biases = raw, np.zeros(num_labels)
        in_sample = task_scores(y, raw, num_labels).macro_f1 if y.size else 0.0
    scores = {r: task_scores(y, p, num_labels).macro_f1 for r, p in preds.items()}
    scores["tuned_biases_in_sample"] = in_sample
    return {"macro_f1": scores, "predictions": preds, "biases": [float(b) for b in biases]}


def never_predicted(predictions: Sequence[int], names: Sequence[str]) -> list[str]:
    """The class names that ``predictions`` never contain."""
    seen = set(np.asarray(predictions, dtype=np.int64).reshape(-1).tolist())
    return [str(n) for i, n in enumerate(names) if i not in seen]


def rule_averages(per_task: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{rule: mean over tasks}`` of :func:`score_rules` outputs ``{task: ...}`` (rules every task has)."""
    if not per_task:
        return {}
    common = set.intersection(*(set(d["macro_f1"]) for d in per_task.values()))
    order = [*RULES, "tuned_biases_in_sample"]
    return {r: float(np.mean([d["macro_f1"][r] for d in per_task.values()])) for r in order if r in common}

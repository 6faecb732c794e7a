"""Decision rules for macro-F1 (mtl/evaluation/decision.py): argmax, logit adjustment, tuned biases, cross-fitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from mtl.evaluation.decision import (
    _class_candidates,
    apply_biases,
    argmax,
    cross_fitted_scores,
    fit_biases,
    logit_adjusted_predictions,
    macro_f1,
    stratified_halves,
)


def sk_macro_f1(y: np.ndarray, p: np.ndarray, c: int) -> float:
    return float(f1_score(y, p, labels=list(range(c)), average="macro", zero_division=0))


def exact_case() -> tuple[np.ndarray, np.ndarray]:
    """Class 2's logit is one too low: argmax sends its rows to class 0 (tie 0/0 -> lowest index).

    Raw: class 0 TP 4, FP 2 -> F1 8/10; class 1 perfect; class 2 never predicted -> 0; macro 0.6.
    Any b_2 in (1, 3) classifies every row right (class 2 rows: -1 + b_2 > 0; class 0 rows: -2 + b_2 < 1).
    """
    rows = [[1.0, 0.0, -2.0]] * 4 + [[0.0, 1.0, -2.0]] * 4 + [[0.0, 0.0, -1.0]] * 2
    return np.array(rows), np.array([0] * 4 + [1] * 4 + [2] * 2)


def imbalanced_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 3-class logits, class 2 rare (40 of 390) and its logit systematically 3 too low."""
    rng = np.random.default_rng(seed)
    y = np.array([0] * 200 + [1] * 150 + [2] * 40)
    z = rng.normal(0.0, 1.0, (y.size, 3))
    z[np.arange(y.size), y] += 2.0
    z[:, 2] -= 3.0
    return z, y


def test_argmax_and_torch_input() -> None:
    z = [[0.1, 0.3, 0.2], [1.0, 1.0, 0.0], [-1.0, -2.0, -0.5]]
    assert argmax(z).tolist() == [1, 0, 2]  # ties: the lowest index
    assert argmax(torch.tensor(z)).tolist() == [1, 0, 2]
    assert argmax(z).dtype == np.int64
    with pytest.raises(ValueError, match=r"logits must be \[N, C\]"):
        argmax([1.0, 2.0])


def test_logit_adjusted_predictions_by_hand() -> None:
    z = [[1.0, 0.8], [3.0, 0.5]]
    prior = [0.9, 0.1]
    # row 0: 1 - log .9 = 1.105 < 0.8 - log .1 = 3.103 -> 1; row 1: 3.105 > 2.803 -> 0
    assert 1.0 - math.log(0.9) < 0.8 - math.log(0.1) and 3.0 - math.log(0.9) > 0.5 - math.log(0.1)
    assert logit_adjusted_predictions(z, prior, tau=1.0).tolist() == [1, 0]
    assert logit_adjusted_predictions(z, torch.tensor(prior), tau=0.0).tolist() == [0, 0]
    # row 0 at tau 0.1: 1 + 0.0105 = 1.0105 < 0.8 + 0.2303 = 1.0303 -> 1; at tau 0.05: 1.0053 > 0.9151 -> 0
    assert logit_adjusted_predictions(z, prior, tau=0.1).tolist() == [1, 0]
    assert logit_adjusted_predictions(z, prior, tau=0.05).tolist() == [0, 0]
    assert logit_adjusted_predictions(z, [9.0, 1.0]).tolist() == [1, 0]  # unnormalised prior: same rule
    with pytest.raises(ValueError, match="finite and positive"):
        logit_adjusted_predictions(z, [1.0, 0.0])
    with pytest.raises(ValueError, match="2 entries for"):
        logit_adjusted_predictions([[1.0, 2.0, 3.0]], prior)


def test_macro_f1_equals_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    for c in (2, 3, 5):
        for n in (1, 7, 50):
            y = rng.integers(0, c, n)
            p = rng.integers(0, c - 1, n)  # class c-1 never predicted, maybe absent too
            assert macro_f1(y, p, c) == pytest.approx(sk_macro_f1(y, p, c), abs=1e-12)


def test_candidates_match_argmax_with_the_bias_replaced_ties_included() -> None:
    rng = np.random.default_rng(2)
    z = rng.integers(-2, 3, (40, 4)).astype(float)  # integer logits: many ties
    b = rng.integers(-1, 2, 4).astype(float)
    grid = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    for c in range(4):
        cand = _class_candidates(z, b, c, grid)
        for g, value in enumerate(grid):
            bb = b.copy()
            bb[c] = value
            assert cand[g].tolist() == apply_biases(z, bb).tolist()


def test_fit_biases_exact_case() -> None:
    z, y = exact_case()
    assert sk_macro_f1(y, argmax(z), 3) == pytest.approx(0.6)
    b = fit_biases(z, y, 3)
    # b_2 = 1.1: the grid value (step 0.1) nearest 0 inside (1, 3); classes 0 and 1 cannot improve on their own
    assert b.shape == (3,) and b.dtype == np.float64
    assert b.tolist() == pytest.approx([0.0, 0.0, 1.1])
    assert apply_biases(z, b).tolist() == y.tolist()
    out = cross_fitted_scores(z, y, 3)
    assert out["argmax_macro_f1"] == pytest.approx(0.6)
    assert out["in_sample_macro_f1"] == pytest.approx(1.0)
    # each half holds one class-2 row, so each fold learns b_2 in (1, 3) and predicts the other half right
    assert out["cross_fitted_macro_f1"] == pytest.approx(1.0)


def test_tuned_biases_raise_macro_f1_on_a_rare_low_class() -> None:
    z, y = imbalanced_case()
    raw = argmax(z)
    assert np.sum(raw == 2) <= 10  # the rare class (40 rows) is rarely predicted
    out = cross_fitted_scores(z, y, 3, seed=0)
    assert out["argmax_macro_f1"] == pytest.approx(sk_macro_f1(y, raw, 3))
    assert out["in_sample_macro_f1"] > out["argmax_macro_f1"] + 0.1
    assert out["argmax_macro_f1"] < out["cross_fitted_macro_f1"] <= out["in_sample_macro_f1"] + 1e-12
    b = out["biases"]
    assert b[2] - max(b[0], b[1]) >= 1.5  # the rare class is lifted
    tuned = apply_biases(z, b)
    assert set(tuned.tolist()) == {0, 1, 2} and set(out["oof_predictions"].tolist()) == {0, 1, 2}
    assert out["in_sample_macro_f1"] == pytest.approx(sk_macro_f1(y, tuned, 3))
    assert out["cross_fitted_macro_f1"] == pytest.approx(sk_macro_f1(y, out["oof_predictions"], 3))


def test_in_sample_tuning_never_falls_below_argmax() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        z = rng.normal(0.0, 1.0, (60, 4))
        y = rng.integers(0, 4, 60)
        b = fit_biases(z, y, 4, rounds=2, grid=[-1.0, -0.5, 0.5, 1.0])  # 0 not on the grid: start kept
        assert macro_f1(y, apply_biases(z, b), 4) >= macro_f1(y, argmax(z), 4) - 1e-12


def test_cross_fitting_is_deterministic_and_shaped() -> None:
    z, y = imbalanced_case(seed=4)
    a = cross_fitted_scores(z, y, 3, seed=7)
    b = cross_fitted_scores(torch.tensor(z), torch.tensor(y), 3, seed=7)
    for key in ("argmax_macro_f1", "cross_fitted_macro_f1", "in_sample_macro_f1", "n"):
        assert a[key] == pytest.approx(b[key], abs=1e-6)
    for key in ("folds", "oof_predictions"):
        assert np.array_equal(a[key], b[key])
    assert np.array_equal(a["biases"], cross_fitted_scores(z, y, 3, seed=7)["biases"])
    assert a["biases"].shape == (3,) and a["fold_biases"].shape == (2, 3)
    assert a["folds"].shape == (y.size,) and a["oof_predictions"].shape == (y.size,) and a["n"] == y.size
    assert set(np.unique(a["folds"]).tolist()) == {0, 1}
    for c in range(3):  # stratified: each class split in halves differing by at most one row
        in_class = a["folds"][y == c]
        assert abs(int(np.sum(in_class == 0)) - int(np.sum(in_class == 1))) <= 1
    assert abs(int(np.sum(a["folds"] == 0)) - int(np.sum(a["folds"] == 1))) <= 1
    assert not np.array_equal(stratified_halves(y, 7), stratified_halves(y, 8))
    assert np.array_equal(stratified_halves(y, 7), a["folds"])


def test_errors() -> None:
    z, y = exact_case()
    with pytest.raises(ValueError, match="3 columns for 4 labels"):
        fit_biases(z, y, 4)
    with pytest.raises(ValueError, match="labels must lie in"):
        fit_biases(z, y + 1, 3)
    with pytest.raises(ValueError, match="9 labels for 10 rows"):
        cross_fitted_scores(z, y[:-1], 3)
    with pytest.raises(ValueError, match="at least 2 rows"):
        cross_fitted_scores(z[:1], y[:1], 3)
    with pytest.raises(ValueError, match="grid must be"):
        fit_biases(z, y, 3, grid=[])
    assert fit_biases(z[:0], y[:0], 3).tolist() == [0.0, 0.0, 0.0]

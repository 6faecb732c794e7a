"""Bootstrap standard errors of dev macro-F1 (mtl/evaluation/bootstrap.py) against scikit-learn on the same
resamples, and their scaling with the dev size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from mtl.evaluation.bootstrap import dev_standard_errors, macro_f1_replicates, run_dev_standard_errors


def _sample(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))  # 60 % copied, the rest random
    return y, p


def test_each_replicate_is_sklearns_macro_f1_of_the_resampled_rows() -> None:
    y, p = _sample(50, 4, 0)
    p[p == 3] = 0  # class 3 never predicted: it counts 0, as zero_division=0 does
    got = macro_f1_replicates(y, p, 5, replicates=20, rng=np.random.default_rng(7))
    idx = np.random.default_rng(7).integers(0, 50, size=(20, 50))  # the same draws
    want = [f1_score(y[i], p[i], labels=range(5), average="macro", zero_division=0) for i in idx]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_standard_error_shrinks_with_the_square_root_of_the_dev_size() -> None:
    y, p = _sample(400, 3, 1)
    small = dev_standard_errors({"t": {"labels": y, "predictions": p, "label_names": "abc"}}, 2000)["tasks"]["t"]
    big = dev_standard_errors({"t": {"labels": np.tile(y, 4), "predictions": np.tile(p, 4), "label_names": "abc"}},
                              2000)["tasks"]["t"]
    assert small / big == pytest.approx(2.0, rel=0.1)  # 4x the rows, same score: half the error
    perfect = dev_standard_errors({"t": {"labels": y, "predictions": y, "label_names": "abc"}}, 200)
    assert perfect["tasks"]["t"] == 0.0 and perfect["average"] == 0.0


def test_the_average_of_independent_tasks_has_the_root_mean_square_error() -> None:
    y1, p1 = _sample(300, 3, 2)
    y2, p2 = _sample(300, 7, 3)
    out = dev_standard_errors({"a": {"labels": y1, "predictions": p1, "label_names": list("abc")},
                               "b": {"labels": y2, "predictions": p2, "label_names": list("abcdefg")}}, 4000)
    a, b = out["tasks"]["a"], out["tasks"]["b"]
    assert out["average"] == pytest.approx(np.sqrt(a**2 + b**2) / 2, rel=0.08)


def test_a_runs_dev_predictions_file(tmp_path: Path) -> None:
    y, p = _sample(80, 3, 4)
    tasks = {"t": {"label_names": list("abc"), "labels": y.tolist(), "predictions": p.tolist()},
             "m": {"label_names": list("xy"), "labels": [[0], [1]], "predictions": [[0], [0, 1]]}}  # multi-label: left out
    (tmp_path / "dev_predictions.json").write_text(json.dumps({"step": 3, "tasks": tasks}))
    out = run_dev_standard_errors(tmp_path, 100)
    assert out is not None and set(out["tasks"]) == {"t"} and out["average"] == out["tasks"]["t"] > 0
    assert run_dev_standard_errors(tmp_path / "missing") is None
    (tmp_path / "dev_predictions.json").write_text("{")
    with pytest.raises(ValueError, match="dev_predictions.json"):
        run_dev_standard_errors(tmp_path)
    with pytest.raises(ValueError, match="range"):
        macro_f1_replicates([0, 3], [0, 1], 3)

"""Evaluation is metrics, reports and plots: it never imports training or inference, and the plots after
training come from the best evaluation's kept predictions (no model, no re-evaluation)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from mtl.evaluation import plots
from mtl.evaluation.metrics import task_scores
from mtl.evaluation.results import EvalResult

EVALUATION = Path(__file__).resolve().parents[1] / "mtl" / "evaluation"
FORBIDDEN = ("mtl.training", "mtl.inference")


def _imported_modules(path: Path) -> list[str]:
    """Every module an ``import`` / ``from ... import`` names in ``path`` (relative ones resolved)."""
    package = ".".join(path.relative_to(EVALUATION.parent.parent).parts[:-1])  # mtl/evaluation/x.py: mtl.evaluation
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)  # from ..training import x: mtl.training
            out.append(base)
            out.extend(f"{base}.{alias.name}" for alias in node.names)
    return out


def test_evaluation_never_imports_training_or_inference() -> None:
    sources = sorted(EVALUATION.rglob("*.py"))
    assert sources, EVALUATION
    bad = [
        f"{path.relative_to(EVALUATION.parent.parent)}: {mod}"
        for path in sources
        for mod in _imported_modules(path)
        if any(mod == f or mod.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert bad == []


def best_eval() -> EvalResult:
    labels = {"ocnli": [0, 1, 2, 1, 0, 2], "tnews": [3, 0, 1, 2, 3, 3, 0]}
    preds = {"ocnli": [0, 1, 1, 1, 0, 2], "tnews": [3, 0, 1, 1, 3, 2, 0]}
    num = {"ocnli": 3, "tnews": 4}
    scores = {t: task_scores(labels[t], preds[t], num[t], 0.5) for t in labels}
    return EvalResult(40, scores, preds, labels)


def test_eval_result_round_trip_keeps_predictions_and_labels() -> None:
    best = best_eval()
    again = EvalResult.from_dict(json.loads(json.dumps(best.to_dict())))
    assert again == best and again.average == pytest.approx(best.average)
    assert again.flat() == best.flat()
    old = {"step": 3, "scores": best.to_dict()["scores"]}  # written before predictions were kept
    assert EvalResult.from_dict(old).predictions == {} and EvalResult.from_dict(old).labels == {}


def test_run_outputs_from_the_best_evaluation_without_a_model(tmp_path: Path) -> None:
    best = best_eval()
    names = {"ocnli": ["entailment", "neutral", "contradiction"], "tnews": ["100", "101", "102", "103"]}
    metrics = {
        "best_step": best.step, "tasks": {t: vars(s) for t, s in best.scores.items()},
        "history": [{"step": 20, **best.flat()}, best.flat() | {"step": 40}],
        "sampler": {"name": "all_tasks", "proportions": {"ocnli": 0.5, "tnews": 0.5}, "counts": {}},
    }
    written = plots.write_run_outputs(tmp_path, metrics, names, best)
    assert {p.name for p in written} == {"curves.png", "sampler_proportions.png", "confusion_matrices.png"}
    saved = json.loads((tmp_path / "dev_predictions.json").read_text(encoding="utf-8"))
    assert saved == {
        "step": 40,
        "tasks": {t: {"label_names": names[t], "labels": best.labels[t], "predictions": best.predictions[t]}
                  for t in best.labels},
    }


@pytest.mark.parametrize("best", [None, EvalResult(5, best_eval().scores)])
def test_run_outputs_without_kept_predictions_only_warn(tmp_path: Path, best: EvalResult | None,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    metrics = {"best_step": 5, "tasks": {}, "history": [{"step": 5, "avg_macro_f1": 0.4}]}
    written = plots.write_run_outputs(tmp_path, metrics, {}, best)
    assert [p.name for p in written] == ["curves.png"]
    assert not (tmp_path / "dev_predictions.json").exists()
    assert "no predictions of the best dev evaluation" in caplog.text

"""Decision rules in the run: every rule scored at evaluation, the run's rule selects the best checkpoint,
its biases/priors travel in the checkpoint and mtl-predict applies them (issue: class imbalance)."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl.cli.predict import main as predict_main
from mtl.config import compose_train, default_node
from mtl.evaluation.decision import (
    RULES,
    DecisionSettings,
    cross_fitted_scores,
    decide,
    log_prior,
    never_predicted,
    rule_averages,
    score_rules,
)
from mtl.evaluation.metrics import TaskScores
from mtl.evaluation.results import EvalResult
from mtl.inference import load_checkpoint, validate_submission
from mtl.inference.predict import apply_rule, predict_logits
from mtl.training.run import run
from mtl.training.validate import ConfigError, validate_config
from tests.helpers import tiny_run_cfg, tiny_run_env
from tests.test_decision import imbalanced_case


# ---------------------------------------------------------------------------------------------------- the rules
def test_decide_each_rule_by_hand() -> None:
    z = np.array([[1.0, 0.8], [3.0, 0.5]])
    assert decide(z, "argmax").tolist() == [0, 0]
    # counts 90/10 -> log prior (log .9, log .1): row 0: 1.105 vs 3.103 -> 1; row 1: 3.105 vs 2.803 -> 0
    assert decide(z, "logit_adjusted", class_counts=[90, 10]).tolist() == [1, 0]
    assert decide(z, "logit_adjusted", class_counts=[90, 10], tau=0.0).tolist() == [0, 0]
    # biases (0, 0.3): row 0: 1.0 vs 1.1 -> 1; row 1: 3.0 vs 0.8 -> 0
    assert decide(z, "tuned_biases", biases=[0.0, 0.3]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="class counts"):
        decide(z, "logit_adjusted")
    with pytest.raises(ValueError, match="fitted biases"):
        decide(z, "tuned_biases")
    with pytest.raises(ValueError, match="unknown decision rule 'vote'"):
        decide(z, "vote")


def test_log_prior_raises_zero_counts_to_one() -> None:
    assert log_prior([3, 0, 1]).tolist() == pytest.approx([math.log(3 / 5), math.log(1 / 5), math.log(1 / 5)])


def test_score_rules_side_by_side() -> None:
    z, y = imbalanced_case()
    counts = [200, 150, 40]
    out = score_rules(z, y, 3, DecisionSettings(seed=3), counts)
    cf = cross_fitted_scores(z, y, 3, seed=3)
    assert out["macro_f1"]["argmax"] == pytest.approx(cf["argmax_macro_f1"])
    assert out["macro_f1"]["tuned_biases"] == pytest.approx(cf["cross_fitted_macro_f1"])
    assert out["macro_f1"]["tuned_biases_in_sample"] == pytest.approx(cf["in_sample_macro_f1"])
    assert out["biases"] == pytest.approx(cf["biases"].tolist())
    assert out["predictions"]["tuned_biases"].tolist() == cf["oof_predictions"].tolist()
    by_hand = np.argmax(z - np.log(np.array(counts) / sum(counts)), axis=1)
    assert out["predictions"]["logit_adjusted"].tolist() == by_hand.tolist()
    # the rare class (logit 3 too low) is rescued by both adjusted rules
    assert out["macro_f1"]["tuned_biases"] > out["macro_f1"]["argmax"] + 0.1
    assert out["macro_f1"]["logit_adjusted"] > out["macro_f1"]["argmax"]
    # without counts there is no logit adjustment; one row: no tuning, zero biases
    assert "logit_adjusted" not in score_rules(z, y, 3, DecisionSettings())["macro_f1"]
    one = score_rules(z[:1], y[:1], 3, DecisionSettings())
    assert one["biases"] == [0.0, 0.0, 0.0] and one["macro_f1"]["tuned_biases"] == one["macro_f1"]["argmax"]


def test_rule_averages_and_never_predicted() -> None:
    per_task = {"a": {"macro_f1": {"argmax": 0.2, "tuned_biases": 0.4}},
                "b": {"macro_f1": {"argmax": 0.6, "tuned_biases": 0.5, "logit_adjusted": 0.9}}}
    assert rule_averages(per_task) == pytest.approx({"argmax": 0.4, "tuned_biases": 0.45})
    assert never_predicted([0, 2, 2], ["x", "y", "z", "w"]) == ["y", "w"]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="decision.rule=best: choose one of argmax, logit_adjusted, tuned_biases"):
        DecisionSettings(rule="best")
    with pytest.raises(ValueError, match="decision.rounds=0"):
        DecisionSettings(rounds=0)


# ---------------------------------------------------------------------------------------------------- config
def test_decision_group_composes() -> None:
    assert compose_train().decision.rule == "argmax"
    for rule in RULES:
        cfg = compose_train([f"decision={rule}"])
        assert cfg.decision.rule == rule and cfg.decision.tau == 1.0
        assert default_node("decision", rule) == {**vars(DecisionSettings()), "rule": rule}
    cfg = compose_train(["decision=logit_adjusted", "decision.tau=0.5"])
    assert cfg.decision.tau == 0.5
    cfg = compose_train(["decision.rule=best"])
    with pytest.raises(ConfigError, match="decision.rule=best: choose one of"):
        validate_config(cfg)


# ---------------------------------------------------------------------------------------------------- EvalResult
def _eval(rule: str) -> EvalResult:
    scores = {"a": TaskScores(0.2, 0.5, 1.0, 4), "b": TaskScores(0.6, 0.7, 0.9, 4)}
    decisions = {
        "a": {"macro_f1": {"argmax": 0.2, "logit_adjusted": 0.3, "tuned_biases": 0.4, "tuned_biases_in_sample": 0.5},
              "biases": [0.0, 1.0], "predictions": {"tuned_biases": [1, 0, 1, 1]}},
        "b": {"macro_f1": {"argmax": 0.6, "logit_adjusted": 0.5, "tuned_biases": 0.8, "tuned_biases_in_sample": 0.9},
              "biases": [0.5, 0.0], "predictions": {}},
    }
    return EvalResult(7, scores, {}, {}, decisions, rule)


def test_eval_result_average_follows_the_rule() -> None:
    ev = _eval("tuned_biases")
    assert ev.average == pytest.approx(0.6) and ev.argmax_average == pytest.approx(0.4)
    assert _eval("argmax").average == pytest.approx(0.4)
    assert _eval("logit_adjusted").average == pytest.approx(0.4)
    assert ev.rules() == ["argmax", "logit_adjusted", "tuned_biases", "tuned_biases_in_sample"]
    flat = ev.flat()
    assert flat["avg_macro_f1"] == pytest.approx(0.6) and flat["avg_macro_f1/argmax"] == pytest.approx(0.4)
    assert flat["a/macro_f1"] == 0.2 and flat["a/macro_f1/tuned_biases"] == 0.4
    again = EvalResult.from_dict(ev.to_dict())
    assert again == ev
    old = {"step": 1, "scores": {"a": vars(TaskScores(0.1, 0.2, 0.3, 4))}}  # an older checkpoint's entry
    assert EvalResult.from_dict(old).rule == "argmax" and EvalResult.from_dict(old).average == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------------- a run
@pytest.fixture(autouse=True)
def _fixture_data_only(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch)


@pytest.fixture(scope="module")
def tuned_run(fixture_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("tuned")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MTL_DATA_DIR", raising=False)
        mp.setenv("MTL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        cfg = tiny_run_cfg(fixture_data_root, "data.batch_size=16", "trainer.max_steps=8", "trainer.eval_every=4",
                           "decision=tuned_biases", "loss=logit_adjusted")
        metrics = run(cfg, run_dir)
    return run_dir, metrics


def test_run_scores_every_rule_and_selects_by_its_own(tuned_run: tuple[Path, dict]) -> None:
    run_dir, m = tuned_run
    d = m["decision"]
    assert d["rule"] == "tuned_biases" and set(d["averages"]) == {*RULES, "tuned_biases_in_sample"}
    assert m["avg_macro_f1"] == pytest.approx(d["averages"]["tuned_biases"])  # the honest, cross-fitted one
    assert d["averages"]["argmax"] == pytest.approx(np.mean([s["macro_f1"] for s in m["tasks"].values()]))
    # the best step is the one with the best cross-fitted average in the history
    hist = {row["step"]: row["avg_macro_f1"] for row in m["history"]}
    assert m["best_step"] == max(hist, key=lambda s: (hist[s], -s))
    assert all("avg_macro_f1/argmax" in row for row in m["history"])
    for t in ("ocnli", "ocemotion", "tnews"):
        assert set(d["tasks"][t]["never_predicted"]) == set(RULES)
        assert len(d["tasks"][t]["biases"]) == len(m["class_counts"][t])
    assert sum(m["class_counts"]["ocnli"]) == m["data"]["ocnli"]["train"]
    saved = json.loads((run_dir / "dev_predictions.json").read_text(encoding="utf-8"))
    assert set(saved["tasks"]["ocemotion"]["by_rule"]) == {"logit_adjusted", "tuned_biases"}
    assert (run_dir / "confusion_matrices_tuned_biases.png").is_file()


def test_checkpoint_carries_the_rule_and_predict_applies_it(
    tuned_run: tuple[Path, dict], fixture_data_root: Path, tmp_path: Path
) -> None:
    run_dir, m = tuned_run
    ckpt = load_checkpoint(run_dir, device="cpu")
    assert ckpt.decision_rule == "tuned_biases"
    assert ckpt.decision["biases"] == {t: d["biases"] for t, d in m["decision"]["tasks"].items()}
    assert ckpt.decision["class_counts"] == m["class_counts"]
    # the submission applies the dev-tuned biases: same labels as argmax(z + b) by hand
    assert predict_main([str(run_dir), "--split", "a", "--data-root", str(fixture_data_root),
                         "--out", str(tmp_path / "a")]) == 0
    from mtl.data.loading import load_test_sets

    for task, fname in (("ocemotion", "ocemotion_predict.json"), ("tnews", "tnews_predict.json")):
        examples = load_test_sets(task, ckpt.task_config(task), {**ckpt.data_config, "on_bad_row": "error"},
                                  root=fixture_data_root)["a"]
        z = predict_logits(ckpt, task, examples)
        by_hand = (z.double() + torch.tensor(ckpt.decision["biases"][task], dtype=torch.float64)).argmax(-1)
        assert apply_rule(ckpt, task, z).tolist() == by_hand.tolist()
        with zipfile.ZipFile(tmp_path / "a" / "result.zip") as zf:
            rows = [json.loads(line) for line in zf.read(fname).decode("utf-8").splitlines()]
        assert [r["label"] for r in rows] == [ckpt.labels[task][i] for i in by_hand.tolist()]
    # the zip passes the submission format check (every test id once, every label a known one)
    sub_ids, sub_labels = {}, {}
    for task in ckpt.tasks:
        examples = load_test_sets(task, ckpt.task_config(task), ckpt.data_config, root=fixture_data_root)["a"]
        sub_ids[f"{task}_predict.json"] = [e.id for e in examples]
        sub_labels[f"{task}_predict.json"] = ckpt.labels[task]
    assert validate_submission(tmp_path / "a" / "result.zip", sub_ids, sub_labels) == []
    assert predict_main([str(run_dir), "--split", "dev", "--decision", "argmax", "--data-root",
                         str(fixture_data_root), "--out", str(tmp_path / "dev")]) == 0
    scores = json.loads((tmp_path / "dev" / "scores.json").read_text(encoding="utf-8"))
    assert scores["decision_rule"] == "argmax"


def test_an_older_checkpoint_without_biases_is_refused_for_tuned_biases(tuned_run: tuple[Path, dict]) -> None:
    run_dir, _ = tuned_run
    ckpt = load_checkpoint(run_dir, device="cpu")
    ckpt.decision = {}
    assert ckpt.decision_rule == "argmax"
    with pytest.raises(ValueError, match="tuned_biases needs the biases fitted on dev for task 'tnews'"):
        apply_rule(ckpt, "tnews", torch.zeros(2, len(ckpt.labels["tnews"])), "tuned_biases")
    with pytest.raises(ValueError, match="logit_adjusted needs the training class counts"):
        apply_rule(ckpt, "tnews", torch.zeros(2, len(ckpt.labels["tnews"])), "logit_adjusted")

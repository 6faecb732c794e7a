"""Multi-label tasks (``type: multi_label``, docs/multilabel.md): label sets read from a separator-joined column,
multi-hot batches, the ``zlpr`` loss required (and refused for single-label tasks), macro/micro-F1 over labels,
a run beside a single-label task with a gradient balancer, resume, and ``mtl-predict`` scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from mtl.cli.predict import main as predict_main
from mtl.data.fixtures import TOPIC_LABELS, TOPICS_LABELLED, TOPICS_TRAIN
from mtl.data.loading import collate, load_task, tokenize_examples
from mtl.data.readers import BadRowError, Example, ReadSpec, read_clue_json, read_tianchi_tsv
from mtl.evaluation.metrics import TaskScores, format_table, majority_macro_f1, multilabel_task_scores
from mtl.evaluation.results import EvalResult
from mtl.models.encoder import tiny_tokenizer
from mtl.training.build import build_losses, check_loss_types
from mtl.training.run import run
from mtl.training.validate import ConfigError, validate_config
from tests.helpers import compose_train, tiny_run_cfg, tiny_run_env

LABELS = ("sports", "finance", "tech")
ML_TASKS = "tasks=[ocnli,fixture_topics]"


@pytest.fixture(autouse=True)
def _fixture_data_only(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch, one_thread=True)


def _spec(path: Path, **kw) -> ReadSpec:
    base = dict(source=str(path), path=path, columns=("id", "text", "labels"), text_columns=("text",),
                labels=LABELS, label_column="labels", multi_label=True)
    return ReadSpec(**{**base, **kw})


# ---------------------------------------------------------------------------------------------------- reading
def test_label_sets_are_parsed_including_empty_fields(tmp_path: Path) -> None:
    path = tmp_path / "ml.tsv"
    path.write_text("1\ta\tsports,finance\n2\tb\t\n3\tc\t tech , sports \n4\td\tfinance,finance\n5\te\t-\n",
                    encoding="utf-8")
    examples, report = read_tianchi_tsv(_spec(path))
    assert [(e.id, e.label) for e in examples] == [("1", (0, 1)), ("2", ()), ("3", (0, 2)), ("4", (1,))]
    assert report.unlabelled == 1 and report.kept == 4  # '-' is unlabelled; an empty field is a row with no label
    # another separator, and a label map applied to each part
    path.write_text("1\ta\tSPORT|tech\n", encoding="utf-8")
    (ex,), _ = read_tianchi_tsv(_spec(path, label_separator="|", label_map={"SPORT": "sports"}))
    assert ex.label == (0, 2)


def test_an_unknown_label_names_file_line_and_value_or_is_a_counted_skip(tmp_path: Path) -> None:
    path = tmp_path / "ml.tsv"
    path.write_text("1\ta\tsports\n2\tb\tsports,weather\n3\tc\ttech\n", encoding="utf-8")
    with pytest.raises(BadRowError, match=r"ml\.tsv, line 2: label 'weather' not in the task's labels") as exc:
        read_tianchi_tsv(_spec(path))
    assert exc.value.line == 2
    examples, report = read_tianchi_tsv(_spec(path, on_bad_row="skip"))
    assert [e.id for e in examples] == ["1", "3"] and sum(report.skipped.values()) == 1


def test_json_rows_may_hold_a_list_of_labels(tmp_path: Path) -> None:
    path = tmp_path / "ml.json"
    rows = [{"id": 1, "text": "a", "labels": ["tech", "sports"]}, {"id": 2, "text": "b", "labels": []},
            {"id": 3, "text": "c", "labels": "finance"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples, _ = read_clue_json(_spec(path, columns=()))
    assert [e.label for e in examples] == [(0, 2), (), (1,)]


def test_the_fixture_task_loads_with_a_seeded_random_split(fixture_data_root: Path) -> None:
    cfg = tiny_run_cfg(fixture_data_root, ML_TASKS)
    td = load_task("fixture_topics", cfg.tasks.fixture_topics, cfg.data, seed=0)
    assert td.multi_label and td.labels == TOPIC_LABELS
    assert len(td.train) + len(td.dev) == 120 and len(td.dev) == 12  # data.dev_fraction = 0.1
    assert all(isinstance(e.label, tuple) and len(e.label) <= 3 for e in td.train + td.dev)
    assert any(e.label == () for e in td.train)  # rows without a topic are kept
    again = load_task("fixture_topics", cfg.tasks.fixture_topics, cfg.data, seed=0)
    assert [e.id for e in again.dev] == [e.id for e in td.dev]  # seeded


def test_stratified_split_is_refused_for_a_multi_label_task(fixture_data_root: Path) -> None:
    cfg = tiny_run_cfg(fixture_data_root, ML_TASKS, "tasks.fixture_topics.split={method: stratified_fraction}")
    with pytest.raises(ValueError, match=r"task 'fixture_topics' is multi-label .*split: \{method: random_fraction\}"):
        load_task("fixture_topics", cfg.tasks.fixture_topics, cfg.data, seed=0)


def test_an_unknown_task_type_is_a_config_error(fixture_data_root: Path) -> None:
    cfg = tiny_run_cfg(fixture_data_root, ML_TASKS, "tasks.fixture_topics.type=multilabel")
    with pytest.raises(ConfigError, match=r"tasks.fixture_topics.type=multilabel: .*single_label, multi_label"):
        validate_config(cfg)


# ---------------------------------------------------------------------------------------------------- batches
def test_multi_hot_labels_are_tokenised_and_stacked_as_float(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    examples = [Example("0", ("足球",), (0, 2), 1), Example("1", ("银行理财",), (), 2), Example("2", ("手机",), (1,), 3)]
    ds = tokenize_examples(examples, tok, 16, cache_dir=tmp_path, num_labels=3)
    assert ds["labels"] == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    batch = collate(tok)([ds[i] for i in range(3)])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (3, 3)
    assert batch["input_ids"].dtype == torch.long
    with pytest.raises(ValueError, match="need num_labels"):
        tokenize_examples(examples, tok, 16)
    single = tokenize_examples([Example("0", ("足球",), 1, 1)], tok, 16, num_labels=3)  # ignored: single-label
    assert single["labels"] == [1] and collate(tok)([single[0]])["labels"].dtype == torch.long


# ---------------------------------------------------------------------------------------------------- metrics
def test_micro_and_macro_f1_by_hand() -> None:
    # 3 labels, 4 rows. true: {0,1} {1} {} {2}; predicted: {0} {1,2} {} {2}
    y_true = [[0, 1], [1], [], [2]]
    y_pred = [[0], [1, 2], [], [2]]
    # label 0: tp1 fp0 fn0 -> F1 1; label 1: tp1 fp0 fn1 -> 2/3; label 2: tp1 fp1 fn0 -> 2/3
    # micro: tp3 fp1 fn1 -> 6/8; exact match: rows 3 and 4 -> 1/2
    s = multilabel_task_scores(y_true, y_pred, 3, loss=0.25)
    assert s.macro_f1 == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert s.micro_f1 == pytest.approx(0.75)
    assert s.accuracy == pytest.approx(0.5) and s.n == 4 and s.loss == 0.25
    hot_t = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=bool)
    hot_p = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [0, 0, 1]], dtype=bool)
    assert s == multilabel_task_scores(hot_t, hot_p, 3, loss=0.25)  # multi-hot arrays give the same
    for avg in ("macro", "micro"):
        assert getattr(s, f"{avg}_f1") == pytest.approx(f1_score(hot_t, hot_p, average=avg, zero_division=0))
    # the majority floor: label 1 is on half the rows, so every row gets {1}: F1 of label 1 = 2*2/(2+4) = 2/3
    assert majority_macro_f1(y_true, 3) == pytest.approx((2 / 3) / 3)
    assert "micro-F1" in format_table({"t": s}) and "micro-F1" not in format_table({"t": TaskScores(0.5, 0.5, 1, 2)})


def test_task_scores_without_micro_f1_load_and_stay_as_before() -> None:
    old = {"macro_f1": 0.5, "accuracy": 0.6, "loss": 0.7, "n": 8}  # an older metrics.json / checkpoint entry
    s = TaskScores(**old)
    assert math.isnan(s.micro_f1) and vars(s) == old  # a single-label task's dict is unchanged
    ml = TaskScores(0.5, 0.6, 0.7, 8, 0.4)
    assert vars(ml)["micro_f1"] == 0.4 and TaskScores(**vars(ml)) == ml


def test_eval_result_with_a_multi_label_task_under_every_rule() -> None:
    scores = {"a": TaskScores(0.2, 0.5, 1.0, 4), "ml": TaskScores(0.6, 0.25, 0.9, 4, 0.7)}
    decisions = {
        "a": {"macro_f1": {"argmax": 0.2, "logit_adjusted": 0.3, "tuned_biases": 0.4, "tuned_biases_in_sample": 0.5},
              "biases": [0.0, 1.0], "predictions": {"tuned_biases": [1, 0, 1, 1]}},
        "ml": {"multi_label": True, "macro_f1": {}, "biases": [], "predictions": {"argmax": [0, 2, 1]}},
    }
    ev = EvalResult(3, scores, {"a": [0, 1, 1, 0], "ml": [[0, 2], [], [1], []]},
                    {"a": [0, 1, 0, 0], "ml": [[0], [], [1], [2]]}, decisions, "tuned_biases")
    assert ev.rules() == ["argmax", "logit_adjusted", "tuned_biases", "tuned_biases_in_sample"]
    assert ev.task_macro_f1("ml", "tuned_biases") == 0.6 and ev.average == pytest.approx((0.4 + 0.6) / 2)
    assert ev.rule_average("argmax") == pytest.approx(0.4)
    assert ev.flat()["ml/micro_f1"] == 0.7 and "a/micro_f1" not in ev.flat()
    again = EvalResult.from_dict(json.loads(json.dumps(ev.to_dict())))  # as a checkpoint or metrics file keeps it
    assert again == ev and again.predictions["ml"] == [[0, 2], [], [1], []] and again.is_multi_label("ml")
    alone = EvalResult(3, {"ml": scores["ml"]}, decisions={"ml": decisions["ml"]}, rule="logit_adjusted")
    assert alone.rules() == ["argmax"] and alone.average == 0.6  # no task with rule scores: still defined


# ---------------------------------------------------------------------------------------------------- losses
def test_a_multi_label_task_needs_a_multi_label_loss(fixture_data_root: Path) -> None:
    cfg = compose_train(ML_TASKS, "tasks.fixture_topics.loss={name: ce}")
    with pytest.raises(ValueError, match=r"task 'fixture_topics' is multi-label .*tasks.fixture_topics.loss=\{name: zlpr\}"):
        check_loss_types(cfg)
    with pytest.raises(ConfigError, match="task 'fixture_topics' is multi-label"):
        validate_config(cfg)  # before any data is read
    with pytest.raises(ValueError, match="task 'fixture_topics' is multi-label"):
        build_losses(cfg, {"ocnli": 3, "fixture_topics": 5})


def test_a_single_label_task_refuses_the_multi_label_loss() -> None:
    cfg = compose_train(ML_TASKS, "loss=zlpr")  # every task's loss: ocnli has one label per row
    with pytest.raises(ConfigError, match=r"task 'ocnli' is single-label but its loss 'zlpr' is a multi-label loss"):
        validate_config(cfg)
    cfg = compose_train("+tasks.ocnli.loss={name: zlpr}")
    with pytest.raises(ValueError, match="task 'ocnli' is single-label"):
        build_losses(cfg, {"ocnli": 3, "ocemotion": 7, "tnews": 15})


def test_the_task_config_sets_its_own_loss() -> None:
    cfg = compose_train(ML_TASKS, "loss=focal")  # the global loss is for the single-label task
    check_loss_types(cfg)
    losses = build_losses(cfg, {"ocnli": 3, "fixture_topics": 5})
    assert type(losses["ocnli"]).__name__ == "Focal" and losses["fixture_topics"].multi_label


# ---------------------------------------------------------------------------------------------------- a run
@pytest.fixture(scope="module")
def ml_run(fixture_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two steps of ocnli + the multi-label fixture task, every task each step, PCGrad on the task gradients,
    tuned biases as the run's rule (the multi-label task scores its plain macro-F1 under it)."""
    run_dir = tmp_path_factory.mktemp("ml") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MTL_DATA_DIR", raising=False)
        cfg = tiny_run_cfg(fixture_data_root, ML_TASKS, "sampler=all_tasks", "balancer=pcgrad",
                           "decision=tuned_biases", "data.batch_size=16", "trainer.max_steps=2",
                           "trainer.eval_every=2", "trainer.checkpoint_every=1")
        metrics = run(cfg, run_dir)
    return run_dir, metrics


def test_a_run_reports_micro_and_macro_f1_for_the_multi_label_task(ml_run: tuple[Path, dict]) -> None:
    run_dir, metrics = ml_run
    saved = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    ml = saved["tasks"]["fixture_topics"]
    assert {"macro_f1", "micro_f1", "accuracy", "loss", "n"} <= set(ml) and ml["n"] == 12
    assert 0.0 <= ml["macro_f1"] <= 1.0 and 0.0 <= ml["micro_f1"] <= 1.0 and math.isfinite(ml["loss"])
    assert "micro_f1" not in saved["tasks"]["ocnli"]  # the single-label task's entry as before
    assert saved["steps"] == 2 and saved["nonfinite_steps_skipped"] == 0 and saved["balancer"]["name"] == "pcgrad"
    assert saved["class_counts"]["fixture_topics"] == [int(c) for c in saved["class_counts"]["fixture_topics"]]
    assert len(saved["class_counts"]["fixture_topics"]) == 5
    # the run's average: the tuned-bias score of ocnli and the plain macro-F1 of the multi-label task
    d = saved["decision"]
    assert d["rule"] == "tuned_biases" and d["tasks"]["fixture_topics"]["biases"] == []
    assert d["tasks"]["fixture_topics"]["macro_f1"]["tuned_biases"] == pytest.approx(ml["macro_f1"])
    expected = (d["tasks"]["ocnli"]["macro_f1"]["tuned_biases"] + ml["macro_f1"]) / 2
    assert saved["avg_macro_f1"] == pytest.approx(expected)
    assert "fixture_topics/micro_f1" in saved["history"][-1]
    preds = json.loads((run_dir / "dev_predictions.json").read_text(encoding="utf-8"))["tasks"]["fixture_topics"]
    assert len(preds["labels"]) == 12 and all(isinstance(r, list) for r in preds["predictions"] + preds["labels"])
    assert (run_dir / "confusion_matrices.png").is_file()  # drawn for ocnli; the multi-label task is left out


def test_a_multi_label_run_resumes(ml_run: tuple[Path, dict], fixture_data_root: Path) -> None:
    run_dir, _ = ml_run
    cfg = tiny_run_cfg(fixture_data_root, ML_TASKS, "sampler=all_tasks", "balancer=pcgrad", "decision=tuned_biases",
                       "data.batch_size=16", "trainer.max_steps=3", "trainer.eval_every=2", "trainer.resume=auto",
                       "trainer.checkpoint_every=1")
    resumed = run_dir.parent / "resumed"
    resumed.mkdir()
    import shutil

    shutil.copytree(run_dir / "checkpoints", resumed / "checkpoints")
    (resumed / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    metrics = run(cfg, resumed)
    assert metrics["steps"] == 3 and metrics["resumed_from"].endswith("last.pt")
    assert [h["step"] for h in metrics["history"]] == [2, 3]


def test_a_one_task_sampler_with_accumulated_micro_batches(fixture_data_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The multi-hot batches of a one-task-per-step sampler, split into micro-batches (grad_accum_steps=2)."""
    from mtl.training import run as run_mod
    from tests.helpers import no_plots

    monkeypatch.setattr(run_mod, "write_run_outputs", no_plots)
    cfg = tiny_run_cfg(fixture_data_root, ML_TASKS, "sampler=proportional", "balancer=equal", "data.batch_size=5",
                       "trainer.grad_accum_steps=2", "trainer.max_steps=4", "trainer.eval_every=4")
    metrics = run(cfg, tmp_path / "run")
    assert metrics["steps"] == 4 and metrics["nonfinite_steps_skipped"] == 0
    assert sum(metrics["sampler"]["counts"].values()) == 4 and "micro_f1" in metrics["tasks"]["fixture_topics"]


def test_predict_scores_a_labelled_multi_label_file(ml_run: tuple[Path, dict], fixture_data_root: Path,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, metrics = ml_run
    labelled = fixture_data_root / TOPICS_LABELLED
    assert predict_main([str(run_dir), "--labelled", f"fixture_topics={labelled}", "--out", str(tmp_path / "lab"),
                         "--device", "cpu"]) == 0
    scores = json.loads((tmp_path / "lab" / "scores.json").read_text())
    ml = scores["tasks"]["fixture_topics"]
    assert ml["n"] == 30 and 0.0 <= ml["micro_f1"] <= 1.0 and scores["avg_macro_f1"] == pytest.approx(ml["macro_f1"])
    rows = [json.loads(x) for x in (tmp_path / "lab" / "fixture_topics_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and all(isinstance(r["label"], list) and isinstance(r["gold"], list) for r in rows)
    assert all(set(r["label"]) <= set(TOPIC_LABELS) for r in rows)
    gold = [line.split("\t")[2] for line in labelled.read_text(encoding="utf-8").splitlines()]
    assert [",".join(r["gold"]) for r in rows] == gold
    assert "micro-F1" in capsys.readouterr().out
    # the dev split re-created: the multi-label task's scores reproduce training's
    assert predict_main([str(run_dir), "--split", "dev", "--data-root", str(fixture_data_root),
                         "--out", str(tmp_path / "dev"), "--device", "cpu"]) == 0
    dev = json.loads((tmp_path / "dev" / "scores.json").read_text())["tasks"]["fixture_topics"]
    for key in ("macro_f1", "micro_f1", "accuracy", "loss"):
        assert dev[key] == pytest.approx(metrics["tasks"]["fixture_topics"][key], abs=1e-5)


def test_no_submission_for_a_task_without_test_files(ml_run: tuple[Path, dict], fixture_data_root: Path,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = ml_run
    assert predict_main([str(run_dir), "--split", "a", "--data-root", str(fixture_data_root),
                         "--out", str(tmp_path / "sub"), "--device", "cpu"]) == 1
    assert "task 'fixture_topics' has no test file for split 'a'" in capsys.readouterr().err


def test_the_fixture_files_are_where_the_task_config_reads(fixture_data_root: Path) -> None:
    assert (fixture_data_root / TOPICS_TRAIN).is_file()
    cfg = compose_train(ML_TASKS)
    assert cfg.tasks.fixture_topics.train_file == TOPICS_TRAIN and list(cfg.tasks.fixture_topics.labels) == TOPIC_LABELS
    assert list(compose_train().tasks) == ["ocnli", "ocemotion", "tnews"]  # the defaults are unchanged

"""Scores of a loaded checkpoint on labelled data: the re-created dev split, or labelled files."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mtl.data.loading import is_multi_label, label_separator, load_task, multi_hot, resolve_data_root
from mtl.data.normalize import tianchi_normalize
from mtl.data.readers import Example, ReadSpec, get_reader
from mtl.evaluation.metrics import TaskScores, average_macro_f1, multilabel_task_scores, task_scores
from mtl.inference.checkpoint import LoadedCheckpoint
from mtl.inference.predict import apply_rule, multi_label_loss, multi_label_predictions, predict_logits
from mtl.utils.files import write_json

log = logging.getLogger(__name__)

__all__ = ["score_dev", "score_labelled", "write_scores"]


def _read_labelled(task: str, task_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any], path: Path) -> list[Example]:
    """A labelled file in the task's own training format (its reader, columns and label map), normalised."""
    reader_name = task_cfg.get("reader", "tianchi_tsv")
    if reader_name == "hf_dataset":
        raise ValueError(f"task {task!r} reads a Hugging Face dataset: pass --split dev instead of a file")
    spec = ReadSpec(
        source=str(path),
        path=path,
        columns=tuple(task_cfg.get("columns") or ()),
        text_columns=tuple(task_cfg["text_columns"]),
        labels=tuple(str(x) for x in task_cfg["labels"]),
        label_column=task_cfg.get("label_column", "label"),
        id_column=task_cfg.get("id_column", "id"),
        label_map={str(k): str(v) for k, v in (task_cfg.get("label_map") or {}).items()},
        unlabelled_values=tuple(str(v) for v in (task_cfg.get("unlabelled_values", ["-"]) or ())),
        on_bad_row=data_cfg.get("on_bad_row", "error"),
        root_hint=f"--labelled {task}={path}",
        multi_label=is_multi_label(task_cfg, task),
        label_separator=label_separator(task_cfg),
    )
    examples, report = get_reader(reader_name)(spec)
    if report.unlabelled:
        log.info("%s: %d unlabelled rows in %s skipped", task, report.unlabelled, path)
    if data_cfg.get("normalize", True):
        examples = [replace(e, texts=tuple(tianchi_normalize(t) for t in e.texts)) for e in examples]
    return [e for e in examples if e.label is not None]


def _score(ckpt: LoadedCheckpoint, sets: Mapping[str, list[Example]], batch_size: int,
           rule: str | None = None) -> dict[str, Any]:
    scores: dict[str, TaskScores] = {}
    preds: dict[str, list[dict[str, str]]] = {}
    for task, examples in sets.items():
        if not examples:
            raise ValueError(f"task {task!r}: no labelled examples to score")
        if is_multi_label(ckpt.task_config(task), task):
            scores[task], preds[task] = _score_multi_label(ckpt, task, examples, batch_size)
            continue
        logits = predict_logits(ckpt, task, examples, batch_size)
        pred = [int(i) for i in apply_rule(ckpt, task, logits, rule).tolist()]
        gold = [int(e.label) for e in examples if e.label is not None]
        loss = float(torch.nn.functional.cross_entropy(logits, torch.tensor(gold)))
        scores[task] = task_scores(gold, pred, len(ckpt.labels[task]), loss)
        names = ckpt.labels[task]
        preds[task] = [{"id": e.id, "label": names[p], "gold": names[int(e.label)]}  # type: ignore[arg-type]
                       for e, p in zip(examples, pred, strict=True)]
    return {
        "decision_rule": rule or ckpt.decision_rule,
        "avg_macro_f1": average_macro_f1(scores),
        "tasks": {t: vars(s) for t, s in scores.items()},
        "predictions": preds,
    }


def _score_multi_label(ckpt: LoadedCheckpoint, task: str, examples: list[Example],
                       batch_size: int) -> tuple[TaskScores, list[dict[str, Any]]]:
    """A multi-label task's scores (macro/micro-F1 over labels, exact-match accuracy, its own loss) and rows
    ``{"id", "label": [names], "gold": [names]}``: predictions are the logits above 0, whatever the rule."""
    num_labels = len(ckpt.labels[task])
    logits = predict_logits(ckpt, task, examples, batch_size)
    pred = multi_label_predictions(logits)
    gold = [list(e.label) for e in examples if isinstance(e.label, tuple)]
    if len(gold) != len(examples):
        raise ValueError(f"task {task!r} is multi-label, but its examples do not carry label sets")
    targets = torch.tensor([multi_hot(g, num_labels) for g in gold])
    loss = multi_label_loss(ckpt, task, logits, targets)
    names = ckpt.labels[task]
    rows = [{"id": e.id, "label": [names[i] for i in p], "gold": [names[i] for i in g]}
            for e, p, g in zip(examples, pred, gold, strict=True)]
    return multilabel_task_scores(gold, pred, num_labels, loss), rows


def score_labelled(
    ckpt: LoadedCheckpoint, files: Mapping[str, str | Path], batch_size: int = 128, on_bad_row: str | None = None,
    rule: str | None = None,
) -> dict[str, Any]:
    """Macro-F1 of the checkpoint on labelled files ``{task: path}`` (each in its task's training format).

    A multi-label task (``type: multi_label``) is scored with its threshold-0 predictions whatever ``rule``
    says: macro- and micro-F1 over its labels and exact-match accuracy (``docs/multilabel.md``).

    ``on_bad_row``: ``error`` / ``skip`` for rows that cannot be used (default: the run's ``data.on_bad_row``).
    ``rule``: the decision rule (default: the checkpoint's; ``mtl.inference.predict.apply_rule``).
    """
    data_cfg = {**ckpt.data_config, **({"on_bad_row": on_bad_row} if on_bad_row else {})}
    sets = {}
    for task, path in files.items():
        if task not in ckpt.labels:
            raise KeyError(f"the checkpoint has no head for task {task!r}; it has {', '.join(ckpt.tasks)}")
        p = Path(path).expanduser()
        if p.is_dir():
            raise FileNotFoundError(f"--labelled {task}={path}: {p} is a directory, not a file")
        if not p.is_file():
            raise FileNotFoundError(f"--labelled {task}={path}: no such file")
        examples = _read_labelled(task, ckpt.task_config(task), data_cfg, p)
        if not examples:
            raise ValueError(f"--labelled {task}={path}: no labelled rows in {p}")
        sets[task] = examples
    return _score(ckpt, sets, batch_size, rule)


def score_dev(
    ckpt: LoadedCheckpoint, root: str | Path | None = None, batch_size: int = 128, on_bad_row: str | None = None,
    rule: str | None = None,
) -> dict[str, Any]:
    """Re-create each task's dev split exactly as in training (same config and seed) and score on it.

    ``root``: the folder the task files are relative to (beats ``MTL_DATA_DIR`` and the run's ``data.root``).
    ``on_bad_row``: overrides the run's ``data.on_bad_row`` (the split is only the training one if the same
    rows are kept).
    """
    data_cfg = {**ckpt.data_config, **({"on_bad_row": on_bad_row} if on_bad_row else {})}
    seed = int(ckpt.config.get("seed", 0))
    sets = {}
    log.info("dev data root: %s", resolve_data_root(data_cfg, root=root))
    for task in ckpt.tasks:
        td = load_task(task, ckpt.task_config(task), data_cfg, seed=seed, root=root)
        if list(td.labels) != ckpt.labels[task]:
            raise ValueError(f"task {task!r}: the config's labels {td.labels} differ from the checkpoint's")
        sets[task] = td.dev
    return _score(ckpt, sets, batch_size, rule)


def write_scores(result: Mapping[str, Any], out_dir: str | Path) -> Path:
    """A :func:`score_dev` / :func:`score_labelled` result into ``out_dir``: ``<task>_predictions.jsonl``
    (``{"id", "label", "gold"}`` per row) and ``scores.json`` (everything but the predictions)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for task, rows in result["predictions"].items():
        with (out / f"{task}_predictions.jsonl").open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_json(out / "scores.json", {k: v for k, v in result.items() if k != "predictions"})
    return out

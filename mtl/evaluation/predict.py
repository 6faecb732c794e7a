"""Predictions from a trained checkpoint: the Tianchi submission, and scores on any labelled file.

A run's ``checkpoints/`` folder holds everything needed, offline: ``best.pt`` (state dict, label lists,
resolved config), ``tokenizer/`` and ``encoder_config/``. :func:`load_checkpoint` rebuilds the model from
those (``AutoModel.from_config`` + the state dict; no download, no pretrained weights needed).

The Tianchi submission (:func:`write_submission`) is one JSON-lines file per task,
``{"id": "<id>", "label": "<label>"}`` per line in the test file's order (OCNLI ``"0"/"1"/"2"``, OCEMOTION
label names, TNEWS codes such as ``"108"``), named by each task's ``submission_file``
(``ocnli_predict.json``, ``ocemotion_predict.json``, ``tnews_predict.json``) and zipped, at the root of the
archive, into ``result.zip``. The test texts are normalised exactly as the training data were
(:func:`mtl.data.loading.load_test_sets`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mtl.data.loading import (
    DATA_DIR_ENV,
    collate,
    load_task,
    load_test_sets,
    resolve_data_root,
    tokenize_examples,
)
from mtl.data.normalize import tianchi_normalize
from mtl.data.readers import Example, ReadSpec, get_reader
from mtl.evaluation.metrics import TaskScores, average_macro_f1, task_scores
from mtl.models.multitask import ENCODER_INPUTS, MultiTaskModel

if TYPE_CHECKING:
    from mtl.training.trainer import EvalResult, Trainer

log = logging.getLogger(__name__)

__all__ = [
    "LoadedCheckpoint",
    "Submission",
    "best_dev_predictions",
    "find_checkpoint",
    "load_checkpoint",
    "predict",
    "predict_logits",
    "score_dev",
    "score_labelled",
    "validate_submission",
    "write_submission",
]

SUBMISSION_ZIP = "result.zip"


# ---------------------------------------------------------------------------------------------------------
# checkpoints


@dataclass
class LoadedCheckpoint:
    model: MultiTaskModel
    tokenizer: Any
    labels: dict[str, list[str]]
    config: dict[str, Any]
    step: int
    avg_macro_f1: float
    path: Path
    device: torch.device

    @property
    def run_dir(self) -> Path:
        """The run directory (``<run>/checkpoints/best.pt`` -> ``<run>``)."""
        return self.path.parent.parent

    @property
    def tasks(self) -> list[str]:
        return list(self.labels)

    def task_config(self, task: str) -> dict[str, Any]:
        return dict((self.config.get("tasks") or {}).get(task) or {})

    @property
    def data_config(self) -> dict[str, Any]:
        return dict(self.config.get("data") or {})

    @property
    def max_length(self) -> int:
        return int((self.config.get("encoder") or {}).get("max_length") or 128)


def find_checkpoint(path: str | Path) -> Path:
    """A run directory, its ``checkpoints/`` folder or a ``.pt`` file -> the checkpoint file."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    for cand in (path / "checkpoints" / "best.pt", path / "best.pt"):
        if cand.is_file():
            return cand
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected a run directory or a checkpoint .pt file)")
    raise FileNotFoundError(
        f"no checkpoint in {path}: expected {path / 'checkpoints' / 'best.pt'} "
        "(written by mtl-train when trainer.save_best=true)"
    )


def _torch_load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a checkpoint with extra python objects: our own file, load fully
        return torch.load(path, map_location="cpu", weights_only=False)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _build_encoder(ckpt_dir: Path, state: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[Any, Any]:
    """The encoder architecture (random weights, replaced by the state dict) and the tokenizer, offline."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    enc_dir, tok_dir = ckpt_dir / "encoder_config", ckpt_dir / "tokenizer"
    enc_cfg = dict(config.get("encoder") or {})
    if enc_dir.is_dir() and tok_dir.is_dir():
        model_cfg = AutoConfig.from_pretrained(enc_dir)
        has_pooler = any(k.startswith("encoder.pooler.") for k in state)
        kwargs = {} if has_pooler else {"add_pooling_layer": False}
        try:
            encoder = AutoModel.from_config(model_cfg, **kwargs)
        except TypeError:  # an architecture without the pooler switch
            encoder = AutoModel.from_config(model_cfg)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        return encoder, tokenizer
    # older runs without encoder_config/: rebuild from the encoder's name (embedded / tiny_random: offline)
    from mtl.models.encoder import load_encoder

    name = enc_cfg.get("name_or_path")
    if not name:
        raise FileNotFoundError(f"{enc_dir} is missing and the checkpoint's config names no encoder")
    log.info("%s missing: rebuilding the encoder from its name %r", enc_dir, name)
    encoder, tokenizer = load_encoder(str(name), **dict(enc_cfg.get("kwargs") or {}))
    if tok_dir.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    return encoder, tokenizer


def load_checkpoint(path: str | Path, device: str = "auto") -> LoadedCheckpoint:
    """Rebuild the trained multi-task model of a run (see the module docstring)."""
    ckpt_path = find_checkpoint(path)
    state = _torch_load(ckpt_path)
    for key in ("model", "labels", "config"):
        if key not in state:
            raise ValueError(f"{ckpt_path} has no {key!r} entry: not an mtl checkpoint")
    sd: dict[str, torch.Tensor] = state["model"]
    config: dict[str, Any] = state["config"]
    labels = {t: [str(x) for x in v] for t, v in state["labels"].items()}
    encoder, tokenizer = _build_encoder(ckpt_path.parent, sd, config)
    enc_cfg = config.get("encoder") or {}
    model_cfg = config.get("model") or {}
    model = MultiTaskModel(
        encoder,
        {t: len(v) for t, v in labels.items()},
        pooling=enc_cfg.get("pooling", "cls"),
        head=model_cfg.get("head", "linear"),
        dropout=float(model_cfg.get("dropout", 0.0)),
    )
    from mtl.models.vocab_trim import restore_trimmed_embeddings

    restore_trimmed_embeddings(model, sd)  # a run with encoder.trim_vocab=true saved a smaller embedding
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"{ckpt_path}: the rebuilt model does not match the checkpoint "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    dev = _resolve_device(device)
    model.to(dev).eval()
    log.info("loaded %s (step %s, dev avg macro-F1 %.4f)", ckpt_path, state.get("step"),
             float(state.get("avg_macro_f1", float("nan"))))
    return LoadedCheckpoint(
        model=model,
        tokenizer=tokenizer,
        labels=labels,
        config=config,
        step=int(state.get("step", -1)),
        avg_macro_f1=float(state.get("avg_macro_f1", float("nan"))),
        path=ckpt_path,
        device=dev,
    )


def best_dev_predictions(trainer: Trainer, checkpoint: str | Path | None = None) -> EvalResult:
    """Dev predictions of the best checkpoint: load its weights into ``trainer.model`` and evaluate.

    Without a checkpoint file (``trainer.save_best=false``) the model's current (last) weights are used.
    """
    if checkpoint is not None and Path(checkpoint).is_file():
        state = _torch_load(Path(checkpoint))
        trainer.model.load_state_dict(state["model"])
    return trainer.evaluate(keep_predictions=True)


# ---------------------------------------------------------------------------------------------------------
# prediction


@torch.no_grad()
def predict_logits(
    ckpt: LoadedCheckpoint, task: str, examples: Sequence[Example], batch_size: int = 128
) -> torch.Tensor:
    """``(len(examples), num_labels)`` float logits on CPU, rows in the examples' order (batched by length)."""
    if task not in ckpt.labels:
        raise KeyError(f"the checkpoint has no head for task {task!r}; it has {', '.join(ckpt.tasks)}")
    out = torch.zeros(len(examples), len(ckpt.labels[task]))
    if not examples:
        return out
    ds = tokenize_examples(examples, ckpt.tokenizer, ckpt.max_length)
    lengths = ds["length"]
    order = sorted(range(len(ds)), key=lambda i: lengths[i])
    coll = collate(ckpt.tokenizer)
    model = ckpt.model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = coll([ds[i] for i in idx])
        inputs = {k: v.to(ckpt.device) for k, v in batch.items() if k in ENCODER_INPUTS}
        out[torch.tensor(idx)] = model(task, inputs).float().cpu()
    return out


def predict(ckpt: LoadedCheckpoint, task: str, examples: Sequence[Example], batch_size: int = 128) -> list[int]:
    """Predicted label indices (into ``ckpt.labels[task]``) for ``examples``, in their order."""
    return [int(i) for i in predict_logits(ckpt, task, examples, batch_size).argmax(-1).tolist()]


@contextlib.contextmanager
def data_root(root: str | Path | None) -> Iterator[None]:
    """Read data from ``root`` (beats ``MTL_DATA_DIR`` and the checkpoint's ``data.root``) inside the block."""
    if root is None:
        yield
        return
    old = os.environ.get(DATA_DIR_ENV)
    os.environ[DATA_DIR_ENV] = str(Path(root).expanduser().resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(DATA_DIR_ENV, None)
        else:
            os.environ[DATA_DIR_ENV] = old


@dataclass
class Submission:
    split: str
    out_dir: Path
    zip_path: Path
    files: dict[str, Path] = field(default_factory=dict)  # task -> json file
    ids: dict[str, list[str]] = field(default_factory=dict)
    predictions: dict[str, list[str]] = field(default_factory=dict)
    missing_tasks: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"test {self.split} submission: {self.zip_path}"]
        for task, path in self.files.items():
            counts = Counter(self.predictions[task])
            dist = ", ".join(f"{lab}:{n}" for lab, n in counts.most_common())
            lines.append(f"  {path.name}: {len(self.ids[task])} rows; predicted labels {dist}")
        if self.missing_tasks:
            lines.append(f"  WARNING: no predictions for {', '.join(self.missing_tasks)} (not in the checkpoint)")
        return "\n".join(lines)


EXPECTED_TASKS = ("ocnli", "ocemotion", "tnews")


def write_submission(
    ckpt: LoadedCheckpoint,
    split: str,
    out_dir: str | Path,
    root: str | Path | None = None,
    batch_size: int = 128,
) -> Submission:
    """Predict test ``split`` (``a``/``b``) of every task in the checkpoint; write the files and ``result.zip``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sub = Submission(split=split, out_dir=out_dir, zip_path=out_dir / SUBMISSION_ZIP)
    with data_root(root):
        for task in ckpt.tasks:
            task_cfg = ckpt.task_config(task)
            test_files = task_cfg.get("test_files") or {}
            if split not in test_files:
                raise ValueError(
                    f"task {task!r} has no test file for split {split!r} in its config "
                    f"(test_files: {dict(test_files) or 'none'})"
                )
            task_cfg["test_files"] = {split: test_files[split]}
            # every test row must get a prediction: a bad row stops here even if training skipped bad rows
            # (the reader already refuses duplicate ids, naming file and line)
            examples = load_test_sets(task, task_cfg, {**ckpt.data_config, "on_bad_row": "error"})[split]
            ids = [e.id for e in examples]
            pred = predict(ckpt, task, examples, batch_size)
            labels = [ckpt.labels[task][p] for p in pred]
            path = out_dir / str(task_cfg.get("submission_file") or f"{task}_predict.json")
            with path.open("w", encoding="utf-8", newline="\n") as fh:
                for i, lab in zip(ids, labels, strict=True):
                    fh.write(json.dumps({"id": str(i), "label": str(lab)}, ensure_ascii=False) + "\n")
            sub.files[task], sub.ids[task], sub.predictions[task] = path, ids, labels
            log.info("%s: %d test-%s rows -> %s", task, len(ids), split, path)
    sub.missing_tasks = [t for t in EXPECTED_TASKS if t not in ckpt.tasks]
    with zipfile.ZipFile(sub.zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sub.files.values():
            zf.write(path, arcname=path.name)
    problems = validate_submission(
        sub.zip_path,
        {p.name: sub.ids[t] for t, p in sub.files.items()},
        {p.name: ckpt.labels[t] for t, p in sub.files.items()},
    )
    if problems:
        raise RuntimeError("the written submission is invalid:\n  " + "\n  ".join(problems))
    return sub


def validate_submission(
    zip_path: str | Path, expected_ids: Mapping[str, Sequence[str]], label_sets: Mapping[str, Sequence[str]]
) -> list[str]:
    """Problems with a submission zip (empty list: valid): files at the root, exactly the expected ones,
    valid JSON lines with exactly ``id`` and ``label`` (strings), every id once and in the test file's order,
    labels from the task's label set."""
    problems: list[str] = []
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        if sorted(names) != sorted(expected_ids):
            problems.append(f"zip holds {sorted(names)}, expected {sorted(expected_ids)} at its root")
        for name in names:
            if name not in expected_ids:
                continue
            allowed = {str(x) for x in label_sets[name]}
            ids: list[str] = []
            for n, raw in enumerate(zf.read(name).decode("utf-8").splitlines(), start=1):
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as exc:
                    problems.append(f"{name}:{n}: not JSON ({exc.msg})")
                    continue
                if not isinstance(row, dict) or set(row) != {"id", "label"}:
                    problems.append(f"{name}:{n}: expected an object with keys id and label, got {raw[:80]}")
                    continue
                if not isinstance(row["id"], str) or not isinstance(row["label"], str):
                    problems.append(f"{name}:{n}: id and label must be strings: {raw[:80]}")
                if str(row["label"]) not in allowed:
                    problems.append(f"{name}:{n}: label {row['label']!r} not in {sorted(allowed)}")
                ids.append(str(row["id"]))
            want = [str(i) for i in expected_ids[name]]
            if ids != want:
                missing = set(want) - set(ids)
                extra = set(ids) - set(want)
                problems.append(
                    f"{name}: ids differ from the test file's ({len(ids)} rows vs {len(want)}; "
                    f"{len(missing)} missing, {len(extra)} unexpected"
                    + ("; same ids, other order" if not missing and not extra else "") + ")"
                )
    return problems


# ---------------------------------------------------------------------------------------------------------
# labelled data


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
    )
    examples, report = get_reader(reader_name)(spec)
    if report.unlabelled:
        log.info("%s: %d unlabelled rows in %s skipped", task, report.unlabelled, path)
    if data_cfg.get("normalize", True):
        examples = [replace(e, texts=tuple(tianchi_normalize(t) for t in e.texts)) for e in examples]
    return [e for e in examples if e.label is not None]


def _score(ckpt: LoadedCheckpoint, sets: Mapping[str, list[Example]], batch_size: int) -> dict[str, Any]:
    scores: dict[str, TaskScores] = {}
    preds: dict[str, list[dict[str, str]]] = {}
    for task, examples in sets.items():
        if not examples:
            raise ValueError(f"task {task!r}: no labelled examples to score")
        logits = predict_logits(ckpt, task, examples, batch_size)
        pred = [int(i) for i in logits.argmax(-1).tolist()]
        gold = [int(e.label) for e in examples if e.label is not None]
        loss = float(torch.nn.functional.cross_entropy(logits, torch.tensor(gold)))
        scores[task] = task_scores(gold, pred, len(ckpt.labels[task]), loss)
        names = ckpt.labels[task]
        preds[task] = [{"id": e.id, "label": names[p], "gold": names[int(e.label)]}  # type: ignore[arg-type]
                       for e, p in zip(examples, pred, strict=True)]
    return {
        "avg_macro_f1": average_macro_f1(scores),
        "tasks": {t: vars(s) for t, s in scores.items()},
        "predictions": preds,
    }


def score_labelled(
    ckpt: LoadedCheckpoint, files: Mapping[str, str | Path], batch_size: int = 128
) -> dict[str, Any]:
    """Macro-F1 of the checkpoint on labelled files ``{task: path}`` (each in its task's training format)."""
    sets = {}
    for task, path in files.items():
        if task not in ckpt.labels:
            raise KeyError(f"the checkpoint has no head for task {task!r}; it has {', '.join(ckpt.tasks)}")
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"--labelled {task}={path}: no such file")
        sets[task] = _read_labelled(task, ckpt.task_config(task), ckpt.data_config, p)
    return _score(ckpt, sets, batch_size)


def score_dev(ckpt: LoadedCheckpoint, root: str | Path | None = None, batch_size: int = 128) -> dict[str, Any]:
    """Re-create each task's dev split exactly as in training (same config and seed) and score on it."""
    seed = int(ckpt.config.get("seed", 0))
    sets = {}
    with data_root(root):
        log.info("dev data root: %s", resolve_data_root(ckpt.data_config))
        for task in ckpt.tasks:
            td = load_task(task, ckpt.task_config(task), ckpt.data_config, seed=seed)
            if list(td.labels) != ckpt.labels[task]:
                raise ValueError(f"task {task!r}: the config's labels {td.labels} differ from the checkpoint's")
            sets[task] = td.dev
    return _score(ckpt, sets, batch_size)

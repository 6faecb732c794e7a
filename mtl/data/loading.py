"""From a task config to tokenised, cached ``datasets.Dataset`` objects.

``load_task`` reads a task's train (and dev) source, splits, subsamples and normalises it and returns a
:class:`TaskData` with an account of every row (:class:`TaskReport`, written to the log and metrics.json).
``tokenize_examples`` tokenises without padding and caches the result as an arrow file whose name is a
hash of everything that changes the output, so the next run with the same tokenizer and settings reuses it.
``collate`` pads a batch dynamically.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtl.data.normalize import tianchi_normalize
from mtl.data.readers import Example, ReadReport, ReadSpec, get_reader, read_unlabelled_tsv
from mtl.data.splits import (
    check_disjoint,
    files,
    id_at_least,
    random_fraction,
    stratified_fraction,
    stratified_subsample,
)

if TYPE_CHECKING:
    import datasets
    import torch

__all__ = [
    "DEFAULT_TASK_TYPE",
    "TASK_TYPES",
    "TaskData",
    "TaskReport",
    "collate",
    "examples_fingerprint",
    "is_multi_label",
    "label_separator",
    "load_task",
    "load_test_sets",
    "multi_hot",
    "resolve_data_root",
    "task_type",
    "tokenize_examples",
]

log = logging.getLogger(__name__)

DATA_DIR_ENV = "MTL_DATA_DIR"
_CACHE_FORMAT_VERSION = "1"

#: a task config's ``type``: one label per row (the Tianchi tasks), or zero or more labels per row
TASK_TYPES = ("single_label", "multi_label")
#: the ``type`` of a task config that does not set one
DEFAULT_TASK_TYPE = "single_label"
#: what joins the label values of a multi-label row when ``label_separator`` is not set
DEFAULT_LABEL_SEPARATOR = ","


# ---------------------------------------------------------------------------------------------------------
# settings


@dataclass
class DataSettings:
    """The ``data`` config group (its defaults: ``mtl.config`` registers this class as ``data/default``)."""

    root: str = "data"  # folder task paths are relative to; env MTL_DATA_DIR overrides
    normalize: bool = True  # Tianchi normalisation (NFKD, no combining marks, lower-case, collapsed spaces)
    on_bad_row: str = "error"  # error | skip (skipped rows are counted in the log and metrics.json)
    dev_fraction: float = 0.1  # for stratified_fraction splits
    max_train_per_task: int | None = None  # cap per task for quick runs (seeded, label-stratified); None = all
    max_dev_per_task: int | None = None
    # the seed of the data sample (seeded splits, train/dev caps); None = the run's seed. A fixed value keeps
    # the same train and dev rows under every training seed, so the seed spread is the training's alone
    seed: int | None = None
    cache_dir: str = "${oc.env:MTL_CACHE_DIR,${oc.env:HOME}/.cache/mtl}/tokenized"  # tokenised-data cache
    batch_size: int = 32
    eval_batch_size: int = 128
    num_workers: int = 0
    group_by_length: bool = False  # batches of similar length (less padding); still shuffled
    # token budget (fairseq's --max-tokens): batches of at most this many padded positions (rows x longest row),
    # at most batch_size rows, length-grouped; each task's loss stays the mean over its batch's rows
    max_tokens: int | None = None
    # shape bucketing (docs/scale.md): pad each batch up to a few lengths only, so kernels specialised per
    # shape (oneDNN bf16 on CPU, torch.compile / CUDA graphs on GPU) are reused. Ladder first, then multiple.
    length_buckets: list[int] | None = None  # pad to the smallest of these lengths that fits, e.g. [16, 32, 64]
    pad_to_multiple_of: int | None = None  # else pad up to a multiple of N (e.g. 8 or 16); None: the longest row


def data_settings(cfg: Any) -> dict[str, Any]:
    """``cfg`` (a ``data`` node, a saved run's dict or a partial mapping) over :class:`DataSettings`' defaults."""
    return {**{f.name: f.default for f in fields(DataSettings)}, **_plain(cfg)}


# ---------------------------------------------------------------------------------------------------------
# config helpers


def _plain(cfg: Any) -> dict[str, Any]:
    """DictConfig / Mapping / None -> a plain dict with interpolations resolved."""
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"expected a mapping or DictConfig, got {type(cfg).__name__}")


def _root_description(data_cfg: Any, root: str | Path | None = None) -> str:
    cfg = _plain(data_cfg)
    if root is not None:
        return f"data root {str(root)!r} (given explicitly) -> {resolve_data_root(cfg, root)}"
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return f"{DATA_DIR_ENV}={env!r} -> {resolve_data_root(cfg)}"
    return f"data.root={cfg.get('root') or DataSettings.root!r} ({DATA_DIR_ENV} unset) -> {resolve_data_root(cfg)}"


def resolve_data_root(data_cfg: Any, root: str | Path | None = None) -> Path:
    """The folder task file paths are relative to: ``root`` if given (e.g. ``mtl-predict --data-root``), else
    env ``MTL_DATA_DIR`` if set, else ``data.root`` (``data``).

    A relative root is taken from the directory the run was started in (Hydra's original cwd when Hydra
    is running, which equals the cwd with ``hydra.job.chdir=False``).
    """
    if root is None:
        env = os.environ.get(DATA_DIR_ENV)
        root = env if env else (_plain(data_cfg).get("root") or DataSettings.root)
    root = Path(root).expanduser()
    if not root.is_absolute():
        base = Path.cwd()
        try:
            from hydra.core.hydra_config import HydraConfig
            from hydra.utils import get_original_cwd

            if HydraConfig.initialized():
                base = Path(get_original_cwd())
        except (ImportError, ValueError):
            pass
        root = base / root
    return root.resolve()


# ---------------------------------------------------------------------------------------------------------
# task types


def task_type(task_cfg: Any, name: str = "") -> str:
    """A task config's ``type`` (:data:`TASK_TYPES`; :data:`DEFAULT_TASK_TYPE` when unset); anything else is a
    ValueError naming the task."""
    task = task_cfg if isinstance(task_cfg, Mapping) else _plain(task_cfg)
    value = task.get("type")
    value = DEFAULT_TASK_TYPE if value is None else str(value)
    if value not in TASK_TYPES:
        raise ValueError(f"task {name or '?'!r}: type {value!r} is not one of {', '.join(TASK_TYPES)}")
    return value


def is_multi_label(task_cfg: Any, name: str = "") -> bool:
    """Whether the task config declares ``type: multi_label``."""
    return task_type(task_cfg, name) == "multi_label"


def label_separator(task_cfg: Any) -> str:
    """What joins a multi-label row's label values (``label_separator``, default ``,``)."""
    task = task_cfg if isinstance(task_cfg, Mapping) else _plain(task_cfg)
    sep = task.get("label_separator")
    return DEFAULT_LABEL_SEPARATOR if sep is None else str(sep)


def multi_hot(label: Sequence[int], num_labels: int) -> list[float]:
    """A multi-label example's label indices as a ``num_labels`` float 0/1 vector."""
    row = [0.0] * int(num_labels)
    for i in label:
        row[int(i)] = 1.0
    return row


# ---------------------------------------------------------------------------------------------------------
# task loading


@dataclass
class TaskReport:
    """Counts for one task: what was read, skipped (by reason), unlabelled, and the final split sizes."""

    task: str
    split_method: str
    reads: list[ReadReport] = field(default_factory=list)
    train_before_cap: int = 0
    dev_before_cap: int = 0
    train: int = 0
    dev: int = 0

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.reads)

    @property
    def unlabelled(self) -> int:
        return sum(r.unlabelled for r in self.reads)

    @property
    def skipped(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for r in self.reads:
            total.update(r.skipped)
        return dict(total)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split_method,
            "read": self.rows,
            "skipped": self.skipped,
            "unlabelled": self.unlabelled,
            "train_before_cap": self.train_before_cap,
            "dev_before_cap": self.dev_before_cap,
            "train": self.train,
            "dev": self.dev,
            "sources": [r.to_dict() for r in self.reads],
        }

    def summary(self) -> str:
        text = (
            f"{self.task}: {self.rows} rows read -> train {self.train}, dev {self.dev} ({self.split_method})"
        )
        if self.train != self.train_before_cap or self.dev != self.dev_before_cap:
            text += f", capped from {self.train_before_cap}/{self.dev_before_cap}"
        if self.unlabelled:
            text += f", {self.unlabelled} unlabelled skipped"
        if self.skipped:
            text += ", bad rows skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items()))
        return text


@dataclass
class TaskData:
    """A task ready for tokenisation. ``labels`` is the ordered label list (``Example.label`` indexes it; in a
    ``multi_label`` task each example's label is a tuple of such indices)."""

    name: str
    labels: list[str]
    label_names: list[str]
    train: list[Example]
    dev: list[Example]
    report: TaskReport
    multi_label: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def _spec(
    task: Mapping[str, Any],
    name: str,
    path: Path | None,
    data: Mapping[str, Any],
    root_hint: str,
    options: Mapping[str, Any] | None = None,
) -> ReadSpec:
    labels = [str(x) for x in task["labels"]]
    unlabelled = task.get("unlabelled_values", ["-"])
    multi = is_multi_label(task, name)
    return ReadSpec(
        source=str(path) if path is not None else f"{name}:{(options or {}).get('split')}",
        path=path,
        columns=tuple(task.get("columns") or ()),
        text_columns=tuple(task["text_columns"]),
        labels=tuple(labels),
        label_column=task.get("label_column", "label"),
        id_column=task.get("id_column", "id"),
        label_map={str(k): str(v) for k, v in (task.get("label_map") or {}).items()},
        unlabelled_values=tuple(str(v) for v in (unlabelled or ())),
        on_bad_row=data["on_bad_row"],
        root_hint=root_hint,
        options=dict(options or {}),
        multi_label=multi,
        label_separator=label_separator(task) if multi else DEFAULT_LABEL_SEPARATOR,
    )


def _read_source(
    task: Mapping[str, Any], name: str, which: str, data: Mapping[str, Any], root: Path, root_hint: str
) -> tuple[list[Example], ReadReport]:
    """Read the ``train`` or ``dev`` source of a task with its configured reader."""
    reader_name = task.get("reader", "tianchi_tsv")
    reader = get_reader(reader_name)
    if reader_name == "hf_dataset":
        hf = dict(task.get("hf") or {})
        split = hf.pop(f"{which}_split", which if which == "train" else "validation")
        hf.pop("train_split", None)
        hf.pop("dev_split", None)
        return reader(_spec(task, name, None, data, root_hint, {**hf, "split": split}))
    key = f"{which}_file"
    if not task.get(key):
        raise ValueError(f"task {name!r}: `{key}` is not set (needed by reader {reader_name!r})")
    return reader(_spec(task, name, root / str(task[key]), data, root_hint))


def _require_examples(task: str, examples: Sequence[Example], report: ReadReport, what: str = "task") -> None:
    """A source that yields no usable example is an error naming the task and the file, and why."""
    if examples:
        return
    if report.rows == 0:
        why = "the file is empty"
    else:
        parts = []
        if report.unlabelled:
            parts.append(f"{report.unlabelled} unlabelled")
        if report.skipped:
            parts.append("skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(report.skipped.items())))
        why = f"all {report.rows} rows were left out ({'; '.join(parts) or 'none kept'})"
    raise ValueError(f"{what} {task!r}: no usable examples in {report.source}: {why}")


def _label_indices(examples: Sequence[Example]) -> set[int]:
    """Every label index the examples carry (a multi-label row: each of its labels)."""
    out: set[int] = set()
    for e in examples:
        if isinstance(e.label, tuple):
            out.update(e.label)
        elif e.label is not None:
            out.add(e.label)
    return out


def _warn_dev_only_labels(
    task: str, label_names: Sequence[str], train: Sequence[Example], dev: Sequence[Example]
) -> list[str]:
    """Warn about labels that occur in dev but never in train (the model cannot learn them); returns them."""
    in_train = _label_indices(train)
    only_dev = sorted(_label_indices(dev) - in_train)
    names = [label_names[i] for i in only_dev]
    if names:
        log.warning(
            "task %r: label(s) %s occur in dev but never in train: the model cannot learn them "
            "(check the split, data.max_train_per_task or the label list)",
            task,
            ", ".join(repr(n) for n in names),
        )
    return names


def _normalise(examples: Sequence[Example]) -> list[Example]:
    return [replace(e, texts=tuple(tianchi_normalize(t) for t in e.texts)) for e in examples]


def load_task(
    name: str, task_cfg: Any, data_cfg: Any, seed: int = 0, root: str | Path | None = None
) -> TaskData:
    """Read, split, cap (``data.max_train_per_task`` / ``max_dev_per_task``) and normalise one task.

    ``seed`` (the run's) draws the seeded splits and caps unless ``data.seed`` fixes the data sample.

    ``root``: the folder the task's files are relative to (default: :func:`resolve_data_root`'s choice).

    Raises ``FileNotFoundError`` (naming the path and the data root it came from) for a missing file and
    :class:`~mtl.data.readers.BadRowError` for a bad row under ``data.on_bad_row=error``.
    """
    task = _plain(task_cfg)
    data = data_settings(data_cfg)
    if data["seed"] is not None:
        seed = int(data["seed"])
    multi = is_multi_label(task, name)
    for key in ("labels", "text_columns"):
        if not task.get(key):
            raise ValueError(f"task {name!r}: `{key}` is missing from its config")
    labels = [str(x) for x in task["labels"]]
    if len(set(labels)) != len(labels):
        raise ValueError(f"task {name!r}: duplicate entries in labels {labels}")
    label_names = [str(x) for x in (task.get("label_names") or labels)]
    if len(label_names) != len(labels):
        raise ValueError(f"task {name!r}: {len(label_names)} label_names for {len(labels)} labels")
    root_hint = _root_description(data, root)
    root = resolve_data_root(data, root)

    default_method = "random_fraction" if multi else "stratified_fraction"
    split_cfg = dict(task.get("split") or {"method": default_method})
    method = split_cfg.get("method", default_method)
    if multi and method == "stratified_fraction":
        raise ValueError(
            f"task {name!r} is multi-label (type: multi_label): split stratified_fraction stratifies by one label "
            f"per row; use split: {{method: random_fraction}} (a seeded random fraction, data.dev_fraction unless "
            f"`fraction:` is set), id_at_least or files"
        )
    examples, report = _read_source(task, name, "train", data, root, root_hint)
    _require_examples(name, examples, report)
    task_report = TaskReport(task=name, split_method=method, reads=[report])
    if method == "id_at_least":
        if "threshold" not in split_cfg:
            raise ValueError(f"task {name!r}: split id_at_least needs `threshold`")
        train, dev = id_at_least(examples, int(split_cfg["threshold"]))
    elif method == "stratified_fraction":
        fraction = float(split_cfg.get("fraction", data["dev_fraction"]))
        train, dev = stratified_fraction(examples, fraction, seed, source=f"task {name!r} ({report.source})")
    elif method == "random_fraction":
        fraction = float(split_cfg.get("fraction", data["dev_fraction"]))
        train, dev = random_fraction(examples, fraction, seed, source=f"task {name!r} ({report.source})")
    elif method == "files":
        dev_examples, dev_report = _read_source(task, name, "dev", data, root, root_hint)
        _require_examples(name, dev_examples, dev_report)
        task_report.reads.append(dev_report)
        train, dev = files(examples, dev_examples)
    else:
        raise ValueError(
            f"task {name!r}: unknown split method {method!r}; use id_at_least, stratified_fraction, random_fraction "
            "or files"
        )
    if not train or not dev:
        raise ValueError(
            f"task {name!r}: split {method!r} gave {len(train)} train and {len(dev)} dev examples"
        )

    task_report.train_before_cap, task_report.dev_before_cap = len(train), len(dev)
    train = stratified_subsample(train, data["max_train_per_task"], seed)
    dev = stratified_subsample(dev, data["max_dev_per_task"], seed + 1)
    if data["normalize"]:
        train, dev = _normalise(train), _normalise(dev)
    check_disjoint(train, dev, name)
    _warn_dev_only_labels(name, label_names, train, dev)
    task_report.train, task_report.dev = len(train), len(dev)
    log.info("%s", task_report.summary())
    return TaskData(
        name=name, labels=labels, label_names=label_names, train=train, dev=dev, report=task_report, multi_label=multi
    )


def load_test_sets(
    name: str, task_cfg: Any, data_cfg: Any, root: str | Path | None = None
) -> dict[str, list[Example]]:
    """Read the unlabelled test files (``test_files: {a: ..., b: ...}``), normalised like the train data.

    ``root``: the folder the test files are relative to (default: :func:`resolve_data_root`'s choice).
    """
    task = _plain(task_cfg)
    data = data_settings(data_cfg)
    test_files = task.get("test_files") or {}
    id_column = task.get("test_id_column", "id")
    columns = task.get("test_columns") or [id_column, *task["text_columns"]]
    root_hint = _root_description(data, root)
    root = resolve_data_root(data, root)
    out: dict[str, list[Example]] = {}
    for split, rel in test_files.items():
        examples, report = read_unlabelled_tsv(
            root / str(rel),
            columns=columns,
            text_columns=task["text_columns"],
            id_column=id_column,
            on_bad_row=data["on_bad_row"],
            root_hint=root_hint,
        )
        _require_examples(name, examples, report, what=f"test {split} of task")
        out[str(split)] = _normalise(examples) if data["normalize"] else examples
    return out


# ---------------------------------------------------------------------------------------------------------
# tokenisation


def examples_fingerprint(examples: Sequence[Example]) -> str:
    """A content hash of ids, texts and labels (order-sensitive): changes whenever the data does."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.id, list(e.texts), e.label], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _tokenizer_fingerprint(tokenizer: Any) -> list[Any]:
    parts: list[Any] = [
        type(tokenizer).__name__,
        str(getattr(tokenizer, "name_or_path", "")),
        len(tokenizer),
        getattr(tokenizer, "truncation_side", "right"),
    ]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The full pipeline (normaliser, pre-tokeniser, vocab): two tokenizers with one name differ here.
        # Truncation/padding state is left out: transformers sets it on the backend at every call.
        with contextlib.suppress(Exception):
            parts.append(_pipeline_hash(_serialise_without_call_state(backend)))
    return parts


def _serialise_without_call_state(backend: Any) -> str:
    """``backend.to_str()`` with truncation and padding cleared for the moment (then put back), so the
    same tokenizer serialises to the same string whatever call it last served."""
    truncation, padding = backend.truncation, backend.padding
    backend.no_truncation()
    backend.no_padding()
    try:
        return backend.to_str()
    finally:
        if truncation is not None:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**padding)


@functools.lru_cache(maxsize=4)
def _pipeline_hash(serialised: str) -> str:
    """The hash of a backend tokenizer's JSON without its per-call truncation/padding state.

    Memoised on the serialised string: parsing and re-dumping e5's 7.6 MB tokenizer takes about 0.9 s,
    and a run fingerprints the same tokenizer for every task's train, dev and test sets.
    """
    state = json.loads(serialised)
    state.pop("truncation", None)
    state.pop("padding", None)
    blob = json.dumps(state, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _multi_label_width(examples: Sequence[Example], num_labels: int | None) -> int | None:
    """The multi-hot width when ``examples`` are multi-label (tuple labels), ``None`` when single-label."""
    kinds = {type(e.label) for e in examples if e.label is not None}
    if tuple not in kinds:
        return None
    if len(kinds) > 1:
        raise ValueError("examples mix multi-label (tuple) and single-label (index) labels")
    if num_labels is None or int(num_labels) < 1:
        raise ValueError("multi-label examples need num_labels (the width of their multi-hot labels)")
    return int(num_labels)


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    max_length: int,
    cache_dir: str | os.PathLike[str] | None = None,
    fingerprint_parts: Sequence[Any] = (),
    num_labels: int | None = None,
) -> datasets.Dataset:
    """Tokenise (pairs as pairs, truncated to ``max_length``, unpadded) into an arrow-backed Dataset.

    Columns: ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` when the tokenizer returns them),
    ``labels`` (-1 for unlabelled) and ``length``; row ``i`` is ``examples[i]``. Multi-label examples (tuple
    labels) get float multi-hot ``labels`` of width ``num_labels`` (required for them; ignored otherwise;
    an unlabelled row among them: all -1). With ``cache_dir`` the
    result is written to ``<cache_dir>/tok-<hash>.arrow``, the hash covering the tokenizer (name, vocab size,
    pipeline), ``max_length``, ``fingerprint_parts`` (pass e.g. the normalisation flag) and the examples'
    content, and a later call with the same inputs loads that file instead of tokenising again.
    """
    import datasets

    n_texts = {len(e.texts) for e in examples}
    if len(n_texts) > 1:
        raise ValueError(f"examples mix {sorted(n_texts)} texts per row; a task has one or two")
    pair = n_texts == {2}
    if n_texts and not n_texts <= {1, 2}:
        raise ValueError(
            f"examples have {n_texts.pop()} texts per row; only 1 (single) or 2 (pair) are supported"
        )

    width = _multi_label_width(examples, num_labels)
    cache_file: Path | None = None
    if cache_dir is not None:
        parts: list[Any] = [
            _CACHE_FORMAT_VERSION,
            _tokenizer_fingerprint(tokenizer),
            int(max_length),
            [str(p) for p in fingerprint_parts],
            examples_fingerprint(examples),
        ]
        if width is not None:  # single-label keys stay as they were (their cached files stay valid)
            parts.append(f"multi_hot={width}")
        key = json.dumps(parts, ensure_ascii=False)
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
        cache_file = Path(cache_dir).expanduser() / f"tok-{digest}.arrow"
        if cache_file.is_file():
            try:
                ds = datasets.Dataset.from_file(str(cache_file))
                if len(ds) == len(examples):
                    log.info("reusing cached tokenisation %s (%d rows)", cache_file, len(ds))
                    return ds
                log.warning(
                    "cached tokenisation %s has %d rows, expected %d; rebuilding",
                    cache_file,
                    len(ds),
                    len(examples),
                )
            except Exception as exc:  # a truncated file from a killed run: rebuild it
                log.warning("cannot read cached tokenisation %s (%s); rebuilding", cache_file, exc)
            cache_file.unlink(missing_ok=True)
        cache_file.parent.mkdir(parents=True, exist_ok=True)

    log.info("tokenising %d examples%s", len(examples), f" -> {cache_file}" if cache_file else "")
    if width is None:
        label_column: list[Any] = [-1 if e.label is None else int(e.label) for e in examples]  # type: ignore[arg-type]
        label_feature: Any = datasets.Value("int64")
    else:
        label_column = [[-1.0] * width if e.label is None else multi_hot(e.label, width) for e in examples]  # type: ignore[arg-type]
        label_feature = datasets.Sequence(datasets.Value("float32"), length=width)
    columns: dict[str, list[Any]] = {
        "text_a": [e.texts[0] for e in examples],
        "labels": label_column,
    }
    if pair:
        columns["text_b"] = [e.texts[1] for e in examples]
    raw = datasets.Dataset.from_dict(
        columns,
        features=datasets.Features(
            {
                "text_a": datasets.Value("string"),
                "labels": label_feature,
                **({"text_b": datasets.Value("string")} if pair else {}),
            }
        ),
    )

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        enc = tokenizer(
            batch["text_a"],
            batch["text_b"] if pair else None,
            truncation=True,
            max_length=max_length,
            padding=False,
        )
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        out["length"] = [len(ids) for ids in enc["input_ids"]]
        return out

    return raw.map(
        encode,
        batched=True,
        batch_size=1000,
        remove_columns=["text_a", "text_b"] if pair else ["text_a"],
        cache_file_name=str(cache_file) if cache_file else None,
        load_from_cache_file=False,
        desc="tokenising",
    )


def collate_for(data_cfg: Any, tokenizer: Any) -> Callable[[list[Mapping[str, Any]]], dict[str, torch.Tensor]]:
    """The collate function of a run: ``data.length_buckets`` / ``data.pad_to_multiple_of`` applied."""
    data = data_settings(data_cfg)
    return collate(tokenizer, buckets=data["length_buckets"], pad_to_multiple_of=data["pad_to_multiple_of"])


def tokenize_split(
    examples: Sequence[Example], tokenizer: Any, max_length: int, data_cfg: Any, num_labels: int | None = None
) -> datasets.Dataset:
    """How a run tokenises a split: cached under ``data.cache_dir``, keyed also by the data settings that
    change the texts (``data.normalize``). Training, vocabulary trimming and the benchmarks all call this.
    ``num_labels``: the multi-hot width of a multi-label task's labels (ignored for single-label ones)."""
    return tokenize_examples(
        examples, tokenizer, int(max_length), data_cfg.cache_dir, [f"normalize={data_cfg.normalize}"],
        num_labels=num_labels,
    )


def padded_length(longest: int, buckets: Sequence[int] | None = None, multiple: int | None = None) -> int:
    """The length a batch whose longest row has ``longest`` tokens is padded to.

    ``buckets``: the smallest bucket that holds ``longest`` (beyond the largest: ``longest`` itself, or its
    multiple); else ``multiple``: ``longest`` rounded up to a multiple of it; else ``longest``.
    """
    for b in sorted(int(x) for x in buckets or ()):
        if b >= longest:
            return b
    if multiple:
        m = int(multiple)
        return -(-longest // m) * m
    return longest


def collate(
    tokenizer: Any,
    keys: Sequence[str] = ("input_ids", "attention_mask", "token_type_ids", "labels"),
    buckets: Sequence[int] | None = None,
    pad_to_multiple_of: int | None = None,
) -> Callable[[list[Mapping[str, Any]]], dict[str, torch.Tensor]]:
    """A collate function that pads rows to one length and returns ``torch.long`` tensors.

    The length is the longest row's, raised by :func:`padded_length` to a bucket or a multiple when given
    (shape bucketing). Only ``keys`` present in the rows are returned (``length`` is left out: it is for
    batching, not for the model). Pads with the tokenizer's pad id on its ``padding_side``; masks and token
    types pad with 0. Multi-hot ``labels`` (a multi-label task: a list per row) are stacked as a float32
    ``[B, C]`` tensor; class indices as ``torch.long`` ``[B]``.
    """
    for value in [*(buckets or ()), *([pad_to_multiple_of] if pad_to_multiple_of is not None else [])]:
        if int(value) < 1:
            raise ValueError(f"padding lengths must be positive, got {value} (data.length_buckets / data.pad_to_multiple_of)")
    import torch

    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token before batching")
    left = getattr(tokenizer, "padding_side", "right") == "left"
    pad_values = {"input_ids": int(pad_id), "attention_mask": 0, "token_type_ids": 0}

    def _list(value: Any) -> list[int]:
        return value.tolist() if hasattr(value, "tolist") else list(value)

    def fn(rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("empty batch")
        batch: dict[str, torch.Tensor] = {}
        longest = padded_length(max(len(_list(r["input_ids"])) for r in rows), buckets, pad_to_multiple_of)
        for key in keys:
            if key not in rows[0]:
                continue
            if key in pad_values:
                padded = []
                for r in rows:
                    seq = _list(r[key])
                    pad = [pad_values[key]] * (longest - len(seq))
                    padded.append(pad + seq if left else seq + pad)
                batch[key] = torch.tensor(padded, dtype=torch.long)
            elif isinstance(rows[0][key], list | tuple) or getattr(rows[0][key], "ndim", 0) == 1:
                batch[key] = torch.tensor([_list(r[key]) for r in rows], dtype=torch.float32)  # multi-hot [B, C]
            else:
                batch[key] = torch.tensor([int(r[key]) for r in rows], dtype=torch.long)
        return batch

    return fn

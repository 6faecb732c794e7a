"""Readers that turn raw task files into :class:`Example` lists, with an account of every row not kept.

Readers are looked up by name (``reader:`` in a task config): ``tianchi_tsv`` for the competition files,
``clue_json`` for the CLUE releases and ``hf_dataset`` for anything on the Hugging Face hub. Every reader
takes a :class:`ReadSpec` and returns ``(examples, ReadReport)``. Rows that cannot be used either raise a
:class:`BadRowError` (``on_bad_row: error``, the default) or are skipped and counted by reason
(``on_bad_row: skip``): nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DATA_SOURCES_HINT",
    "BadRowError",
    "DataSourceError",
    "FileEncodingError",
    "NotAFileError",
    "UNLABELLED",
    "Example",
    "ReadReport",
    "ReadSpec",
    "ReaderFn",
    "get_reader",
    "read_clue_json",
    "read_hf_dataset",
    "read_tianchi_tsv",
    "read_unlabelled_tsv",
    "reader_names",
    "register_reader",
]

log = logging.getLogger(__name__)

OnBadRow = Literal["error", "skip"]

DATA_SOURCES_HINT = (
    "The task files come from the Tianchi competition 'NLP中文预训练模型泛化能力挑战赛' "
    "(OCNLI/OCEMOTION/TNEWS *_train1128.csv and the unlabelled test A/B files) and the CLUE releases "
    "(ocnli_public.zip, tnews_public.zip); see README.md, 'Data'. In this workplace they live in "
    "../shared/data/raw: run with MTL_DATA_DIR=../shared/data/raw (or data.root=../shared/data/raw). "
    "For a quick synthetic run, mtl.data.fixtures.write_fixture_data(root) writes small files in the same layout."
)

UNLABELLED = object()
"""Sentinel a reader passes as the raw label of a row it knows has no gold label."""

_EXCERPT_CHARS = 120
_MAX_SKIPPED_EXCERPTS = 5


@dataclass(frozen=True)
class Example:
    """One row: ``label`` is the index into the task's ordered label list, ``None`` when unlabelled.

    In a multi-label task (``type: multi_label``) ``label`` is instead the sorted tuple of the row's label
    indices (``()`` for a row that carries none of the labels). ``line`` is the 1-based line (or row) number
    in the source, kept so that any later complaint about an example can point back to the file.
    """

    id: str
    texts: tuple[str, ...]
    label: int | tuple[int, ...] | None
    line: int


class BadRowError(ValueError):
    """A row that cannot be used; the message names the file, the 1-based line, the reason and an excerpt."""

    #: what the message suggests by default (mtl-train's option); other callers pass their own ``hint``
    DEFAULT_HINT = "set data.on_bad_row=skip to skip such rows; they are then counted in the log and metrics.json"

    def __init__(self, source: str, line: int, reason: str, excerpt: str, hint: str | None = None) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        self.excerpt = excerpt
        self.hint = self.DEFAULT_HINT if hint is None else hint
        super().__init__(f"{self.where}\n({self.hint})")

    @property
    def where(self) -> str:
        """File, line, reason and excerpt in one line (without the hint)."""
        return f"{self.source}, line {self.line}: {self.reason}: {self.excerpt}"


class DataSourceError(RuntimeError):
    """A data source that could not be opened for a reason other than a missing local file (e.g. offline hub)."""


class NotAFileError(FileNotFoundError):
    """A data path that exists but is not a regular file (a directory, a socket, ...): the message says so.

    A :class:`FileNotFoundError` so that every caller that turns a missing file into a one-line error
    treats it the same way.
    """


class FileEncodingError(ValueError):
    """A whole file in another encoding than UTF-8 (e.g. GBK): one error naming the file and the fix,
    whatever ``on_bad_row`` says (skipping every row of it would leave nothing)."""


@dataclass
class ReadReport:
    """What happened to every row of one source: ``rows == kept + sum(skipped.values()) + unlabelled``."""

    source: str
    rows: int = 0
    kept: int = 0
    unlabelled: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_excerpts: list[str] = field(default_factory=list)
    nul_rows: int = 0  # kept rows whose texts held NUL bytes (removed from the texts)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "kept": self.kept,
            "unlabelled": self.unlabelled,
            "skipped": dict(self.skipped),
            "skipped_excerpts": list(self.skipped_excerpts),
            **({"nul_rows": self.nul_rows} if self.nul_rows else {}),
        }

    def summary(self) -> str:
        parts = [f"{self.source}: {self.rows} rows, {self.kept} kept"]
        if self.unlabelled:
            parts.append(f"{self.unlabelled} unlabelled (skipped)")
        if self.skipped:
            parts.append(
                "skipped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            )
        if self.nul_rows:
            parts.append(f"NUL bytes removed from the texts of {self.nul_rows} rows")
        return "; ".join(parts)


@dataclass(frozen=True)
class ReadSpec:
    """Everything a reader needs about one source.

    ``labels`` is the ordered label list of the task (``None`` for unlabelled test files, where every
    example gets ``label=None``). ``label_map`` maps raw label values to entries of ``labels`` (e.g.
    ``entailment -> "0"``); raw values in ``unlabelled_values`` mark rows without a gold label, which are
    skipped and counted, not treated as errors. ``root_hint`` says where ``path`` was resolved from, for the
    missing-file message. ``options`` carries reader-specific settings (``hf_dataset``: path, name, split).

    ``multi_label``: the label field holds zero or more label values joined by ``label_separator`` (or, in
    JSON and hub rows, a list of them); each is mapped through ``label_map`` and must be in ``labels``, and
    the example's label is the sorted tuple of their indices. An empty field is a row with no label (not
    an unlabelled row); only a field equal to one of ``unlabelled_values`` is unlabelled.
    """

    source: str
    text_columns: tuple[str, ...]
    labels: tuple[str, ...] | None
    path: Path | None = None
    columns: tuple[str, ...] = ()
    label_column: str | None = "label"
    id_column: str | None = "id"
    label_map: Mapping[str, str] = field(default_factory=dict)
    unlabelled_values: tuple[str, ...] = ("-",)
    on_bad_row: OnBadRow = "error"
    root_hint: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    multi_label: bool = False
    label_separator: str = ","

    def __post_init__(self) -> None:
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {self.on_bad_row!r}")
        if self.multi_label and not (isinstance(self.label_separator, str) and self.label_separator):
            raise ValueError(f"{self.source}: label_separator must be a non-empty string, got {self.label_separator!r}")
        if not self.text_columns:
            raise ValueError(f"{self.source}: text_columns is empty")
        if self.labels is not None:
            missing = sorted({v for v in self.label_map.values() if v not in self.labels})
            if missing:
                raise ValueError(
                    f"{self.source}: label_map targets {missing} are not in the label list {list(self.labels)}"
                )


ReaderFn = Callable[[ReadSpec], tuple[list[Example], ReadReport]]
_READERS: dict[str, ReaderFn] = {}


def register_reader(name: str) -> Callable[[ReaderFn], ReaderFn]:
    """Register a reader under ``name`` so task configs can select it with ``reader: <name>``."""

    def decorator(fn: ReaderFn) -> ReaderFn:
        existing = _READERS.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"reader name {name!r} is already registered to {existing.__qualname__}")
        _READERS[name] = fn
        return fn

    return decorator


def get_reader(name: str) -> ReaderFn:
    try:
        return _READERS[name]
    except KeyError:
        raise KeyError(f"unknown reader {name!r}; registered readers: {', '.join(reader_names())}") from None


def reader_names() -> list[str]:
    return sorted(_READERS)


# ---------------------------------------------------------------------------------------------------------
# shared row handling


def _excerpt(raw: str) -> str:
    text = raw if len(raw) <= _EXCERPT_CHARS else raw[:_EXCERPT_CHARS] + "…"
    return repr(text)


class _RowSink:
    """Collects examples; routes bad rows to an exception or to the skip counters."""

    def __init__(self, spec: ReadSpec) -> None:
        self.spec = spec
        self.examples: list[Example] = []
        self.report = ReadReport(source=spec.source)
        self._seen_ids: set[str] = set()

    def bad(self, line: int, reason: str, raw: str) -> None:
        excerpt = _excerpt(raw)
        if self.spec.on_bad_row == "error":
            raise BadRowError(self.spec.source, line, reason, excerpt)
        self.report.skipped[reason] += 1
        if len(self.report.skipped_excerpts) < _MAX_SKIPPED_EXCERPTS:
            self.report.skipped_excerpts.append(f"line {line}: {reason}: {excerpt}")

    def add(self, line: int, raw: str, row_id: str, texts: Sequence[Any], raw_label: Any) -> None:
        """Validate one parsed row and keep it, count it as unlabelled, or report it as bad."""
        spec = self.spec
        cleaned: list[str] = []
        had_nul = False
        for column, text in zip(spec.text_columns, texts, strict=True):
            if not isinstance(text, str):
                self.bad(line, f"text column {column!r} is not a string ({type(text).__name__})", raw)
                return
            if "\x00" in text:  # NUL bytes vanish in normalisation/tokenisation: remove them here, counted
                had_nul = True
                text = text.replace("\x00", "")
            if not text.strip():
                self.bad(line, f"empty text in column {column!r}" + (" (only NUL bytes)" if had_nul else ""), raw)
                return
            cleaned.append(text)
        texts = cleaned
        if not row_id:
            self.bad(line, "empty id", raw)
            return
        if row_id in self._seen_ids:
            self.bad(line, f"duplicate id {row_id!r}", raw)
            return
        label: int | tuple[int, ...] | None = None
        if spec.labels is not None and spec.multi_label:
            parsed = self._multi_label(line, raw, raw_label)
            if parsed is None:
                return
            label = parsed
        elif spec.labels is not None:
            value = "" if raw_label is None or raw_label is UNLABELLED else str(raw_label).strip()
            if raw_label is UNLABELLED or value in spec.unlabelled_values:
                self.report.unlabelled += 1
                return
            value = spec.label_map.get(value, value)
            if value not in spec.labels:
                self.bad(line, f"label {value!r} not in the task's labels {list(spec.labels)}", raw)
                return
            label = spec.labels.index(value)
        self._seen_ids.add(row_id)
        if had_nul:
            self.report.nul_rows += 1
        self.examples.append(Example(id=row_id, texts=tuple(texts), label=label, line=line))
        self.report.kept += 1

    def _multi_label(self, line: int, raw: str, raw_label: Any) -> tuple[int, ...] | None:
        """The sorted label indices of a multi-label field (``None``: the row was counted as unlabelled or bad).

        A string is split on ``label_separator`` (parts stripped, empty parts ignored, so an empty field is a
        row with no label); a list (JSON, hub rows) gives its elements. Duplicates count once.
        """
        spec = self.spec
        assert spec.labels is not None
        if raw_label is UNLABELLED:
            self.report.unlabelled += 1
            return None
        if isinstance(raw_label, list | tuple):
            parts = [str(v).strip() for v in raw_label]
        else:
            text = "" if raw_label is None else str(raw_label).strip()
            if text in spec.unlabelled_values and text:
                self.report.unlabelled += 1
                return None
            parts = [p.strip() for p in text.split(spec.label_separator)]
        indices: set[int] = set()
        for part in parts:
            if not part:
                continue
            value = spec.label_map.get(part, part)
            if value not in spec.labels:
                self.bad(line, f"label {value!r} not in the task's labels {list(spec.labels)}", raw)
                return None
            indices.add(spec.labels.index(value))
        return tuple(sorted(indices))

    def finish(self) -> tuple[list[Example], ReadReport]:
        report = self.report
        level = logging.WARNING if report.n_skipped else logging.INFO
        log.log(level, "read %s", report.summary())
        for excerpt in report.skipped_excerpts:
            log.warning("  skipped %s", excerpt)
        if report.nul_rows:
            log.warning("%s: removed NUL bytes from the texts of %d rows", report.source, report.nul_rows)
        return self.examples, report


def _require_file(spec: ReadSpec) -> Path:
    if spec.path is None:
        raise ValueError(f"reader for {spec.source} needs a file path")
    path = spec.path.expanduser().resolve()
    if not path.is_file():
        where = f" (resolved from {spec.root_hint})" if spec.root_hint else ""
        if path.is_dir():
            raise NotAFileError(f"{path} is a directory, not a data file{where}: point the task's file at a file in it")
        if path.exists():
            raise NotAFileError(f"{path} is not a regular file{where}")
        raise FileNotFoundError(f"data file not found: {path}{where}. {DATA_SOURCES_HINT}")
    return path


def _check_encoding(path: Path, data: bytes, chunks: Sequence[bytes]) -> None:
    """Refuse a file that is mostly not UTF-8 with one error naming the file, its likely encoding and the fix.

    A few undecodable lines in a UTF-8 file stay row errors (or counted skips); a file where at least half of
    the non-empty lines, or every line with non-ASCII bytes, fails to decode is in another encoding.
    """
    try:
        data.decode("utf-8")
        return
    except UnicodeDecodeError:
        pass
    bad = first = 0
    non_ascii = 0
    lines = 0
    for number, chunk in enumerate(chunks, start=1):
        if not chunk.strip():
            continue
        lines += 1
        if not chunk.isascii():
            non_ascii += 1
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
            first = first or number
    if bad < 2 or (bad * 2 < lines and bad < non_ascii):
        return
    guess = None
    for encoding in ("gbk", "gb18030", "big5", "utf-16"):
        try:
            data.decode(encoding)
        except UnicodeDecodeError:
            continue
        guess = encoding
        break
    converted = path.with_name(f"{path.stem}.utf8{path.suffix}")
    how = f"iconv -f {guess or '<its encoding>'} -t utf-8 {path} > {converted}"
    fix = f"it looks like {guess.upper()}: convert it with {how}" if guess else f"convert it to UTF-8, e.g. {how}"
    raise FileEncodingError(
        f"{path} is not UTF-8 ({bad} of {lines} lines cannot be decoded, the first at line {first}); {fix}"
    )


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(1-based line number, raw bytes)`` split on ``\\n`` only.

    Splitting on ``\\n`` alone (not universal newlines, not ``str.splitlines``) keeps lone ``\\r``, U+2028 and
    friends inside a field instead of silently breaking the row in two. A final empty line is not a row.
    """
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    chunks = data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    _check_encoding(path, data, chunks)
    for number, chunk in enumerate(chunks, start=1):
        yield number, chunk[:-1] if chunk.endswith(b"\r") else chunk


def _decode(sink: _RowSink, number: int, chunk: bytes) -> str | None:
    try:
        return chunk.decode("utf-8")
    except UnicodeDecodeError:
        # one counter for all such rows (no byte position in the reason); a wholly foreign file was refused
        # before, by _check_encoding
        sink.bad(number, "not valid UTF-8", chunk.decode("utf-8", "replace"))
        return None


def _text_rows(sink: _RowSink, path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, decoded line)`` for every line that is worth parsing.

    Why one place: every line-based reader must count each line as a row and route undecodable or blank
    lines through ``sink.bad`` (an error naming file, line and value, or a counted skip) in the same way.
    """
    for number, chunk in _lines(path):
        sink.report.rows += 1
        line = _decode(sink, number, chunk)
        if line is None:
            continue
        if not line.strip():
            sink.bad(number, "blank line", line)
            continue
        yield number, line


# ---------------------------------------------------------------------------------------------------------
# readers


@register_reader("tianchi_tsv")
def read_tianchi_tsv(spec: ReadSpec) -> tuple[list[Example], ReadReport]:
    """Tab-separated, no header, **no quoting** (``"`` is an ordinary character), CRLF or LF endings.

    ``spec.columns`` names the columns in file order. Reading with CSV quoting would merge rows that contain
    ``"`` (OCNLI then shows 48,778 rows instead of 53,387), which is why this is not ``csv``/``pandas``.
    """
    path = _require_file(spec)
    columns = list(spec.columns)
    if not columns:
        raise ValueError(f"{spec.source}: tianchi_tsv needs `columns` (the column names in file order)")
    needed = list(spec.text_columns) + [c for c in (spec.id_column,) if c]
    if spec.labels is not None and spec.label_column:
        needed.append(spec.label_column)
    unknown = [c for c in needed if c not in columns]
    if unknown:
        raise ValueError(f"{spec.source}: columns {unknown} are not among the file's columns {columns}")
    text_idx = [columns.index(c) for c in spec.text_columns]
    id_idx = columns.index(spec.id_column) if spec.id_column else None
    label_idx = columns.index(spec.label_column) if spec.labels is not None and spec.label_column else None

    sink = _RowSink(spec)
    for number, line in _text_rows(sink, path):
        fields = line.split("\t")
        if len(fields) != len(columns):
            sink.bad(
                number, f"expected {len(columns)} tab-separated columns {columns}, found {len(fields)}", line
            )
            continue
        row_id = fields[id_idx].strip() if id_idx is not None else str(number - 1)
        raw_label = fields[label_idx] if label_idx is not None else None
        sink.add(number, line, row_id, [fields[i] for i in text_idx], raw_label)
    return sink.finish()


def read_unlabelled_tsv(
    path: Path,
    columns: Sequence[str],
    text_columns: Sequence[str],
    id_column: str = "id",
    on_bad_row: OnBadRow = "error",
    root_hint: str = "",
) -> tuple[list[Example], ReadReport]:
    """Read an unlabelled Tianchi test file (id + texts); every example has ``label=None``."""
    spec = ReadSpec(
        source=str(path),
        path=Path(path),
        columns=tuple(columns),
        text_columns=tuple(text_columns),
        labels=None,
        label_column=None,
        id_column=id_column,
        on_bad_row=on_bad_row,
        root_hint=root_hint,
    )
    return read_tianchi_tsv(spec)


@register_reader("clue_json")
def read_clue_json(spec: ReadSpec) -> tuple[list[Example], ReadReport]:
    """JSON lines as in the CLUE releases; rows whose label is in ``unlabelled_values`` (``-``) are counted.

    When ``id_column`` is unset (CLUE TNEWS has no id field) the 0-based row number is the id.
    """
    path = _require_file(spec)
    sink = _RowSink(spec)
    for number, line in _text_rows(sink, path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            sink.bad(number, f"invalid JSON ({exc.msg} at column {exc.colno})", line)
            continue
        if not isinstance(row, dict):
            sink.bad(number, f"expected a JSON object, found {type(row).__name__}", line)
            continue
        needed = list(spec.text_columns) + [c for c in (spec.id_column,) if c]
        if spec.labels is not None and spec.label_column:
            needed.append(spec.label_column)
        missing = [c for c in needed if c not in row]
        if missing:
            sink.bad(number, f"missing field(s) {missing}", line)
            continue
        row_id = str(row[spec.id_column]).strip() if spec.id_column else str(number - 1)
        raw_label = row.get(spec.label_column) if spec.labels is not None and spec.label_column else None
        sink.add(number, line, row_id, [row[c] for c in spec.text_columns], raw_label)
    return sink.finish()


@register_reader("hf_dataset")
def read_hf_dataset(spec: ReadSpec) -> tuple[list[Example], ReadReport]:
    """Any Hugging Face ``datasets`` dataset: ``options`` holds ``path``, ``name``, ``split`` (and ``revision``).

    Integer labels of a ``ClassLabel`` feature are turned into their names before ``label_map`` and the label
    list apply; ``-1`` (the hub convention for unlabelled test rows) counts as unlabelled. A multi-label task
    reads a list per row (a ``Sequence`` of ``ClassLabel`` names or indices) or a separator-joined string.
    """
    import datasets

    opts = dict(spec.options)
    hf_path = opts.get("path")
    if not hf_path:
        raise ValueError(f"{spec.source}: hf_dataset needs options.path (the dataset name on the hub)")
    split = opts.get("split", "train")
    try:
        ds = datasets.load_dataset(hf_path, opts.get("name"), split=split, revision=opts.get("revision"))
    # the hub raises many unrelated types (ConnectionError, OSError, HfHubHTTPError, DatasetNotFoundError...)
    except Exception as exc:
        raise DataSourceError(
            f"could not load Hugging Face dataset {hf_path!r} (config {opts.get('name')!r}, split {split!r}): "
            f"{type(exc).__name__}: {exc}. The hf_dataset reader needs hub access or a populated HF cache "
            f"(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE make it cache-only). Without it, use the file readers "
            f"(tianchi_tsv, clue_json) with local files. {DATA_SOURCES_HINT}"
        ) from exc

    label_names: list[str] | None = None
    if spec.labels is not None and spec.label_column and spec.label_column in ds.features:
        feature = ds.features[spec.label_column]
        if spec.multi_label and hasattr(feature, "feature"):  # Sequence/List of class labels: a list per row
            feature = feature.feature
        if isinstance(feature, datasets.ClassLabel):
            label_names = list(feature.names)
    sink = _RowSink(spec)
    for index, row in enumerate(ds):
        number = index + 1
        sink.report.rows += 1
        raw = json.dumps(row, ensure_ascii=False, default=str)
        missing = [c for c in spec.text_columns if c not in row]
        if missing:
            sink.bad(number, f"missing field(s) {missing}", raw)
            continue
        row_id = str(row[spec.id_column]) if spec.id_column and spec.id_column in row else str(index)
        raw_label: Any = None
        if spec.labels is not None and spec.label_column:
            raw_label = row.get(spec.label_column)
            if isinstance(raw_label, int) and raw_label < 0:
                raw_label = UNLABELLED
            elif label_names is not None and isinstance(raw_label, int):
                raw_label = label_names[raw_label]
            elif label_names is not None and isinstance(raw_label, list):
                raw_label = [label_names[v] if isinstance(v, int) and 0 <= v < len(label_names) else v
                             for v in raw_label]
        sink.add(number, raw, row_id, [row[c] for c in spec.text_columns], raw_label)
    return sink.finish()

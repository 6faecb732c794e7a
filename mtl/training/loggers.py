"""Where per-step and per-evaluation metrics go. ``csv`` is the default; wandb is optional."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Protocol


class MetricsLogger(Protocol):
    def log(self, step: int, values: dict[str, float], kind: str = "train") -> None: ...

    def finish(self, summary: dict[str, Any] | None = None) -> None: ...


class CSVLogger:
    """Writes ``train_log.csv`` and ``eval_log.csv`` in the run directory.

    Columns are the union of every key seen; the files are rewritten on each flush so a
    metric that appears later (e.g. a new cosine pair) still gets its column.
    """

    def __init__(self, run_dir: str | Path, flush_every: int = 20) -> None:
        self.run_dir = Path(run_dir)
        self.rows: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
        self.flush_every = flush_every
        self._since_flush = 0

    def log(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        self.rows.setdefault(kind, []).append({"step": step, **values})
        self._since_flush += 1
        if kind != "train" or self._since_flush >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        self._since_flush = 0
        for kind, rows in self.rows.items():
            if not rows:
                continue
            columns: list[str] = []
            for row in rows:
                columns.extend(k for k in row if k not in columns)
            path = self.run_dir / f"{kind}_log.csv"
            tmp = path.with_suffix(".csv.tmp")
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
            tmp.replace(path)

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        self.flush()


class MultiLogger:
    """Fans out to several loggers (e.g. csv and wandb)."""

    def __init__(self, loggers: list[MetricsLogger]) -> None:
        self.loggers = loggers

    def log(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        for lg in self.loggers:
            lg.log(step, values, kind)

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        for lg in self.loggers:
            lg.finish(summary)


def write_json(path: str | Path, data: Any) -> None:
    """Atomic JSON write: readers never see a half-written metrics file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=float), encoding="utf-8")
    tmp.replace(path)

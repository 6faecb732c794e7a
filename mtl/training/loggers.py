"""Where per-step and per-evaluation metrics go. ``csv`` is the default; wandb is optional."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Protocol

from mtl.utils.files import atomic_write_text


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
            buffer = io.StringIO(newline="")
            writer = csv.DictWriter(buffer, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(self.run_dir / f"{kind}_log.csv", buffer.getvalue())

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        self.flush()

    def state_dict(self) -> dict[str, Any]:
        """The rows so far: a resumed run rewrites the CSV files from them, so its history is kept."""
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any] | list[Any]) -> None:
        """Its own state, or a :class:`MultiLogger`'s list (a run resumed with ``logger=csv`` after wandb)."""
        found = [st for st in (state if isinstance(state, list) else [state]) if isinstance(st, dict) and "rows" in st]
        if found:
            self.rows = {k: list(v) for k, v in found[0]["rows"].items()}


class MultiLogger:
    """Fans out to several loggers (e.g. csv and wandb)."""

    def __init__(self, loggers: list[MetricsLogger]) -> None:
        self.loggers = loggers

    def log(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        for lg in self.loggers:
            lg.log(step, values, kind)

    def state_dict(self) -> list[Any]:
        """Each logger's state (None for one without state), in order."""
        return [lg.state_dict() if hasattr(lg, "state_dict") else None for lg in self.loggers]

    def load_state_dict(self, state: list[Any] | dict[str, Any]) -> None:
        """A list from a MultiLogger run, or one logger's state (a run resumed with another logger added)."""
        states = state if isinstance(state, list) else [state] * len(self.loggers)
        for lg, st in zip(self.loggers, states, strict=False):
            if st is not None and hasattr(lg, "load_state_dict"):
                lg.load_state_dict(st)

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        """Finishes every logger even when one of them fails; the first error is raised afterwards."""
        error: BaseException | None = None
        for lg in self.loggers:
            try:
                lg.finish(summary)
            except Exception as exc:  # noqa: BLE001 - re-raised below
                error = error or exc
        if error is not None:
            raise error


class WandbLogger:
    """Weights & Biases tracking: one wandb run per training run (per multirun job), finished in ``finish``.

    ``mode``: ``online`` / ``offline`` / ``disabled``; ``None`` picks ``online`` only when ``WANDB_API_KEY``
    is set, else ``offline`` (runs land in ``<dir>/wandb/offline-run-*``; ``wandb sync`` uploads them later).
    ``group``: ``None`` groups by sweep: the multirun sweep folder's name in ``-m`` runs, else ``name``.
    ``dir``: ``None`` is the run directory. Train rows are logged as ``train/<key>``, evaluations as
    ``eval/<key>`` (``eval/avg_macro_f1``, ``eval/<task>/macro_f1``, ...) against the optimiser step; the
    final metrics (best per-task and average dev macro-F1, samples/s, ...) go to the run summary, and the
    PNG plots of the run directory are uploaded as images when the run finishes.
    """

    def __init__(
        self,
        run_dir: str | Path,
        project: str = "mtl-clue",
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        tags: list[str] | tuple[str, ...] | None = None,
        mode: str | None = None,
        dir: str | Path | None = None,  # noqa: A002 - wandb's own argument name
        job_type: str = "train",
        notes: str | None = None,
        log_plots: bool = True,
        full_config: dict[str, Any] | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError as exc:  # pragma: no cover - wandb is in the dev extra
            raise ImportError(
                'logger=wandb needs the wandb package: pip install "mtl[track]" (or use logger=csv)'
            ) from exc
        self.run_dir = Path(run_dir)
        self.log_plots = log_plots
        if mode is None or str(mode).strip() == "":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        mode = str(mode)
        if mode not in ("online", "offline", "disabled", "shared"):
            raise ValueError(f"logger.wandb.mode must be online, offline or disabled, got {mode!r}")
        sweep, job_num = _multirun_sweep()
        if group is None:
            group = sweep or (full_config or {}).get("name") or self.run_dir.name
        if name is None:
            name = f"{group}-{job_num}" if sweep else self.run_dir.name
        wandb_dir = Path(dir) if dir else self.run_dir
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.run = wandb.init(
            project=project,
            entity=entity,
            group=str(group),
            name=str(name),
            tags=[str(t) for t in (tags or []) if t is not None and str(t)],
            job_type=job_type,
            notes=notes,
            mode=mode,  # type: ignore[arg-type]
            dir=str(wandb_dir),
            config=full_config or {},
            reinit="finish_previous",  # a multirun runs its jobs in one process
        )
        self._finished = False

    @property
    def run_path(self) -> Path | None:
        """The local wandb run folder (``.../wandb/offline-run-<date>-<id>`` or ``run-...``)."""
        d = getattr(getattr(self.run, "settings", None), "sync_dir", None)
        return Path(d) if d else None

    def log(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        if self._finished:
            return
        self.run.log({f"{kind}/{k}": v for k, v in values.items()}, step=int(step))

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        """Write the summary and close the run; ``summary=None`` means the run failed (exit code 1)."""
        if self._finished:
            return
        self._finished = True
        try:
            if summary is not None:
                self.run.summary.update(_wandb_summary(summary))
                if self.log_plots:
                    self._log_plots()
        finally:
            self.run.finish(exit_code=0 if summary is not None else 1)

    def _log_plots(self) -> None:
        import wandb

        images = {f"plots/{p.stem}": wandb.Image(str(p)) for p in sorted(self.run_dir.glob("*.png"))}
        if images:
            self.run.log(images)


def _multirun_sweep() -> tuple[str | None, int | None]:
    """``(sweep folder name, job number)`` inside a Hydra multirun job, else ``(None, None)``."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None, None
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None, None
        return Path(str(hc.sweep.dir)).name, int(hc.job.num)
    except (ImportError, ValueError, AttributeError):
        return None, None


def _wandb_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar results of ``metrics.json`` (not the history or the data report) for the wandb summary."""
    out: dict[str, Any] = {}
    for key in ("avg_macro_f1", "best_step", "steps", "stopped_early", "wall_seconds", "train_seconds",
                "samples_per_second", "nonfinite_steps_skipped"):
        if key in metrics:
            out[key] = metrics[key]
    for task, s in (metrics.get("tasks") or {}).items():
        for k in ("macro_f1", "accuracy", "loss"):
            if k in s:
                out[f"best/{task}/{k}"] = s[k]
    last = metrics.get("last") or {}
    if "avg_macro_f1" in last:
        out["last/avg_macro_f1"] = last["avg_macro_f1"]
    for task, f1 in (metrics.get("majority_macro_f1") or {}).items():
        out[f"majority/{task}/macro_f1"] = f1
    for task, p in ((metrics.get("sampler") or {}).get("proportions") or {}).items():
        out[f"sampler/proportion/{task}"] = p
    return out


LOGGERS = ("csv", "wandb")


def build_logger(logger_cfg: Any, run_dir: str | Path, full_config: dict[str, Any] | None = None) -> MetricsLogger:
    """One logger per key of the ``logger`` config group: ``csv`` and/or ``wandb`` (``logger=wandb`` has both)."""
    loggers: list[MetricsLogger] = []
    for name, opts in (logger_cfg or {}).items():
        opts = dict(opts or {})
        if name == "csv":
            loggers.append(CSVLogger(run_dir, **opts))
        elif name == "wandb":
            loggers.append(WandbLogger(run_dir, full_config=full_config, **opts))
        else:
            raise ValueError(f"unknown logger {name!r} in the logger config; available: {', '.join(LOGGERS)}")
    if not loggers:
        loggers.append(CSVLogger(run_dir))
    return loggers[0] if len(loggers) == 1 else MultiLogger(loggers)

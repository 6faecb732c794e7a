"""Compare finished runs: group them by configuration, aggregate over seeds, write a table and a plot.

A *run directory* is any folder holding ``metrics.json`` and ``config.yaml`` (what ``mtl-train`` writes),
found recursively under the given paths (single runs, multirun sweep folders, whole ``outputs/``).
Runs are grouped by their resolved configuration minus the keys that do not define an experiment (the
seed, the run name, data/cache paths, logging options: :data:`IGNORED_KEYS`). The keys that differ
between groups form each group's label, e.g. ``balancer.name=pcgrad``; per group the mean and the sample
standard deviation over its runs (seeds) are reported for the average and per-task dev macro-F1 (of each
run's best checkpoint) and for training throughput.
"""

from __future__ import annotations

import fnmatch
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "IGNORED_KEYS",
    "ConfigGroup",
    "NoRunsFoundError",
    "RunRecord",
    "build_report",
    "find_run_dirs",
    "group_runs",
    "load_run",
    "write_report",
]

# Keys (fnmatch patterns over dotted paths) that do not change what is being compared.
IGNORED_KEYS: tuple[str, ...] = (
    "seed",
    "name",
    "imports",
    "data.root",
    "data.cache_dir",
    "data.num_workers",
    "encoder.cache_dir",
    "trainer.progress",
    "trainer.log_every",
    "trainer.device",
    # how a run was carried out, not what it computes: a resumed run equals its uninterrupted twin
    "trainer.resume",
    "trainer.checkpoint_every",
    "logger",
    "logger.*",
    "hydra",
    "hydra.*",
)
# Shown in the report's "common settings" line when all runs share them.
HEADLINE_KEYS: tuple[str, ...] = (
    "encoder.name_or_path",
    "encoder.kwargs.num_hidden_layers",
    "encoder.max_length",
    "data.max_train_per_task",
    "data.max_dev_per_task",
    "data.batch_size",
    "sampler.name",
    "balancer.name",
    "optim.lr",
    "optim.head_lr",
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.eval_every",
)
_ABSENT = "<absent>"
# a group's label shows at most this much of one value and of the whole (report.json keeps everything)
_LABEL_VALUE_CHARS = 40
_LABEL_CHARS = 160
# parents whose children are named members (tasks.<name>.*): labelled by which members a group has
_COLLECTIONS = ("tasks",)


class NoRunsFoundError(FileNotFoundError):
    """No finished run directory under the given paths."""


class RunReadError(ValueError):
    """A run directory whose ``config.yaml`` or ``metrics.json`` cannot be read; the message names the file."""


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]  # flattened, dotted keys
    metrics: dict[str, Any]

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def tasks(self) -> list[str]:
        return list(self.metrics.get("tasks") or {})


@dataclass
class ConfigGroup:
    key: tuple[tuple[str, str], ...]  # the identifying (key, value) pairs
    runs: list[RunRecord] = field(default_factory=list)
    label: str = ""

    @property
    def varying(self) -> dict[str, str]:
        return dict(self.key)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": [1, 2]}`` (lists stay values)."""
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        if not data and prefix:
            out[prefix] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def _ignored(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def find_run_dirs(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """``(finished run dirs, unfinished ones)`` under ``paths``: finished have metrics.json + config.yaml;
    unfinished have only config.yaml (still running, crashed or killed)."""
    finished: list[Path] = []
    unfinished: list[Path] = []
    seen: set[Path] = set()
    for root in paths:
        root = Path(root).expanduser()
        if not root.exists():
            raise NoRunsFoundError(f"{root} does not exist")
        candidates = [root] if (root / "config.yaml").is_file() else []
        candidates += sorted(p.parent for p in root.rglob("config.yaml"))
        for d in candidates:
            d = d.resolve()
            if d in seen or any(part in ("checkpoints", "wandb", ".hydra", ".submitit") for part in d.parts[-3:]):
                continue
            seen.add(d)
            (finished if (d / "metrics.json").is_file() else unfinished).append(d)
    return sorted(finished), sorted(unfinished)


def load_run(path: str | Path) -> RunRecord:
    path = Path(path)
    config_file, metrics_file = path / "config.yaml", path / "metrics.json"
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RunReadError(f"cannot read {config_file}: {' '.join(str(exc).split())}") from exc
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunReadError(f"cannot read {metrics_file}: {exc} (a run that was killed while writing it?)") from exc
    if not isinstance(config, dict) or not isinstance(metrics, dict):
        raise RunReadError(f"{path}: config.yaml and metrics.json must each hold a mapping")
    return RunRecord(path=path, config=flatten(config), metrics=metrics)


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | dict):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return str(v)


def _short(value: str, limit: int = _LABEL_VALUE_CHARS) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _members(run: RunRecord, collection: str) -> str:
    """The named members of ``collection`` in a run's config (``tasks`` -> ``ocnli,tnews``)."""
    prefix = collection + "."
    names = dict.fromkeys(k[len(prefix):].split(".", 1)[0] for k in run.config if k.startswith(prefix))
    return ",".join(names)


def group_runs(runs: Sequence[RunRecord], ignore: Sequence[str] = IGNORED_KEYS) -> list[ConfigGroup]:
    """Group runs with identical configurations (ignoring ``ignore``); label groups by the keys that vary.

    Labels stay short: a sub-key of a component whose ``name`` (or ``name_or_path``) varies
    (``balancer.window`` when ``balancer.name`` varies) is left out unless it also varies between runs of
    one such name; groups with different tasks show ``tasks=ocnli,tnews`` instead of every key of the
    tasks that come and go; long values are cut (``…``), and a label longer than a line ends with
    ``(+N keys)``. ``ConfigGroup.key`` (``config`` in report.json) keeps every label key in full.
    """
    keys = sorted({k for r in runs for k in r.config if not _ignored(k, ignore)})
    identity = {id(r): tuple((k, _fmt_value(r.config.get(k, _ABSENT))) for k in keys) for r in runs}
    groups: dict[tuple[tuple[str, str], ...], ConfigGroup] = {}
    for r in runs:
        groups.setdefault(identity[id(r)], ConfigGroup(key=identity[id(r)])).runs.append(r)
    varying = [k for k in keys if len({dict(g)[k] for g in groups}) > 1]

    def explained(k: str) -> bool:
        """Constant within each value of the ``name`` / ``name_or_path`` of a component above it."""
        parts = k.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            parent = ".".join(parts[:depth])
            for name_key in (f"{parent}.name", f"{parent}.name_or_path"):
                if k == name_key or name_key not in varying:
                    continue
                by_name: dict[str, set[str]] = {}
                for g in groups:
                    d = dict(g)
                    by_name.setdefault(d[name_key], set()).add(d[k])
                if all(len(v) == 1 for v in by_name.values()):
                    return True
        return False

    # collections whose members differ between groups: one `tasks=...` entry instead of their keys
    members: dict[str, dict[tuple[tuple[str, str], ...], str]] = {}
    for collection in _COLLECTIONS:
        if _ignored(collection, ignore) or _ignored(f"{collection}.x", ignore):
            continue
        per_group = {key: _members(g.runs[0], collection) for key, g in groups.items()}
        if len(set(per_group.values())) > 1:
            members[collection] = per_group

    def presence_only(k: str) -> bool:
        """A key of a member that some groups lack, with one value wherever it is present."""
        collection = k.split(".", 1)[0]
        if collection not in members:
            return False
        present = {dict(g)[k] for g in groups} - {_ABSENT}
        return len(present) <= 1

    label_keys = [k for k in varying if not explained(k) and not presence_only(k)]
    out = []
    for key, g in groups.items():
        d = dict(key)
        full = [(c, members[c][key]) for c in members] + [(k, d[k]) for k in label_keys]
        g.key = tuple(full)
        g.label = _label(full)
        out.append(g)
    return out


def _label(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return "(all runs)"
    parts = [f"{k}={_short(v)}" for k, v in pairs]
    text = parts[0]
    for i, part in enumerate(parts[1:], start=1):
        if len(text) + 2 + len(part) > _LABEL_CHARS:
            return f"{text}, … (+{len(parts) - i} keys)"
        text += ", " + part
    return text


def _stats(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": []}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals), "values": vals}


def build_report(
    paths: Sequence[str | Path], ignore: Sequence[str] = IGNORED_KEYS, metric: str = "avg_macro_f1"
) -> dict[str, Any]:
    """Everything the report shows, as a JSON-able dict (groups sorted by mean ``metric``, best first)."""
    finished, unfinished = find_run_dirs(paths)
    if not finished:
        where = ", ".join(str(p) for p in paths)
        extra = f" ({len(unfinished)} unfinished run dirs without metrics.json)" if unfinished else ""
        raise NoRunsFoundError(
            f"no finished runs found under {where}{extra}: a run directory holds config.yaml and metrics.json "
            "(outputs/<date>/<time>_<name>/ or outputs/multirun/<date>/<time>_<name>/<job>/)"
        )
    runs = [load_run(p) for p in finished]
    groups = group_runs(runs, ignore)
    tasks = list(dict.fromkeys(t for r in runs for t in r.tasks))
    common = {}
    for k in HEADLINE_KEYS:
        vals = {_fmt_value(r.config.get(k, _ABSENT)) for r in runs}
        if len(vals) == 1 and not vals & {_ABSENT, "None"}:
            common[k] = vals.pop()
    if metric != "avg_macro_f1" and metric not in tasks:
        raise KeyError(f"{metric!r} is neither avg_macro_f1 nor a task of these runs ({', '.join(tasks)})")
    rows = []
    for g in groups:
        rs = g.runs
        row = {
            "label": g.label,
            "config": g.varying,
            "task_set": list(dict.fromkeys(t for r in rs for t in r.tasks)),
            "n": len(rs),
            "seeds": sorted((r.seed for r in rs), key=lambda s: (str(type(s)), s)),
            "avg_macro_f1": _stats([r.metrics.get("avg_macro_f1") for r in rs]),
            "tasks": {t: _stats([(r.metrics.get("tasks") or {}).get(t, {}).get("macro_f1") for r in rs]) for t in tasks},
            "samples_per_second": _stats([r.metrics.get("samples_per_second") for r in rs]),
            "wall_seconds": _stats([r.metrics.get("wall_seconds") for r in rs]),
            "best_step": _stats([r.metrics.get("best_step") for r in rs]),
            "runs": [str(r.path) for r in rs],
        }
        rows.append(row)
    key = (lambda row: row[metric]["mean"]) if metric == "avg_macro_f1" else (lambda row: row["tasks"][metric]["mean"])
    rows.sort(key=lambda row: -(key(row) if key(row) is not None else -math.inf))
    notes = []
    task_sets = {tuple(row["task_set"]) for row in rows}
    if len(task_sets) > 1:
        sets = "; ".join(
            f"{row['label']}: {', '.join(row['task_set'])}" for row in rows
        )
        notes.append(
            "The groups average macro-F1 over different task sets, so their avg macro-F1 values are not "
            f"directly comparable; compare the per-task columns ({_short(sets, 400)})."
        )
    return {
        "paths": [str(p) for p in paths],
        "n_runs": len(runs),
        "notes": notes,
        "unfinished": [str(p) for p in unfinished],
        "tasks": tasks,
        "common": common,
        "ignored_keys": list(ignore),
        "metric": metric,
        "groups": rows,
    }


def _pm(s: Mapping[str, Any], digits: int = 4) -> str:
    if s.get("mean") is None:
        return "–"
    if s["n"] > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def markdown_table(report: Mapping[str, Any]) -> str:
    tasks = report["tasks"]
    head = ["configuration", "runs", "seeds", "avg macro-F1", *[f"{t} F1" for t in tasks], "samples/s", "min/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in report["groups"]:
        wall = row["wall_seconds"]
        cells = [
            row["label"].replace("|", "\\|"),
            str(row["n"]),
            ",".join(str(s) for s in row["seeds"]),
            "**" + _pm(row["avg_macro_f1"]) + "**",
            *[_pm(row["tasks"][t]) for t in tasks],
            _pm(row["samples_per_second"], 1),
            f"{wall['mean'] / 60:.1f}" if wall.get("mean") is not None else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_markdown(report: Mapping[str, Any], plot: str | None = None) -> str:
    parts = [
        "# Run comparison",
        "",
        f"{report['n_runs']} runs from {', '.join(report['paths'])}, grouped by configuration "
        f"({len(report['groups'])} groups); mean ± sample std over the runs (seeds) of each group, "
        "dev macro-F1 of each run's best checkpoint.",
    ]
    if report["common"]:
        parts += ["", "Common settings: " + ", ".join(f"`{k}={v}`" for k, v in report["common"].items())]
    parts += ["", markdown_table(report)]
    for note in report.get("notes") or []:
        parts += ["", f"**Note:** {note}"]
    if report["unfinished"]:
        parts += ["", f"Skipped {len(report['unfinished'])} unfinished run dirs (no metrics.json)."]
    if plot:
        parts += ["", f"![comparison]({plot})"]
    return "\n".join(parts) + "\n"


def plot_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars: per configuration, the average and per-task dev macro-F1, error bars = std over seeds."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = report["groups"]
    def stat(row: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        return row["avg_macro_f1"] if name == "average" else row["tasks"][name]

    series = ["average", *report["tasks"]]
    n, k = len(groups), len(series)
    fig = Figure(figsize=(max(6.0, 1.1 * n * k * 0.45 + 2.5), 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(n)
    width = 0.8 / k
    for j, name in enumerate(series):
        means = [stat(r, name)["mean"] if stat(r, name)["mean"] is not None else np.nan for r in groups]
        stds = [stat(r, name)["std"] if stat(r, name)["std"] is not None else 0.0 for r in groups]
        ax.bar(x + (j - (k - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=name,
               color="black" if name == "average" else f"C{j - 1}", alpha=0.85)
    labels = [r["label"] + f"\n(n={r['n']})" for r in groups]
    ax.set_xticks(x, labels, fontsize=8, rotation=20 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_ylabel("dev macro-F1 (mean ± std over seeds)")
    ax.set_title("configuration comparison")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(k, 4))
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def write_report(
    paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    ignore: Sequence[str] = IGNORED_KEYS,
    metric: str = "avg_macro_f1",
) -> dict[str, Any]:
    """Build the report and write ``report.md``, ``report.json`` and ``report.png`` into ``out_dir``
    (default: the first path). Returns the report dict with ``files``."""
    report = build_report(paths, ignore, metric)
    out = Path(out_dir) if out_dir is not None else Path(paths[0])
    if out.is_file():
        out = out.parent
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "report.md", "json": out / "report.json", "plot": out / "report.png"}
    plot_ok = True
    try:
        plot_report(report, files["plot"])
    except Exception as exc:  # noqa: BLE001 - the table matters more than the figure
        plot_ok = False
        report["plot_error"] = f"{type(exc).__name__}: {exc}"
    report["files"] = {k: str(v) for k, v in files.items() if k != "plot" or plot_ok}
    files["markdown"].write_text(to_markdown(report, files["plot"].name if plot_ok else None), encoding="utf-8")
    files["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report

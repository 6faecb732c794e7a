"""Compare finished runs: group them by configuration, aggregate over seeds, write a table and a plot.

A *run directory* is any folder holding ``metrics.json`` and ``config.yaml`` (what ``mtl-train`` writes),
found recursively under the given paths (single runs, multirun sweep folders, whole ``outputs/``).
Runs are grouped by their resolved configuration minus the keys that do not define an experiment (the
seed, the run name, data/cache paths, logging options: :data:`IGNORED_KEYS`). The keys that differ
between groups form each group's label, e.g. ``balancer.name=pcgrad``; per group the mean and the sample
standard deviation over its runs (seeds) are reported for the average and per-task dev macro-F1 (of each
run's best checkpoint, under the run's own decision rule) and for training throughput. With a baseline (``--baseline KEY=VALUE``) every
group also gets its paired differences over shared seeds with 95 % Student-t intervals and a verdict
(:mod:`mtl.evaluation.paired`), in a table and in ``report_paired.png``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtl.evaluation.bootstrap import run_dev_standard_errors
from mtl.evaluation.paired import paired_difference

log = logging.getLogger(__name__)

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


def _config_value(config: Mapping[str, Any], key: str) -> str:
    """A run's value of ``key`` for grouping: a key the run's config lacks (an option added after the run)
    counts as ``None``, an option's "off", except under a collection (``tasks.<name>.*``), where absence
    means the member is not there."""
    if key in config:
        return _fmt_value(config[key])
    return _ABSENT if key.split(".", 1)[0] in _COLLECTIONS else "None"


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
    identity = {id(r): tuple((k, _config_value(r.config, k)) for k in keys) for r in runs}
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


#: the decision rules the report shows beside each run's own score (cross-fitted tuned biases: the honest one)
REPORTED_RULES = ("argmax", "logit_adjusted", "tuned_biases")


def _decision_stats(runs: Sequence[RunRecord], tasks: Sequence[str]) -> dict[str, Any]:
    """Per decision rule: the average and per-task macro-F1 over the runs, and how many runs never predict
    each class (``metrics.json``'s ``decision`` block; runs without one contribute nothing)."""
    out: dict[str, Any] = {}
    blocks = [r.metrics.get("decision") for r in runs]
    if not any(blocks):
        return out
    for rule in REPORTED_RULES:
        never: dict[str, dict[str, int]] = {}
        for b in blocks:
            for t, d in ((b or {}).get("tasks") or {}).items():
                for name in (d.get("never_predicted") or {}).get(rule) or []:
                    never.setdefault(t, {}).setdefault(name, 0)
                    never[t][name] += 1
        out[rule] = {
            "avg_macro_f1": _stats([((b or {}).get("averages") or {}).get(rule) for b in blocks]),
            "tasks": {t: _stats([(((b or {}).get("tasks") or {}).get(t, {}).get("macro_f1") or {}).get(rule)
                                 for b in blocks]) for t in tasks},
            "never_predicted": never,
        }
    return out


def _by_seed(runs: Sequence[RunRecord], value: Any) -> dict[Any, float | None]:
    """``{seed: value(run)}``; two runs of one configuration with the same seed cannot be paired (refused)."""
    out: dict[Any, float | None] = {}
    for r in runs:
        if r.seed in out:
            twins = [str(x.path) for x in runs if x.seed == r.seed]
            raise RunReadError(f"two runs of one configuration have seed {r.seed} ({', '.join(twins)}): paired "
                               "differences need one run per seed; remove one or report them separately")
        v = value(r)
        out[r.seed] = float(v) if v is not None else None
    return out


def _rule_avg(r: RunRecord, rule: str) -> Any:
    return ((r.metrics.get("decision") or {}).get("averages") or {}).get(rule)


def find_baseline(groups: Sequence[ConfigGroup], spec: str) -> ConfigGroup:
    """The one group whose runs all have config ``KEY=VALUE`` (``spec``), or, when ``spec`` is the directory of
    one of the runs, that run's group (the configuration every setting of which is the baseline's, where no
    single key singles it out); none or several is a ValueError."""
    key, sep, value = spec.partition("=")
    if not sep and Path(spec).expanduser().is_dir():
        target = Path(spec).expanduser().resolve()
        owners = [g for g in groups if any(Path(r.path).resolve() == target for r in g.runs)]
        if not owners:
            raise ValueError(f"--baseline {spec}: no finished run of this report is in that directory (give the "
                             "folder of one run, holding its metrics.json, among the reported paths)")
        return owners[0]
    if not sep or not key.strip():
        raise ValueError(f"--baseline expects KEY=VALUE (e.g. loss.name=ce) or a run directory, got {spec!r}")
    key, value = key.strip(), value.strip()
    hits = [g for g in groups if all(_config_value(r.config, key) == value for r in g.runs)]
    if len(hits) != 1:
        shown = "; ".join(g.label for g in hits) if hits else "none"
        raise ValueError(f"--baseline {spec}: {len(hits)} configurations match ({shown}); it must select exactly "
                         "one (add --ignore for keys that should not split it, or a more specific KEY=VALUE)")
    return hits[0]


def paired_against(group: ConfigGroup, base: ConfigGroup, tasks: Sequence[str]) -> dict[str, Any]:
    """Paired differences (over shared seeds) of ``group`` against ``base``: the run's average and each
    task's macro-F1, and each decision rule's average against the baseline's plain argmax average."""
    def task_f1(t: str) -> Any:
        return lambda r: _own_task_f1(r, t)

    def avg(r: RunRecord) -> Any:
        return r.metrics.get("avg_macro_f1")

    base_argmax = _by_seed(base.runs, lambda r: _rule_avg(r, "argmax") if _rule_avg(r, "argmax") is not None
                           else avg(r))
    out: dict[str, Any] = {
        "baseline": base.label,
        "average": paired_difference(_by_seed(group.runs, avg), _by_seed(base.runs, avg)),
        "tasks": {t: paired_difference(_by_seed(group.runs, task_f1(t)), _by_seed(base.runs, task_f1(t)))
                  for t in tasks},
        "rules": {},
    }
    for rule in REPORTED_RULES:
        mine = _by_seed(group.runs, lambda r, rule=rule: _rule_avg(r, rule))
        if any(v is not None for v in mine.values()):
            out["rules"][rule] = paired_difference(mine, base_argmax)
    return out


#: ``--baseline single_task``: the single-task runs, combined per seed, against every multi-task group
SINGLE_TASK = "single_task"
#: keys in which a task's single-task run may differ from the others' (its task, its steps)
_SINGLE_TASK_FREE = ("tasks", "tasks.*", "trainer.max_steps", "trainer.max_epochs", "trainer.eval_every")


def single_task_baseline(runs: Sequence[RunRecord], ignore: Sequence[str]) -> dict[str, Any]:
    """The single-task runs (one task each) as one baseline: ``{"tasks": [...], "by_seed": {seed: {task:
    run}}, "label"}``. Refused (:class:`RunReadError`) when they differ in a setting other than their task
    and step counts, or a seed lacks a task's run or has two."""
    single = [r for r in runs if len(r.tasks) == 1]
    if not single:
        raise RunReadError("--baseline single_task: no single-task runs (one task each) among these runs; "
                           "train them with e.g. mtl-train -m experiment=quickstart_single_task tasks=ocnli,ocemotion,tnews")
    patterns = (*ignore, *_SINGLE_TASK_FREE)
    ref = {k: v for k, v in single[0].config.items() if not _ignored(k, patterns)}
    for r in single[1:]:
        cfg = {k: v for k, v in r.config.items() if not _ignored(k, patterns)}
        diff = sorted(k for k in set(ref) | set(cfg) if _config_value(ref, k) != _config_value(cfg, k))
        if diff:
            raise RunReadError(f"--baseline single_task: the single-task runs {single[0].path} and {r.path} differ in "
                               f"{', '.join(diff[:6])}: report such runs separately (they would be mixed)")
    tasks = sorted({r.tasks[0] for r in single})
    by_seed: dict[Any, dict[str, RunRecord]] = {}
    for r in single:
        slot = by_seed.setdefault(r.seed, {})
        if r.tasks[0] in slot:
            raise RunReadError(f"--baseline single_task: two single-task runs of {r.tasks[0]} with seed {r.seed} "
                               f"({slot[r.tasks[0]].path}, {r.path})")
        slot[r.tasks[0]] = r
    steps = sorted({str(r.config.get("trainer.max_steps")) for r in single})
    return {"tasks": tasks, "by_seed": by_seed, "label": f"single-task runs ({', '.join(tasks)}; steps {', '.join(steps)})"}


def _dev_se(r: RunRecord) -> float | None:
    """The bootstrap standard error of a run's average dev macro-F1 (argmax predictions of its best
    checkpoint, :mod:`mtl.evaluation.bootstrap`); None without ``dev_predictions.json``."""
    try:
        out = run_dev_standard_errors(r.path)
    except ValueError as err:
        log.warning("%s", err)
        return None
    return None if out is None else out["average"]


def _task_f1(r: RunRecord, task: str, rule: str = "argmax") -> Any:
    if rule == "argmax":
        return ((r.metrics.get("tasks") or {}).get(task) or {}).get("macro_f1")
    d = (((r.metrics.get("decision") or {}).get("tasks") or {}).get(task) or {}).get("macro_f1") or {}
    return d.get(rule)


def _own_rule(r: RunRecord) -> str:
    """The decision rule a run's ``avg_macro_f1`` is scored with (argmax for runs from before the rules)."""
    return (r.metrics.get("decision") or {}).get("rule") or "argmax"


def _own_task_f1(r: RunRecord, task: str) -> Any:
    """A task's macro-F1 under the run's own decision rule, the rule its ``avg_macro_f1`` is scored with
    (``metrics.json``'s ``tasks`` block holds the argmax scores whatever the rule)."""
    value = _task_f1(r, task, _own_rule(r))
    return _task_f1(r, task) if value is None else value


def paired_against_single_task(group: ConfigGroup, base: Mapping[str, Any]) -> dict[str, Any] | None:
    """A multi-task group against the single-task runs with the same seeds: per task and on the average of
    the tasks (each decision rule on both sides alike; ``average`` and ``tasks`` under the group's own rule,
    the one its score is reported with). None for a group whose tasks are not all covered."""
    tasks = list(dict.fromkeys(t for r in group.runs for t in r.tasks))
    if len(tasks) < 2 or not set(tasks) <= set(base["tasks"]):
        return None
    _by_seed(group.runs, lambda r: r.metrics.get("avg_macro_f1"))  # refuses two runs with one seed
    complete = {s: runs for s, runs in base["by_seed"].items() if set(tasks) <= set(runs)}

    def single(task: str, rule: str) -> dict[Any, Any]:
        return {s: _task_f1(runs[task], task, rule) for s, runs in complete.items()}

    def average(value: Any) -> dict[Any, Any]:
        out = {}
        for seed, vals in value.items():
            out[seed] = None if any(v is None for v in vals) else sum(vals) / len(vals)
        return out

    out: dict[str, Any] = {"baseline": base["label"], "tasks": {}, "rules": {}}
    for rule in REPORTED_RULES:
        group_avg = average({r.seed: [_task_f1(r, t, rule) for t in tasks] for r in group.runs})
        base_avg = average({s: [single(t, rule)[s] for t in tasks] for s in complete})
        if any(v is not None for v in group_avg.values()) and any(v is not None for v in base_avg.values()):
            out["rules"][rule] = paired_difference(group_avg, base_avg)
    own = {_own_rule(r) for r in group.runs}
    rule = own.pop() if len(own) == 1 else "argmax"
    if rule not in out["rules"]:
        rule = "argmax"
    out["rule"] = rule
    out["average"] = out["rules"].get(rule) or paired_difference({}, {})
    for t in tasks:
        out["tasks"][t] = paired_difference(_by_seed(group.runs, lambda r, t=t: _task_f1(r, t, rule)), single(t, rule))
    return out


def build_report(
    paths: Sequence[str | Path], ignore: Sequence[str] = IGNORED_KEYS, metric: str = "avg_macro_f1",
    baseline: str | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as a JSON-able dict (groups sorted by mean ``metric``, best first).

    ``baseline`` (``KEY=VALUE``): every group also gets its paired differences over shared seeds against
    the group it selects (:func:`paired_against`, :mod:`mtl.evaluation.paired`)."""
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
            "tasks": {t: _stats([_own_task_f1(r, t) for r in rs]) for t in tasks},
            "samples_per_second": _stats([r.metrics.get("samples_per_second") for r in rs]),
            "wall_seconds": _stats([r.metrics.get("wall_seconds") for r in rs]),
            "best_step": _stats([r.metrics.get("best_step") for r in rs]),
            # the dev sample's share of the noise: each run's bootstrap standard error of its average
            "dev_standard_error": _stats([_dev_se(r) for r in rs]),
            "runs": [str(r.path) for r in rs],
            "decision": _decision_stats(rs, tasks),
        }
        rows.append(row)
    if baseline == SINGLE_TASK:
        st = single_task_baseline(runs, ignore)
        for g, row in zip(groups, rows, strict=True):
            paired = paired_against_single_task(g, st)
            row["is_baseline"] = paired is None and all(len(r.tasks) == 1 for r in g.runs)
            if paired is not None:
                row["paired"] = paired
    elif baseline is not None:
        base = find_baseline(groups, baseline)
        base_key = dict(base.key)
        for g, row in zip(groups, rows, strict=True):
            row["paired"] = paired_against(g, base, tasks)
            row["is_baseline"] = g is base
            # what sets this group apart from the baseline: the label of the paired table and plot
            row["vs_baseline"] = _label([(k, v) for k, v in g.key if base_key.get(k) != v]) if g is not base else "(baseline)"
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
        "baseline": baseline,
        "groups": rows,
    }


def _mean(s: Mapping[str, Any], digits: int = 4) -> str:
    return "–" if s.get("mean") is None else f"{s['mean']:.{digits}f}"


def _pm(s: Mapping[str, Any], digits: int = 4) -> str:
    if s.get("mean") is None:
        return "–"
    if s["n"] > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def markdown_table(report: Mapping[str, Any]) -> str:
    tasks = report["tasks"]
    head = ["configuration", "runs", "seeds", "avg macro-F1", *[f"{t} F1" for t in tasks], "dev SE", "samples/s",
            "min/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in report["groups"]:
        wall = row["wall_seconds"]
        cells = [
            row["label"].replace("|", "\\|"),
            str(row["n"]),
            ",".join(str(s) for s in row["seeds"]),
            "**" + _pm(row["avg_macro_f1"]) + "**",
            *[_pm(row["tasks"][t]) for t in tasks],
            _mean(row.get("dev_standard_error") or {}),
            _pm(row["samples_per_second"], 1),
            f"{wall['mean'] / 60:.1f}" if wall.get("mean") is not None else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def decision_table(report: Mapping[str, Any]) -> str:
    """Each group under each decision rule: average and per-task macro-F1, and the classes that some run
    never predicts on dev (``name×k``: in k runs). Empty when no run scored the rules."""
    tasks = report["tasks"]
    rows = [r for r in report["groups"] if r.get("decision")]
    if not rows:
        return ""
    head = ["configuration", "decision rule", "avg macro-F1", *[f"{t} F1" for t in tasks], "never predicted (runs)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(tasks) + 1) + ["---"]) + "|"]
    for row in rows:
        for rule, d in row["decision"].items():
            if d["avg_macro_f1"].get("mean") is None:
                continue
            never = "; ".join(
                f"{t}: " + ", ".join(f"{c}×{k}" for c, k in names.items()) for t, names in d["never_predicted"].items()
            ) or "none"
            name = rule + (" (cross-fitted)" if rule == "tuned_biases" else "")
            cells = [row["label"].replace("|", "\\|"), name, _pm(d["avg_macro_f1"]),
                     *[_pm(d["tasks"][t]) for t in tasks], never]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ci(d: Mapping[str, Any], digits: int = 4) -> str:
    if d.get("mean") is None:
        return "–"
    if d.get("low") is None:
        return f"{d['mean']:+.{digits}f} (n={d['n']})"
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def _paired_label(row: Mapping[str, Any]) -> str:
    """A group in the paired table and plot: what differs from the baseline group (``KEY=VALUE`` or run-dir
    baselines), else its label."""
    return row.get("vs_baseline") or row["label"]


def paired_table(report: Mapping[str, Any]) -> str:
    """Each group against the baseline: paired difference of the average and per task (95 % t interval
    over shared seeds) with its verdict; then each decision rule's average against the baseline's argmax."""
    rows = [r for r in report["groups"] if r.get("paired")]
    if not rows:
        return ""
    tasks = report["tasks"]
    head = ["configuration", "seeds", "Δ avg macro-F1 [95% CI]", "verdict", *[f"Δ {t}" for t in tasks]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---:", "---:", "---"] + ["---:"] * len(tasks)) + "|"]
    for row in rows:
        if row.get("is_baseline"):
            continue
        p = row["paired"]
        cells = [_paired_label(row).replace("|", "\\|"), str(p["average"]["n"]), _ci(p["average"]), p["average"]["verdict"],
                 *[_ci(p["tasks"][t], 3) if t in p["tasks"] else "–" for t in tasks]]
        lines.append("| " + " | ".join(cells) + " |")
    rule_rows = [(row, rule, d) for row in rows for rule, d in row["paired"]["rules"].items()
                 if not (row.get("is_baseline") and rule == "argmax")]
    if rule_rows:
        against = ("single-task runs, same rule" if report.get("baseline") == SINGLE_TASK else "baseline argmax")
        lines += ["", f"| configuration | decision rule | seeds | Δ avg vs {against} [95% CI] | verdict |",
                  "|---|---|---:|---:|---|"]
        for row, rule, d in rule_rows:
            name = rule + (" (cross-fitted)" if rule == "tuned_biases" else "")
            lines.append(f"| {_paired_label(row).replace('|', chr(92) + '|')} | {name} | {d['n']} | {_ci(d)} | {d['verdict']} |")
    return "\n".join(lines)


def to_markdown(report: Mapping[str, Any], plot: str | None = None) -> str:
    parts = [
        "# Run comparison",
        "",
        f"{report['n_runs']} runs from {', '.join(report['paths'])}, grouped by configuration "
        f"({len(report['groups'])} groups); mean ± sample std over the runs (seeds) of each group, "
        "dev macro-F1 of each run's best checkpoint. dev SE: the bootstrap standard error of a run's average "
        "from its dev sample alone (1,000 resamples of its dev rows, argmax predictions), averaged over the runs.",
    ]
    if report["common"]:
        parts += ["", "Common settings: " + ", ".join(f"`{k}={v}`" for k, v in report["common"].items())]
    parts += ["", markdown_table(report)]
    paired = paired_table(report)
    if paired:
        parts += [
            "", f"## Paired differences against `{report['baseline']}`", "",
            ("Per seed, each multi-task configuration's per-task macro-F1 minus that task's single-task run with the "
             "same seed, and its average of the tasks minus the average of the single-task runs, both sides under "
             "the configuration's own decision rule; "
             if report.get("baseline") == SINGLE_TASK else
             "Per seed, this configuration's score minus the baseline's with the same seed; ")
            + "mean and 95 % Student-t interval over the shared seeds (paired t). *better*/*worse*: the interval "
            "excludes 0.",
            "", paired,
        ]
        if (report.get("files") or {}).get("paired_plot"):
            parts += ["", f"![paired differences]({Path(report['files']['paired_plot']).name})"]
    rules = decision_table(report)
    if rules:
        parts += [
            "", "## Decision rules", "",
            "The same runs' best checkpoints under each decision rule (every run scores all of them on dev). "
            "`tuned_biases` is two-fold cross-fitted: per-class biases tuned on one half of dev score the other half.",
            "", rules,
        ]
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


def _wrap(text: str, width: int = 48) -> str:
    """A plot label broken into lines of at most ``width`` characters (at ", " and spaces)."""
    import textwrap

    return "\n".join(textwrap.fill(part, width) for part in text.split("\n"))


def plot_paired(report: Mapping[str, Any], path: str | Path) -> Path | None:
    """Paired differences of the average against the baseline, one point per configuration (and per decision
    rule), 95 % interval as error bars; a line at 0. None when the report has no baseline."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = []
    for row in report["groups"]:
        for rule, d in (row.get("paired") or {}).get("rules", {}).items():
            if d.get("mean") is not None and not (row.get("is_baseline") and rule == "argmax"):
                items.append((f"{_wrap(_paired_label(row))}\n{rule}", d))
        if row.get("paired") and not (row["paired"].get("rules")) and not row.get("is_baseline"):
            items.append((_wrap(_paired_label(row)), row["paired"]["average"]))
    if not items:
        return None
    lines = sum(name.count("\n") + 1 for name, _ in items)
    fig = Figure(figsize=(9.0, 0.18 * lines + 0.2 * len(items) + 1.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (_, d) in enumerate(items):
        lo = d["mean"] - d["low"] if d.get("low") is not None else 0.0
        hi = d["high"] - d["mean"] if d.get("high") is not None else 0.0
        colour = {"better": "C2", "worse": "C3"}.get(d["verdict"], "C7")
        ax.errorbar(d["mean"], i, xerr=[[lo], [hi]], fmt="o", color=colour, capsize=3)
    ax.axvline(0.0, color="black", lw=1)
    ax.set_yticks(range(len(items)), [name for name, _ in items], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(_wrap(f"Δ dev avg macro-F1 vs {report['baseline']}, mean and 95 % paired-t interval", 90))
    ax.grid(axis="x", alpha=0.3)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def write_report(
    paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    ignore: Sequence[str] = IGNORED_KEYS,
    metric: str = "avg_macro_f1",
    baseline: str | None = None,
) -> dict[str, Any]:
    """Build the report and write ``report.md``, ``report.json`` and ``report.png`` into ``out_dir``
    (default: the first path). Returns the report dict with ``files``."""
    report = build_report(paths, ignore, metric, baseline)
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
    if baseline is not None:
        try:
            paired_png = plot_paired(report, out / "report_paired.png")
            if paired_png is not None:
                report["files"]["paired_plot"] = str(paired_png)
        except Exception as exc:  # noqa: BLE001 - the table matters more than the figure
            report["plot_error"] = f"{type(exc).__name__}: {exc}"
    files["markdown"].write_text(to_markdown(report, files["plot"].name if plot_ok else None), encoding="utf-8")
    files["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report

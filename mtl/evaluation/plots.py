"""PNG plots of one run, written into its run directory at the end of training.

* ``curves.png``: dev macro-F1 per task (and their average) and the training loss per task, over steps;
* ``balancer_weights.png``: the task weights in force at each logged step (+ gradient cosines when logged);
* ``sampler_proportions.png``: the realised share of steps per task, over training and at the end;
* ``confusion_matrices.png``: one confusion matrix per task on the dev set, from the best evaluation's
  predictions (``dev_predictions.json``);
* ``mlm_loss.png`` (``mtl-pretrain``'s folder): the MLM loss curve and the held-out loss before and after
  (:func:`plot_mlm_loss`, from ``pretrain_record.json``).

Everything is read from the run's own files (``train_log.csv``, ``eval_log.csv``, ``metrics.json``,
``dev_predictions.json``), so ``write_run_plots(run_dir)`` also re-draws the plots of a finished run; at the
end of training :func:`write_run_outputs` first writes ``dev_predictions.json`` from the best evaluation
the trainer kept (no model, no re-evaluation). Matplotlib's object API with the Agg canvas is used
directly: no pyplot state, no display needed, the caller's backend is left alone.
A plot that cannot be drawn is skipped with a warning; it never fails the run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mtl.evaluation.results import EvalResult

log = logging.getLogger(__name__)

__all__ = [
    "plot_confusion_matrices",
    "plot_mlm_loss",
    "read_log",
    "write_dev_predictions",
    "write_run_outputs",
    "write_run_plots",
]


def read_log(path: str | Path) -> dict[str, np.ndarray]:
    """A ``*_log.csv`` as ``{column: float array}``; empty cells (a metric absent at a step) become NaN."""
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    columns: dict[str, list[float]] = {k: [] for k in rows[0]}
    for row in rows:
        for k in columns:
            v = row.get(k)
            try:
                columns[k].append(float(v) if v not in (None, "") else math.nan)
            except ValueError:
                columns[k].append(math.nan)
    return {k: np.asarray(v, dtype=float) for k, v in columns.items()}


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7.0, 4.0), **gridspec: Any):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=gridspec or None)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def _prefixed(columns: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in columns.items() if k.startswith(prefix)}


def _smooth(y: np.ndarray, k: int = 5) -> np.ndarray:
    if len(y) < k:
        return y
    kernel = np.ones(k) / k
    pad = np.concatenate([np.full(k - 1, y[0]), y])
    return np.convolve(pad, kernel, mode="valid")


def plot_mlm_loss(record: Mapping[str, Any], path: str | Path) -> Path | None:
    """``mtl-pretrain``'s loss curve (the mean MLM loss of every ``log_every`` steps) with the held-out loss
    before and after training as two points; None (nothing written) for a record without a curve. Re-draw a
    finished folder's: ``plot_mlm_loss(json.load(open("<folder>/pretrain_record.json")), "<folder>/mlm_loss.png")``.
    """
    curve = record.get("loss_curve") or []
    if not curve:
        return None
    fig, axes = _figure(size=(7.0, 4.0))
    ax = axes[0][0]
    steps = np.asarray([p["step"] for p in curve], dtype=float)
    ax.plot(steps, [float(p["loss"]) for p in curve], label="training MLM loss (mean of the logged steps)")
    held = record.get("heldout_mlm_loss") or {}
    end = float(steps[-1])
    for x, key, marker in ((0.0, "before", "o"), (end, "after", "s")):
        if held.get(key) is not None:
            ax.scatter([x], [float(held[key])], marker=marker, zorder=3, color="C1",
                       label=f"held-out {key}: {float(held[key]):.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("MLM loss (nats per masked token)")
    training = record.get("training") or {}
    ax.set_title(f"{(record.get('encoder') or {}).get('source', 'encoder')}: {training.get('steps', int(end))} "
                 f"steps of {training.get('batch_size', '?')} texts", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def _eval_history(run_dir: Path, metrics: Mapping[str, Any]) -> dict[str, np.ndarray]:
    history = metrics.get("history")
    if history:
        keys = list(dict.fromkeys(k for row in history for k in row))
        return {k: np.asarray([float(row.get(k, math.nan)) for row in history]) for k in keys}
    return read_log(run_dir / "eval_log.csv")


def plot_curves(run_dir: Path, metrics: Mapping[str, Any], tasks: Sequence[str]) -> Path | None:
    ev = _eval_history(run_dir, metrics)
    tr = read_log(run_dir / "train_log.csv")
    if not ev and not tr:
        return None
    fig, axes = _figure(1, 2, (11.0, 4.0))
    ax = axes[0][0]
    if ev and "step" in ev:
        for t in tasks:
            if f"{t}/macro_f1" in ev:
                ax.plot(ev["step"], ev[f"{t}/macro_f1"], marker="o", label=t)
        rule = (metrics.get("decision") or {}).get("rule", "argmax")
        if "avg_macro_f1" in ev:
            label = "average" if rule == "argmax" else f"average ({rule})"
            ax.plot(ev["step"], ev["avg_macro_f1"], marker="s", color="black", lw=2, label=label)
        for other, style in (("argmax", "-"), ("logit_adjusted", "--"), ("tuned_biases", ":")):
            if other != rule and f"avg_macro_f1/{other}" in ev:  # the other decision rules, side by side
                ax.plot(ev["step"], ev[f"avg_macro_f1/{other}"], ls=style, color="dimgrey", lw=1.5,
                        label=f"average, {other}" + (" (cross-fitted)" if other == "tuned_biases" else ""))
        best = metrics.get("best_step")
        if best is not None:
            ax.axvline(float(best), color="grey", ls=":", lw=1, label=f"best (step {best})")
    ax.set(title="dev macro-F1", xlabel="step", ylabel="macro-F1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[0][1]
    if tr and "step" in tr:
        for t, y in _prefixed(tr, "loss/").items():
            ok = np.isfinite(y)
            if not ok.any():
                continue
            x, y = tr["step"][ok], y[ok]
            (line,) = ax.plot(x, y, lw=0.8, alpha=0.35)
            ax.plot(x, _smooth(y), lw=1.8, color=line.get_color(), label=t)
    ax.set(title="training loss (logged steps; thick: 5-point mean)", xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, run_dir / "curves.png")


def plot_balancer_weights(run_dir: Path, metrics: Mapping[str, Any]) -> Path | None:
    tr = read_log(run_dir / "train_log.csv")
    weights = _prefixed(tr, "weight/")
    if not weights or "step" not in tr:
        return None
    cosines = _prefixed(tr, "cos/")
    fig, axes = _figure(1, 2 if cosines else 1, (11.0 if cosines else 6.5, 4.0))
    name = (metrics.get("balancer") or {}).get("name", "?")
    ax = axes[0][0]
    for t, y in weights.items():
        ok = np.isfinite(y)
        ax.plot(tr["step"][ok], y[ok], label=t)
    ax.set(title=f"task weights (balancer={name})", xlabel="step", ylabel="weight")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if cosines:
        ax = axes[0][1]
        for pair, y in cosines.items():
            ok = np.isfinite(y)
            ax.plot(tr["step"][ok], y[ok], lw=0.9, label=pair)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(title="cosine between task gradients", xlabel="step", ylabel="cosine")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, run_dir / "balancer_weights.png")


def plot_sampler_proportions(run_dir: Path, metrics: Mapping[str, Any]) -> Path | None:
    sampler = metrics.get("sampler") or {}
    final = sampler.get("proportions") or {}
    tr = read_log(run_dir / "train_log.csv")
    over_time = _prefixed(tr, "proportion/")
    if not final and not over_time:
        return None
    fig, axes = _figure(1, 2, (11.0, 4.0))
    ax = axes[0][0]
    if over_time and "step" in tr:
        for t, y in over_time.items():
            ok = np.isfinite(y)
            ax.plot(tr["step"][ok], y[ok], label=t)
        ax.legend(fontsize=8)
    ax.set(title="realised share of task batches so far", xlabel="step", ylabel="share", ylim=(0, 1.05))
    ax.grid(alpha=0.3)
    ax = axes[0][1]
    if final:
        names = list(final)
        ax.bar(names, [final[t] for t in names], color=[f"C{i}" for i in range(len(names))])
        counts = sampler.get("counts") or {}
        for i, t in enumerate(names):
            ax.text(i, final[t], f"{final[t]:.2f}\n({counts.get(t, '?')})", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, max(final.values()) * 1.25 + 1e-9)
    ax.set(title=f"final shares (sampler={sampler.get('name', '?')}; batch counts)", ylabel="share")
    return _save(fig, run_dir / "sampler_proportions.png")


def plot_confusion_matrices(
    path: str | Path,
    predictions: Mapping[str, tuple[Sequence[int], Sequence[int]]],
    label_names: Mapping[str, Sequence[str]],
    title: str = "",
) -> Path | None:
    """One panel per task: rows = true label, columns = predicted; cells show counts, colour = row share.
    Multi-label tasks (a list of label indices per row) have no confusion matrix and are left out."""
    from mtl.evaluation.metrics import confusion, task_scores

    tasks = [t for t in predictions
             if len(predictions[t][0]) and not isinstance(predictions[t][0][0], list | tuple)]
    if not tasks:
        return None
    sizes = [max(len(label_names.get(t) or []), 3) for t in tasks]
    width = sum(0.42 * n + 1.4 for n in sizes)
    height = 0.42 * max(sizes) + 2.4
    fig, axes = _figure(1, len(tasks), (max(width, 5.0), height), width_ratios=[n + 3 for n in sizes])
    for ax, t in zip(axes[0], tasks, strict=True):
        y_true, y_pred = predictions[t]
        names = list(label_names.get(t) or [])
        n = len(names) or int(max(max(y_true), max(y_pred)) + 1)
        names = names or [str(i) for i in range(n)]
        cm = confusion(y_true, y_pred, n)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        fontsize = 8 if n <= 8 else 6
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    colour = "white" if share[i, j] > 0.55 else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize, color=colour)
        ax.set_xticks(range(n), names, rotation=60 if n > 3 else 0, ha="right" if n > 3 else "center",
                      fontsize=fontsize)
        ax.set_yticks(range(n), names, fontsize=fontsize)
        f1 = task_scores(list(y_true), list(y_pred), n).macro_f1
        ax.set(title=f"{t} (macro-F1 {f1:.3f}, n={len(y_true)})", xlabel="predicted", ylabel="true")
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))


def write_run_plots(
    run_dir: str | Path,
    metrics: Mapping[str, Any] | None = None,
    predictions: Mapping[str, tuple[Sequence[int], Sequence[int]]] | None = None,
    label_names: Mapping[str, Sequence[str]] | None = None,
    predictions_step: int | None = None,
) -> list[Path]:
    """Draw every plot that the run's files allow; returns the written paths. Never raises.

    ``predictions``: ``{task: (true label indices, predicted indices)}`` on dev (the best checkpoint's);
    without it, ``dev_predictions.json`` in the run directory is used when present.
    """
    run_dir = Path(run_dir)
    written: list[Path] = []
    try:
        if metrics is None:
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("plots: cannot read %s: %s", run_dir / "metrics.json", exc)
        metrics = {}
    tasks = list(metrics.get("tasks") or {})
    if predictions is None and (run_dir / "dev_predictions.json").is_file():
        try:
            saved = json.loads((run_dir / "dev_predictions.json").read_text(encoding="utf-8"))
            predictions_step = saved.get("step")
            label_names = label_names or {t: d["label_names"] for t, d in saved["tasks"].items()}
            predictions = {t: (d["labels"], d["predictions"]) for t, d in saved["tasks"].items()}
        except (OSError, ValueError, KeyError) as exc:
            log.warning("plots: cannot read %s: %s", run_dir / "dev_predictions.json", exc)
    jobs: list[tuple[str, Any]] = [
        ("curves", lambda: plot_curves(run_dir, metrics, tasks)),
        ("balancer weights", lambda: plot_balancer_weights(run_dir, metrics)),
        ("sampler proportions", lambda: plot_sampler_proportions(run_dir, metrics)),
    ]
    tuned = _rule_predictions(run_dir, "tuned_biases")
    if tuned:
        jobs.append((
            "tuned-biases confusion matrices",
            lambda: plot_confusion_matrices(
                run_dir / "confusion_matrices_tuned_biases.png", tuned, label_names or {},
                "dev predictions with per-class biases tuned on the other half of dev (cross-fitted)",
            ),
        ))
    if predictions:
        where = f"dev predictions of the best checkpoint (step {predictions_step})" if predictions_step else ""
        jobs.append((
            "confusion matrices",
            lambda: plot_confusion_matrices(
                run_dir / "confusion_matrices.png", predictions, label_names or {}, where
            ),
        ))
    for what, job in jobs:
        try:
            path = job()
        except Exception as exc:  # noqa: BLE001 - a plot must never cost the run its results
            log.warning("could not draw the %s plot of %s: %s: %s", what, run_dir, type(exc).__name__, exc)
            continue
        if path is not None:
            written.append(path)
    if written:
        log.info("plots: %s", ", ".join(p.name for p in written))
    return written


def _rule_predictions(run_dir: Path, rule: str) -> dict[str, tuple[list[int], list[int]]]:
    """``{task: (labels, predictions of rule)}`` from ``dev_predictions.json`` (empty when it has none)."""
    path = run_dir / "dev_predictions.json"
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return {t: (d["labels"], d["by_rule"][rule]) for t, d in saved["tasks"].items() if rule in d.get("by_rule", {})}
    except (OSError, ValueError, KeyError) as exc:
        log.warning("plots: cannot read %s: %s", path, exc)
        return {}


def _by_rule(best: EvalResult, task: str) -> dict[str, Any]:
    """``{"by_rule": {rule: predictions}}`` of the decision rules other than argmax (``{}`` when none)."""
    kept = ((best.decisions.get(task) or {}).get("predictions") or {}).items()
    rules = {r: list(v) for r, v in kept if r != "argmax"}
    return {"by_rule": rules} if rules else {}


def write_dev_predictions(
    run_dir: str | Path, best: EvalResult, label_names: Mapping[str, Sequence[str]]
) -> dict[str, tuple[list[int], list[int]]]:
    """Write ``dev_predictions.json`` of the best evaluation; returns ``{task: (labels, predictions)}``.

    The file: ``{"step": ..., "tasks": {task: {"label_names": [...], "labels": [...], "predictions": [...],
    "by_rule": {rule: [...]}}}}``: ``predictions`` are argmax's; ``by_rule`` the other decision rules'
    (``tuned_biases``: the out-of-fold, cross-fitted predictions). An evaluation that kept no predictions
    writes nothing (and returns ``{}``).
    """
    from mtl.utils.files import write_json

    predictions = {t: (list(best.labels[t]), list(best.predictions[t])) for t in best.predictions}
    if not predictions:
        return {}
    write_json(
        Path(run_dir) / "dev_predictions.json",
        {
            "step": best.step,
            "tasks": {
                t: {"label_names": list(label_names.get(t) or []), "labels": y, "predictions": p,
                    **_by_rule(best, t)}
                for t, (y, p) in predictions.items()
            },
        },
    )
    return predictions


def write_run_outputs(
    run_dir: str | Path,
    metrics: Mapping[str, Any],
    label_names: Mapping[str, Sequence[str]],
    best: EvalResult | None,
) -> list[Path]:
    """End of a run: the best evaluation's dev predictions (``dev_predictions.json``) and every plot.

    ``best``: the best dev evaluation, with the predictions and labels it kept (the confusion matrices);
    nothing is re-evaluated. Never raises: a failure is a warning in the log, and the run's metrics are
    already written.
    """
    run_dir = Path(run_dir)
    predictions = None
    step = None
    try:
        if best is None or not best.predictions:
            log.warning("no predictions of the best dev evaluation: no dev_predictions.json, no confusion matrices")
        else:
            predictions = write_dev_predictions(run_dir, best, label_names)
            step = best.step
    except Exception as exc:  # noqa: BLE001 - never lose a finished run over its plots
        log.warning("could not write the best evaluation's dev predictions: %s: %s", type(exc).__name__, exc)
        predictions, step = None, None
    try:
        return write_run_plots(run_dir, metrics, predictions or None, label_names, step)
    except Exception as exc:  # noqa: BLE001 - write_run_plots catches per plot; this is a last guard
        log.warning("could not draw the plots of %s: %s: %s", run_dir, type(exc).__name__, exc)
        return []

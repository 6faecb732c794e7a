#!/usr/bin/env python
"""Train every registered loss balancer under one fixed protocol and tabulate dev macro-F1 and step cost.

Every balancer config in ``mtl/conf/balancer/`` is trained with the same seed, data slice, encoder,
number of steps and ``sampler=all_tasks`` (one batch of every task per step, which the gradient
methods need), so the methods differ only in how they weight the tasks. Per balancer, one run
directory ``<out>/runs/<balancer>/`` holds what ``mtl.training.run.run`` writes; the script then
writes ``<out>/results.json`` and ``<out>/results.md`` (per-task and average dev macro-F1, and the
training time per step relative to ``equal``), rewritten after every run so partial results are
visible while the comparison is under way.

The default protocol is sized for a 2-core CPU (about 35-40 minutes for all 21 balancers at ~1.1 s
per step; longer when other jobs share the cores):

    multilingual-e5-small (embedded), first 4 of its 12 layers, input embeddings frozen,
    max_length 64, batch 16 per task (48 sequences per step), 70 steps, AdamW lr 1e-4
    (heads 2e-3), 6 % warm-up, group_by_length, 1500 train / 300 dev examples per task
    (label-stratified, seeded), seed 42, one evaluation at the end, 1 torch thread.

Balancers that need arguments get them here: ``primary_auxiliary`` with ``balancer.primary=ocnli``,
``torchjd`` with ``balancer.aggregator=UPGrad``; all others run with their config defaults
(gradient methods on their default ``source``).

Usage::

    MTL_DATA_DIR=../shared/data/raw python scripts/compare_balancers.py            # all balancers
    python scripts/compare_balancers.py --balancers equal,mgda_ub,pcgrad --steps 40
    python scripts/compare_balancers.py --skip-existing        # resume: keep finished runs
    python scripts/compare_balancers.py --extra optim.lr=5e-5 trainer.precision=bf16

``--skip-existing`` keeps a run whose ``metrics.json`` exists and whose overrides equal this
invocation's; its step time then comes from the earlier invocation (marked ``reused`` in the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

DEFAULT_OUT = common.REPO / "outputs" / "compare_balancers"
WARMUP_STEPS = 3  # first steps of a run left out of its median step time

log = logging.getLogger("compare_balancers")


def available_balancers() -> list[str]:
    """Every option of the ``balancer`` config group, ``equal`` first (the reference for the step-time ratio)."""
    from mtl.config import group_options

    names = group_options("balancer")
    return sorted(names, key=lambda n: (n != "equal", n))


def protocol_overrides(args: argparse.Namespace) -> list[str]:
    """The Hydra overrides shared by every balancer's run (the comparison protocol)."""
    out = [
        f"encoder={args.encoder}",
        "sampler=all_tasks",
        f"seed={args.seed}",
        f"trainer.max_steps={args.steps}",
        f"trainer.eval_every={args.steps}",
        "trainer.progress=false",
        "trainer.save_best=false",
        f"data.max_train_per_task={args.train_per_task}",
        f"data.max_dev_per_task={args.dev_per_task}",
        f"data.batch_size={args.batch_size}",
        "data.group_by_length=true",
        f"encoder.max_length={args.max_length}",
        f"encoder.freeze_embeddings={str(not args.unfreeze_embeddings).lower()}",
        f"optim.lr={args.lr}",
        f"optim.head_lr={args.head_lr}",
        f"optim.warmup={args.warmup}",
    ]
    out += common.layers_override(args.encoder, args.layers)
    if args.data_root:
        out.append(f"data.root={Path(args.data_root).resolve()}")
    return out + list(args.extra or [])


# ----------------------------------------------------------------------------------------- running


def finished(name: str, base: list[str], run_dir: Path) -> bool:
    """``run_dir`` holds a finished run of ``name`` under exactly these overrides."""
    metrics_path, overrides_path = run_dir / "metrics.json", run_dir / "overrides.json"
    if not (metrics_path.exists() and overrides_path.exists()):
        return False
    same = json.loads(overrides_path.read_text(encoding="utf-8")) == base + common.balancer_overrides(name)
    if not same:
        log.info("%s: %s was run with other overrides; it will run again", name, run_dir)
    return same


def run_one(name: str, base: list[str], run_dir: Path, skip_existing: bool) -> dict[str, Any]:
    """Train balancer ``name`` into ``run_dir`` (or reuse a finished run); returns its result row."""
    overrides = base + common.balancer_overrides(name)
    metrics_path, overrides_path = run_dir / "metrics.json", run_dir / "overrides.json"
    if skip_existing and finished(name, base, run_dir):
        log.info("%s: reusing %s", name, metrics_path)
        times_path = run_dir / "step_times.json"
        times = json.loads(times_path.read_text(encoding="utf-8")) if times_path.exists() else None
        return summarise(name, json.loads(metrics_path.read_text(encoding="utf-8")), reused=True, step_times=times)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    overrides_path.write_text(json.dumps(overrides, indent=2), encoding="utf-8")

    from mtl.training.run import run

    cfg = common.compose(overrides)
    t0 = time.perf_counter()
    with step_timer() as times:
        metrics = run(cfg, run_dir)
    (run_dir / "step_times.json").write_text(json.dumps(times), encoding="utf-8")
    log.info("%s: done in %.0f s, dev average macro-F1 %.4f", name, time.perf_counter() - t0, metrics["avg_macro_f1"])
    return summarise(name, metrics, reused=False, step_times=times)


@contextlib.contextmanager
def step_timer() -> Iterator[list[float]]:
    """Record the duration of every ``Trainer.train_step`` while the block runs."""
    from mtl.training.trainer import Trainer

    original = Trainer.train_step
    times: list[float] = []

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            times.append(time.perf_counter() - t0)

    Trainer.train_step = timed  # type: ignore[method-assign]
    try:
        yield times
    finally:
        Trainer.train_step = original  # type: ignore[method-assign]


def summarise(name: str, metrics: dict[str, Any], reused: bool, step_times: list[float] | None = None) -> dict[str, Any]:
    from mtl.balancers import BALANCERS

    cls = BALANCERS.get(name)
    steps = max(int(metrics["steps"]), 1)
    # the median step (after the first few) resists load bursts better than the mean
    timed = step_times[WARMUP_STEPS:] if step_times and len(step_times) > WARMUP_STEPS else step_times
    median = statistics.median(timed) if timed else float(metrics["train_seconds"]) / steps
    return {
        "balancer": name,
        "level": "gradient" if cls.needs_gramian else "loss",
        "source": None,  # filled in from the run's config.yaml (add_source)
        "status": "ok",
        "reused": reused,
        "avg_macro_f1": float(metrics["avg_macro_f1"]),
        "macro_f1": {t: float(s["macro_f1"]) for t, s in metrics["tasks"].items()},
        "accuracy": {t: float(s["accuracy"]) for t, s in metrics["tasks"].items()},
        "steps": steps,
        "train_seconds": float(metrics["train_seconds"]),
        "step_seconds_mean": float(metrics["train_seconds"]) / steps,
        "step_seconds": median,
        "wall_seconds": float(metrics["wall_seconds"]),
        "last_weights": metrics.get("balancer", {}).get("last_weights", {}),
        "majority_macro_f1": metrics.get("majority_macro_f1", {}),
        "nonfinite_steps_skipped": int(metrics.get("nonfinite_steps_skipped", 0)),
    }


def add_source(row: dict[str, Any], run_dir: Path) -> None:
    """The gradient source actually used, read back from the run's resolved config."""
    if row.get("level") != "gradient":
        return
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(run_dir / "config.yaml")
        row["source"] = cfg.balancer.get("source") or row.get("source")
    except (OSError, ValueError):
        pass


def warm_up(args: argparse.Namespace, out: Path) -> None:
    """A throw-away 3-step ``equal`` run, so one-off process costs (lazy imports, allocator growth,
    first-call kernel selection) do not land in the first timed run and skew the step-time ratios."""
    tiny = argparse.Namespace(**{**vars(args), "steps": 3, "dev_per_task": 16})
    run_dir = out / "runs" / "_warmup"
    log.info("warm-up run (3 steps of equal, not reported)")
    try:
        from mtl.training.run import run

        run(common.compose(protocol_overrides(tiny) + common.balancer_overrides("equal")), run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------- reports


def finish_rows(rows: list[dict[str, Any]]) -> None:
    """Add each finished row's step time relative to ``equal``'s."""
    ref = next((r for r in rows if r["balancer"] == "equal" and r["status"] == "ok"), None)
    for r in rows:
        ok = ref is not None and r["status"] == "ok" and ref["step_seconds"] > 0
        r["relative_step_time"] = r["step_seconds"] / ref["step_seconds"] if ok else None


def _f(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]], tasks: list[str]) -> str:
    head = ["balancer", "level", "source", *[f"{t} F1" for t in tasks], "avg F1", "s/step", "× equal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: -r["avg_macro_f1"])
    for r in ok:
        name = f"**{r['balancer']}**" if r["balancer"] == "equal" else r["balancer"]
        cells = [name, r["level"], r["source"] or "–", *[_f(r["macro_f1"].get(t)) for t in tasks],
                 _f(r["avg_macro_f1"]), _f(r["step_seconds"], 2) + ("*" if r.get("reused") else ""),
                 _f(r["relative_step_time"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    majority = next((r["majority_macro_f1"] for r in ok if r.get("majority_macro_f1")), None)
    if majority:
        avg = sum(majority[t] for t in tasks) / len(tasks)
        cells = ["(majority class)", "", "", *[_f(majority.get(t)) for t in tasks], _f(avg), "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['balancer']} | failed: {r.get('error', '?')} |" + " |" * (len(head) - 2))
    return "\n".join(lines)


def write_reports(out: Path, rows: list[dict[str, Any]], protocol: list[str], args: argparse.Namespace) -> None:
    finish_rows(rows)
    tasks = list(common.TASKS)
    for r in rows:
        if r["status"] == "ok":
            tasks = list(r["macro_f1"])
            break
    command = args.command
    data = {
        "command": command,
        "protocol": {
            "overrides": protocol,
            "balancer_overrides": common.BALANCER_OVERRIDES,
            "encoder": args.encoder,
            "layers": args.layers or "all",
            "freeze_embeddings": not args.unfreeze_embeddings,
            "steps": args.steps,
            "seed": args.seed,
            "train_per_task": args.train_per_task,
            "dev_per_task": args.dev_per_task,
            "batch_size_per_task": args.batch_size,
            "max_length": args.max_length,
            "torch_threads": args.threads,
            "data_root": os.environ.get("MTL_DATA_DIR") or args.data_root,
        },
        "results": rows,
    }
    common.write_json(out / "results.json", data)
    md = [
        "# Balancer comparison",
        "",
        f"Command: `{command}`",
        "",
        "Protocol (Hydra overrides shared by every run): `" + " ".join(protocol) + "`; "
        + "; ".join(f"{k}: `{' '.join(v)}`" for k, v in common.BALANCER_OVERRIDES.items()) + ".",
        "",
        "Dev macro-F1 at the last step; `s/step` is each run's median training-step time "
        f"(`Trainer.train_step`: engine + clip + optimiser step; first {WARMUP_STEPS} steps left out), "
        "`× equal` that time over `equal`'s. Runs are timed one after the other, so a change in "
        "machine load between runs shows up in this column; scripts/bench_balancers.py interleaves "
        "the methods step by step for cost figures.",
        "",
        markdown_table(rows, tasks),
        "",
    ]
    if any(r.get("reused") for r in rows):
        md += ["\\* reused from an earlier invocation (`--skip-existing`): timed under other load.", ""]
    (out / "results.md").write_text("\n".join(md), encoding="utf-8")


# ----------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.make_parser(__doc__.split("\n\n")[0])
    common.add_protocol_args(p, steps=70, layers=4, out=str(DEFAULT_OUT),
                             steps_help="training steps per run (default 70)",
                             out_help="output folder (default outputs/compare_balancers)",
                             data_root_help="data.root (MTL_DATA_DIR, when set, still wins)")
    p.add_argument("--balancers", default="all", help="comma-separated names, or 'all' (default)")
    p.add_argument("--train-per-task", type=int, default=1500)
    p.add_argument("--dev-per-task", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-4, help="encoder lr (default 1e-4)")
    p.add_argument("--head-lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=float, default=0.06)
    p.add_argument("--skip-existing", action="store_true", help="keep finished runs with the same overrides")
    p.add_argument("--no-warmup-run", action="store_true", help="skip the untimed 3-step warm-up run")
    args = p.parse_args(argv)
    args.command = common.command_line(__file__, argv)  # for the reports: how to rerun this comparison
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with common.torch_threads(args.threads):
        return compare(args)


def compare(args: argparse.Namespace) -> int:
    names = available_balancers()
    if args.balancers != "all":
        wanted = [n.strip() for n in args.balancers.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"unknown balancers {unknown}; available: {', '.join(names)}")
        names = sorted(wanted, key=lambda n: (n != "equal", names.index(n)))
    out = Path(args.out)
    base = protocol_overrides(args)
    common.compose(base + common.balancer_overrides(names[0]))  # fail fast on a bad override
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    pending = [n for n in names if not (args.skip_existing and finished(n, base, out / "runs" / n))]
    if pending and not args.no_warmup_run:
        warm_up(args, out)
    for i, name in enumerate(names, 1):
        log.info("[%d/%d] %s", i, len(names), name)
        run_dir = out / "runs" / name
        try:
            row = run_one(name, base, run_dir, args.skip_existing)
            add_source(row, run_dir)
        except Exception as exc:  # one failing method must not stop a 40-minute comparison
            log.error("%s failed:\n%s", name, traceback.format_exc())
            row = {"balancer": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append(row)
        write_reports(out, rows, base, args)
    log.info("all %d runs done in %.1f min; results in %s", len(names), (time.perf_counter() - t0) / 60, out)
    print((out / "results.md").read_text(encoding="utf-8"))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

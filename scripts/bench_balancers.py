#!/usr/bin/env python
"""Cost of the gradient balancers: one full training step relative to an ``equal`` step.

What is timed is ``Trainer.train_step`` (sampler draw, gradient engine, gradient clipping,
optimiser and scheduler step) of one ``Trainer`` per method (its own balancer and optimiser), all
on the same model, the same ``all_tasks`` sampler and the same batches, in one process. The
interleaving is per step, because the load of a shared machine drifts within minutes: after
``--warmup`` untimed steps of every method, each *sweep* runs one step of every method (order
rotated from sweep to sweep) on the same batches and dropout seed, with an ``equal`` step first,
last and after every ``--equal-every`` methods. Each step's ratio is its time over ``equal``'s
time interpolated between the nearest ``equal`` steps before and after it; a method's figure is
the median of its ratios (with the inter-quartile range). ``equal#2``, a second ``equal``
trainer timed like the methods, shows the noise floor. (The shared model drifts as every method
steps it; that changes no cost.) Every method keeps its optimiser state: about 8 bytes per
trainable parameter each (170 MB for e5-small with frozen embeddings, 0.94 GB unfrozen).

By default every registered method is timed, on every source it supports: the loss-level methods
(``--loss``), the gradient methods on the representation (``--representation``) and on the parameters
(``--parameters``; ``mgda_ub`` is ``mgda`` with the other default source, so each is timed on its own
source only). Targets (issue 14): a loss-level method at most 1.05x equal; a gradient method at most
1.05x equal on the representation (one backward through the encoder, MGDA-UB style) and 1.15x on the
parameters (per-task gradients on all shared parameters).

Per method the JSON also splits the median step into the gradient engine (forward, backward(s),
Gramian, balancer), the balancer's ``compute`` (an aggregator's ``aggregate``) alone (the solver) and the
rest (clip + optimiser + scheduler), and gives the memory a method adds: the parameters-mode Jacobian
buffer and the balancer's own state (MoCo's tracked gradients, ExcessMTL's statistics: ``T x P`` on the
parameters), and on a GPU the peak memory of a step above what was allocated before it.

Every method keeps its own optimiser state (about 8 bytes per trainable parameter, 170 MB for e5-small
with frozen embeddings) and, on the parameters, its own Jacobian buffer (258 MB): the full default list
needs about 14 GB of memory there; pass shorter lists to split the run.

Usage::

    MTL_DATA_DIR=../shared/data/raw python scripts/bench_balancers.py            # e5_small, 12 layers
    python scripts/bench_balancers.py --unfreeze-embeddings --out outputs/bench/balancers_unfrozen.json
    python scripts/bench_balancers.py --loss '' --representation mgda_ub,pcgrad --parameters mgda --steps 5

Data: the real task files when found (``--data-root``, else ``MTL_DATA_DIR``, ``data/`` or
``../shared/data/raw``), otherwise synthetic fixture files written to a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

DEFAULT_OUT = common.BENCH_DIR / "balancers.json"

ALL = "all"  # the default of --loss/--representation/--parameters: every registered method that supports it
#: the same solver under two names with different default sources: each is timed on its own source only
SAME_SOLVER = {"representation": {"mgda"}, "parameters": {"mgda_ub"}}
TARGETS = {"loss": 1.05, "representation": 1.05, "parameters": 1.15}  # x an equal step (issue 14)

log = logging.getLogger("bench_balancers")


# ----------------------------------------------------------------------------------------- setup


class ReplayStream:
    """Hands out a fixed list of collated batches in order (cycling), like ``TaskStream.next``."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches, self.i = batches, 0

    def next(self) -> dict[str, Any]:
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b


class Method:
    """One timed entry: ``kind`` is ``control`` (the ``equal`` references), loss, representation or parameters."""

    def __init__(self, label: str, balancer: str, source: str | None, kind: str = "control") -> None:
        self.label, self.balancer, self.source, self.kind = label, balancer, source, kind

    @property
    def overrides(self) -> list[str]:
        out = common.balancer_overrides(self.balancer)
        return out + ([f"balancer.source={self.source}"] if self.source else [])


def registered(kind: str) -> list[str]:
    """Every registered method timed as ``kind`` (loss | representation | parameters), registry order."""
    from mtl.balancers import BALANCERS

    out = []
    for name in BALANCERS.names():
        cls = BALANCERS.get(name)
        if not cls.__module__.startswith("mtl.") or name == "equal":
            continue
        if kind == "loss":
            if not cls.needs_gramian:
                out.append(name)
        elif cls.needs_gramian and name not in SAME_SOLVER[kind] and kind in getattr(cls, "sources", (kind,)):
            out.append(name)
    return out


def methods_from(args: argparse.Namespace) -> list[Method]:
    out = [Method("equal", "equal", None)]
    if not args.no_control:
        out.append(Method("equal#2", "equal", None))
    for kind in ("loss", "representation", "parameters"):
        names = getattr(args, kind)
        chosen = registered(kind) if names == ALL else [x.strip() for x in names.split(",") if x.strip()]
        for n in chosen:
            out.append(Method(f"{n}@{kind}", n, None if kind == "loss" else kind, kind))
    return out


def base_overrides(args: argparse.Namespace, data_root: Path) -> list[str]:
    out = [
        f"encoder={args.encoder}",
        "sampler=all_tasks",
        f"seed={args.seed}",
        f"data.root={data_root}",
        f"data.batch_size={args.batch_size}",
        f"data.max_train_per_task={args.batch_size * (args.warmup + args.steps)}",
        "data.max_dev_per_task=8",
        f"encoder.max_length={args.max_length}",
        f"encoder.freeze_embeddings={str(not args.unfreeze_embeddings).lower()}",
        "trainer.progress=false",
        "trainer.device=cpu" if args.device == "cpu" else f"trainer.device={args.device}",
    ]
    return out + common.layers_override(args.encoder, args.layers) + list(args.extra or [])


def build_model(cfg) -> tuple[Any, Any, dict[str, list[dict[str, Any]]]]:
    """Encoder + heads and the tokenised training rows of every task (``run()``'s build steps)."""
    from mtl.training.build import build_data, build_encoder, build_model

    encoder, tokenizer = build_encoder(cfg.encoder)
    data = build_data(cfg, tokenizer, with_dev=False)
    rows = {task: [ds[i] for i in range(len(ds))] for task, ds in data.train.items()}
    return build_model(cfg, encoder, data.num_labels), tokenizer, rows


def make_batches(rows: dict[str, list[dict[str, Any]]], tokenizer, n: int, batch_size: int, seed: int):
    """``n`` collated batches per task, drawn once (seeded), replayed identically for every method."""
    import numpy as np

    from mtl.data.loading import collate

    coll = collate(tokenizer)
    rng = np.random.default_rng(seed)
    out = {}
    for task, task_rows in rows.items():
        order = rng.permutation(len(task_rows)).tolist()
        while len(order) < n * batch_size:
            order += rng.permutation(len(task_rows)).tolist()
        out[task] = [coll([task_rows[i] for i in order[k * batch_size:(k + 1) * batch_size]]) for k in range(n)]
    return out


# ----------------------------------------------------------------------------------------- timing


class Timed:
    """One method's ``Trainer`` with per-step timings of the step, the engine and the solver."""

    def __init__(self, method: Method, trainer: Any) -> None:
        self.method, self.trainer = method, trainer
        self.engine: list[float] = []
        self.solver: list[float] = []
        self._wrap(trainer.engine, "step", self.engine)
        # what the engine calls: an aggregator's aggregate, every other balancer's compute
        self._wrap(trainer.balancer, "aggregate" if hasattr(trainer.balancer, "aggregate") else "compute",
                   self.solver)
        self.device = trainer.device

    @staticmethod
    def _wrap(obj: Any, name: str, bucket: list[float]) -> None:
        """Replace ``obj.name`` by a wrapper adding each call's duration to ``bucket[-1]``."""
        inner: Callable[..., Any] = getattr(obj, name)

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                bucket[-1] += time.perf_counter() - t0

        object.__setattr__(obj, name, timed)

    def step(self, batch_index: int, seed: int) -> dict[str, float]:
        """One ``train_step`` on batch ``batch_index`` of every task, dropout seeded by that index."""
        import torch

        for stream in self.trainer.streams.values():
            stream.i = batch_index
        torch.manual_seed(seed + batch_index)
        self.engine.append(0.0)
        self.solver.append(0.0)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        common.sync(self.device)
        t0 = time.perf_counter()
        result = self.trainer.train_step()
        common.sync(self.device)
        t1 = time.perf_counter()
        if result is None:
            raise RuntimeError(f"{self.method.label}: a step was skipped (non-finite loss or gradient)")
        peak = (torch.cuda.max_memory_allocated(self.device) - before) / 2**20 if cuda else None
        return {"step": t1 - t0, "engine": self.engine[-1], "solver": self.solver[-1], "mid": 0.5 * (t0 + t1),
                "peak_mb": peak}

    def memory_mb(self) -> dict[str, float]:
        """What the method keeps between steps: its Jacobian buffer (parameters) and the balancer's state."""
        jac = self.trainer.engine._jac_buffer
        state = sum(t.numel() * t.element_size() for t in self.trainer.balancer.state_dict().values()
                    if hasattr(t, "element_size"))
        return {"jacobian_mb": (jac.numel() * jac.element_size() if jac is not None else 0) / 2**20,
                "balancer_state_mb": state / 2**20}


def make_trainer(method: Method, cfg, ctx: dict[str, Any], args: argparse.Namespace) -> Timed:
    from mtl.training.build import build_balancer, build_sampler, build_settings, check_compatible
    from mtl.training.trainer import NullLogger, Trainer

    batches, task_names = ctx["batches"], ctx["task_names"]
    balancer = build_balancer(cfg.balancer, task_names)
    sampler = build_sampler(cfg.sampler, {t: len(b) * args.batch_size for t, b in batches.items()}, args.seed)
    check_compatible(balancer, sampler)
    # run()'s settings (so --extra trainer.* overrides apply), without schedule warm-up, evaluation or saving
    settings = dataclasses.replace(build_settings(cfg, 10**6), eval_every=10**6, log_every=10**6, warmup=0,
                                   save_best=False, progress=False, checkpoint_every=0, resume=None)
    streams = {t: ReplayStream(b) for t, b in batches.items()}
    run_dir = ctx["run_dir"] / method.label.replace("@", "_").replace("#", "_")
    trainer = Trainer(ctx["model"], balancer, sampler, streams, {}, settings, run_dir, logger=NullLogger())
    return Timed(method, trainer)


def sweep_order(methods: list[Method], sweep: int, equal_every: int) -> list[Method]:
    """One timed step of every method, rotated by ``sweep``, with ``equal`` before, after and every
    ``equal_every`` methods in between (its steps are the local reference for the neighbours)."""
    equal = methods[0]
    others = methods[1:]
    k = sweep % max(len(others), 1)
    others = others[k:] + others[:k]
    order: list[Method] = []
    for i, m in enumerate(others):
        if i % equal_every == 0:
            order.append(equal)
        order.append(m)
    return order + [equal]


def local_ratios(records: list[dict[str, Any]]) -> None:
    """``ratio`` of every step: its time over ``equal``'s interpolated (in time) between the
    nearest ``equal`` steps before and after it."""
    eq = [i for i, r in enumerate(records) if r["method"] == "equal"]
    for i, r in enumerate(records):
        if r["method"] == "equal":
            r["ratio"] = 1.0
            continue
        before = max(j for j in eq if j < i)
        after = min(j for j in eq if j > i)
        a, b = records[before], records[after]
        span = b["mid"] - a["mid"]
        frac = (r["mid"] - a["mid"]) / span if span > 0 else 0.5
        r["ratio"] = r["step"] / (a["step"] + frac * (b["step"] - a["step"]))


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


def summarise(methods: list[Method], records: list[dict[str, Any]],
              memory: dict[str, dict[str, float]] | None = None) -> list[dict]:
    med = statistics.median
    out = []
    for m in methods:
        rs = [r for r in records if r["method"] == m.label]
        ratios = [r["ratio"] for r in rs]
        steps = [r["step"] for r in rs]
        target = TARGETS.get(m.kind)
        ratio = med(ratios)
        peaks = [r["peak_mb"] for r in rs if r.get("peak_mb") is not None]
        out.append({
            "method": m.label,
            "balancer": m.balancer,
            "source": m.source or "loss",
            **(memory or {}).get(m.label, {}),
            "peak_mb_median": med(peaks) if peaks else None,
            "ratio_to_equal": ratio,
            "ratio_q25": _quantile(ratios, 0.25),
            "ratio_q75": _quantile(ratios, 0.75),
            "ratios": ratios,
            "n_steps": len(rs),
            "step_seconds_median": med(steps),
            "engine_seconds_median": med(r["engine"] for r in rs),
            "solver_ms_median": 1000 * med(r["solver"] for r in rs),
            "solver_ms_max": 1000 * max(r["solver"] for r in rs),
            "rest_seconds_median": med(r["step"] - r["engine"] for r in rs),
            "target": target,
            "meets_target": None if target is None else bool(ratio <= target),
        })
    return out


def format_table(results: list[dict[str, Any]]) -> str:
    head = ["method", "source", "× equal", "IQR", "s/step", "engine s", "solver ms", "rest s", "kept MB", "target"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in results:
        tgt = "–" if r["target"] is None else f"≤ {r['target']:.2f} {'ok' if r['meets_target'] else 'MISSED'}"
        lines.append("| " + " | ".join([
            r["method"], r["source"], f"{r['ratio_to_equal']:.3f}", f"{r['ratio_q25']:.2f}–{r['ratio_q75']:.2f}",
            f"{r['step_seconds_median']:.3f}", f"{r['engine_seconds_median']:.3f}", f"{r['solver_ms_median']:.2f}",
            f"{r['rest_seconds_median']:.3f}", f"{r.get('jacobian_mb', 0) + r.get('balancer_state_mb', 0):.0f}", tgt,
        ]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.make_parser(__doc__.split("\n\n")[0])
    p.add_argument("--loss", default=ALL,
                   help="loss-level balancers (comma-separated; '' for none; default: every registered one)")
    p.add_argument("--representation", default=ALL,
                   help="balancers timed with source=representation (comma-separated; '' for none; "
                        "default: every gradient method that supports it)")
    p.add_argument("--parameters", default=ALL,
                   help="balancers timed with source=parameters (comma-separated; '' for none; "
                        "default: every gradient method that supports it)")
    p.add_argument("--no-control", action="store_true", help="leave out the equal#2 noise-floor entry")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of every method first (default 2)")
    p.add_argument("--equal-every", type=int, default=4,
                   help="an equal reference step after every N method steps of a sweep (default 4)")
    p.add_argument("--device", default="cpu", help="trainer.device (default cpu)")
    common.add_protocol_args(p, steps=7, layers=0, out=str(DEFAULT_OUT),
                             steps_help="timed steps per method, one per sweep over all methods (default 7)",
                             out_help="JSON output (default outputs/bench/balancers.json)",
                             data_root_help="folder with the task files (default: found, else fixtures)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with common.torch_threads(args.threads):
        return bench(args, argv)


def source_digest() -> dict[str, str]:
    """sha1 of the code being timed (the engine, the trainer, the balancers): which version gave these numbers."""
    files = [common.REPO / "mtl" / "training" / "engine.py", common.REPO / "mtl" / "training" / "trainer.py",
             *sorted((common.REPO / "mtl" / "balancers").rglob("*.py"))]
    return {str(f.relative_to(common.REPO)): hashlib.sha1(f.read_bytes()).hexdigest()[:12] for f in files if f.exists()}


def bench(args: argparse.Namespace, argv: list[str] | None) -> int:
    import torch

    digest = source_digest()
    methods = methods_from(args)
    tmp = tempfile.TemporaryDirectory(prefix="bench_balancers_")
    data_root = common.find_data_root(args.data_root)
    generated = data_root is None
    if data_root is None:
        from mtl.data.fixtures import write_fixture_data

        data_root = write_fixture_data(Path(tmp.name) / "data", rows_per_task=240, seed=0)
        log.info("real task files not found: using synthetic fixture data in %s", data_root)
    common.use_data_root(Path(data_root))
    base = base_overrides(args, Path(data_root))
    cfgs = {m.label: common.compose(base + m.overrides) for m in methods}  # fails fast on a bad name/override
    cfg = cfgs["equal"]
    torch.manual_seed(args.seed)
    model, tokenizer, rows = build_model(cfg)
    task_names = list(cfg.tasks.keys())
    ctx = {
        "model": model,
        "batches": make_batches(rows, tokenizer, args.warmup + args.steps, args.batch_size, args.seed),
        "task_names": task_names,
        "run_dir": Path(tmp.name) / "run",
    }
    n_shared = sum(p.numel() for p in model.shared_parameters())
    tokens = {t: [int(b["attention_mask"].sum()) for b in bs] for t, bs in ctx["batches"].items()}
    log.info("%s, %d layers, %s trainable shared parameters, %d methods, %d warm-up + %d timed steps each",
             cfg.encoder.name_or_path, model.encoder.config.num_hidden_layers, f"{n_shared:,}", len(methods),
             args.warmup, args.steps)
    timed = {m.label: make_trainer(m, cfgs[m.label], ctx, args) for m in methods}
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    for w in range(args.warmup):
        for m in methods:
            timed[m.label].step(w, args.seed)
    records: list[dict[str, Any]] = []
    for k in range(args.steps):
        sweep = []
        for m in sweep_order(methods, k, max(1, args.equal_every)):
            rec = timed[m.label].step(args.warmup + k, args.seed)
            sweep.append({"method": m.label, "sweep": k, **rec})
        records += sweep
        local_ratios(sweep)
        log.info("sweep %d/%d: equal %.2f s; ratios %s", k + 1, args.steps,
                 statistics.median(r["step"] for r in sweep if r["method"] == "equal"),
                 " ".join(f"{r['method']}={r['ratio']:.2f}" for r in sweep if r["method"] != "equal"))
    wall = time.perf_counter() - t_start
    memory = {label: t.memory_mb() for label, t in timed.items()}
    del timed
    gc.collect()
    results = summarise(methods, records, memory)
    data = {
        "command": common.command_line(__file__, argv),
        "setup": {
            "encoder": str(cfg.encoder.name_or_path),
            "layers": int(model.encoder.config.num_hidden_layers),
            "freeze_embeddings": not args.unfreeze_embeddings,
            "trainable_shared_parameters": n_shared,
            "tasks": task_names,
            "batch_size_per_task": args.batch_size,
            "max_length": args.max_length,
            "mean_tokens_per_step": sum(sum(v) for v in tokens.values()) / (args.warmup + args.steps),
            "data_root": "generated synthetic fixture files" if generated else str(data_root),
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "equal_every": args.equal_every,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": args.device,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "wall_seconds": wall,
            "source_sha1": digest,
        },
        "targets": dict(TARGETS),
        "results": results,
        "steps": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items() if k != "mid"}
                  for r in records],
    }
    out = common.write_json(args.out, data)
    print(format_table(results))
    print(f"\n{len(methods)} methods x {args.steps} timed steps in {wall / 60:.1f} min -> {out}")
    tmp.cleanup()
    missed = [r["method"] for r in results if r["meets_target"] is False]
    if missed:
        print("over target: " + ", ".join(missed))
    return 0 if all(math.isfinite(r["ratio_to_equal"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

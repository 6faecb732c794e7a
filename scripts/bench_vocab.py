"""Vocabulary trimming and embedding freezing vs the untrimmed model (multilingual-e5-small by default).

Four variants, each a full `run()` in its own subprocess (so peak memory is per variant: the child's
``ru_maxrss`` and its resident memory sampled after every training step on CPU,
``torch.cuda.max_memory_allocated`` on CUDA):

    untrimmed            encoder.trim_vocab=false encoder.freeze_embeddings=false   (baseline)
    untrimmed_frozen     encoder.trim_vocab=false encoder.freeze_embeddings=true
    trimmed              encoder.trim_vocab=true  encoder.freeze_embeddings=false
    trimmed_frozen       encoder.trim_vocab=true  encoder.freeze_embeddings=true

Reports training samples/s, peak memory, parameter counts (total / trainable / embedding rows) and dev
macro-F1 after the same number of steps.

    python scripts/bench_vocab.py                                   # e5_small, 60 steps per variant
    python scripts/bench_vocab.py --encoder tiny_random --steps 10   # smoke run
Writes outputs/bench/vocab.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

VARIANTS = {
    "untrimmed": ("encoder.trim_vocab=false", "encoder.freeze_embeddings=false"),
    "untrimmed_frozen": ("encoder.trim_vocab=false", "encoder.freeze_embeddings=true"),
    "trimmed": ("encoder.trim_vocab=true", "encoder.freeze_embeddings=false"),
    "trimmed_frozen": ("encoder.trim_vocab=true", "encoder.freeze_embeddings=true"),
}


def child(args: argparse.Namespace) -> None:
    """One variant: train, then write its figures as JSON to --json-out."""
    from mtl.training import run as run_mod

    run_mod.write_run_outputs = lambda *a, **k: []
    counts: dict[str, int] = {}
    original = run_mod.Trainer.fit

    def spy(self):
        model = self.model
        counts["parameters"] = sum(p.numel() for p in model.parameters())
        counts["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        counts["embedding_rows"] = int(model.encoder.get_input_embeddings().weight.shape[0])
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return original(self)

    run_mod.Trainer.fit = spy
    # resident memory sampled after every training step: the training-time peak (ru_maxrss also counts
    # loading the full model before trimming)
    rss = {"train_peak": 0}
    page = resource.getpagesize()
    step_original = run_mod.Trainer.train_step

    def sampled_step(self):
        out = step_original(self)
        with open("/proc/self/statm") as fh:
            rss["train_peak"] = max(rss["train_peak"], int(fh.read().split()[1]) * page)
        return out

    if Path("/proc/self/statm").exists():
        run_mod.Trainer.train_step = sampled_step
    root = Path(args.data_root)
    overrides = [
        f"encoder={args.encoder}", f"encoder.max_length={args.max_length}", *VARIANTS[args.child],
        f"data.root={root}", f"data.max_train_per_task={args.train_per_task}", f"data.max_dev_per_task={args.dev_per_task}",
        f"data.batch_size={args.batch_size}", "data.group_by_length=true", "sampler=proportional", "balancer=equal",
        f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.steps}", "trainer.checkpoint_every=0",
        "trainer.save_best=false", "trainer.progress=false", "optim.lr=1e-4", "optim.head_lr=2e-3", "optim.warmup=0.06",
    ]
    t0 = time.perf_counter()
    with common.torch_threads(args.threads):
        metrics = run_mod.run(common.compose(overrides), Path(args.run_dir))
    out = {
        **counts,
        "train_samples_per_second": metrics["samples_per_second"],
        "train_seconds": metrics["train_seconds"],
        "wall_seconds": time.perf_counter() - t0,
        "dev_avg_macro_f1": metrics["last"]["avg_macro_f1"],
        "dev_macro_f1": {t: s["macro_f1"] for t, s in metrics["last"]["tasks"].items()},
        # Linux reports ru_maxrss in KiB: the whole process (model, optimiser state, data, Python)
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_during_training_mib": rss["train_peak"] / 2**20,
    }
    if torch.cuda.is_available():
        out["cuda_max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.json_out).write_text(json.dumps(out), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.make_parser(__doc__)
    common.add_common_args(ap, steps=60, batch_size=32, max_length=64,
                           steps_help="training steps per variant (default 60)")
    ap.add_argument("--train-per-task", type=int, default=4000)
    ap.add_argument("--dev-per-task", type=int, default=300)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data-root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return {}
    root, data_kind = common.data_root()
    tmp = Path(tempfile.mkdtemp(prefix="mtl-bench-vocab-"))
    results: dict[str, Any] = {}
    passthrough = ["--encoder", args.encoder, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                   "--max-length", str(args.max_length), "--train-per-task", str(args.train_per_task),
                   "--dev-per-task", str(args.dev_per_task)]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    for name in args.variants.split(","):
        js = tmp / f"{name}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *passthrough, "--child", name, "--json-out", str(js),
               "--run-dir", str(tmp / name), "--data-root", str(root)]
        print(f"{name}: {' '.join(VARIANTS[name])}", flush=True)
        subprocess.run(cmd, check=True)
        results[name] = json.loads(js.read_text())
        r = results[name]
        print(f"  {r['train_samples_per_second']:.1f} samples/s, peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(training {r['peak_rss_during_training_mib']:.0f} MiB), "
              f"{r['parameters']:,} parameters ({r['trainable_parameters']:,} trainable), "
              f"dev avg macro-F1 {r['dev_avg_macro_f1']:.4f}", flush=True)
    base = results.get("untrimmed")
    summary = {}
    if base:
        for name, r in results.items():
            summary[name] = {
                "speedup_vs_untrimmed": r["train_samples_per_second"] / base["train_samples_per_second"],
                "peak_rss_vs_untrimmed": r["peak_rss_mib"] / base["peak_rss_mib"],
                "training_rss_vs_untrimmed": r["peak_rss_during_training_mib"] / base["peak_rss_during_training_mib"],
                "parameters_vs_untrimmed": r["parameters"] / base["parameters"],
            }
    result = {
        "benchmark": "vocab",
        "command": common.command_line(__file__, argv),
        "encoder": args.encoder, "max_length": args.max_length, "batch_size": args.batch_size, "steps": args.steps,
        "data": data_kind, "train_per_task": args.train_per_task, "dev_per_task": args.dev_per_task,
        "machine": common.machine(), "child_torch_threads": args.threads, "variants": results, "relative": summary,
    }
    common.write_result("vocab", result, args.out)
    return result


if __name__ == "__main__":
    main()

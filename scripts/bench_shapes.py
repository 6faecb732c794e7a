"""Shape bucketing x precision on this machine: training and evaluation samples/s, padding overhead.

Kernels specialised per input shape (oneDNN's bf16 kernels on a CPU with avx512_bf16/AMX, torch.compile
and CUDA graphs on a GPU) are only reused when batches come in a few shapes. This benchmark trains
Trainers that are identical (same encoder weights, heads, task sequence, optimiser, dropout stream)
except for the padding of their batches and their precision, in alternating blocks of steps (so machine
drift hits all alike), on the quickstart's data and batching (length-grouped batches of 32, max 64 tokens):

    dynamic        each batch padded to its longest row (data.length_buckets=null)
    multiple16     padded up to a multiple of 16           (data.pad_to_multiple_of=16)
    ladder         padded up to the next of 16/32/48/64    (data.length_buckets=[16,32,48,64])

each in fp32 and bf16 (trainer.precision). Then evaluation samples/s on the dev sets, batches of rows in
the dataset's order against rows sorted by length (the framework's way), with the predictions checked
equal. Padding overhead: padded positions / real tokens over one pass of every task's length-grouped
batches, for each padding scheme (computed from the lengths; no model).

    python scripts/bench_shapes.py                          # e5_small, frozen embeddings, 60 steps
    python scripts/bench_shapes.py --encoder tiny_random --steps 4 --train-per-task 64 --dev-per-task 32
Writes outputs/bench/shapes.json (or --out).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

from mtl.balancers import build_balancer  # noqa: E402
from mtl.data.batching import LengthSortedSampler, TaskBatchSampler, TaskStream  # noqa: E402
from mtl.data.loading import collate, padded_length  # noqa: E402
from mtl.models.multitask import MultiTaskModel  # noqa: E402
from mtl.samplers import SAMPLERS  # noqa: E402
from mtl.training.trainer import Trainer, TrainerSettings  # noqa: E402

SCHEMES: dict[str, dict[str, Any]] = {
    "dynamic": {},
    "multiple16": {"pad_to_multiple_of": 16},
    "ladder": {"buckets": [16, 32, 48, 64]},
}


def padding_overhead(lengths: dict[str, list[int]], batch_size: int, scheme: dict[str, Any]) -> float:
    """Padded positions / real tokens over one length-grouped pass of every task (seeded as a run's)."""
    real = padded = 0
    for i, lens in enumerate(lengths.values()):
        sampler = TaskBatchSampler(len(lens), batch_size, seed=42 * 1000 + i, lengths=lens, group_by_length=True)
        arr = np.asarray(lens)
        for batch in sampler._make(0):  # one pass
            b = arr[batch]
            real += int(b.sum())
            padded += len(b) * padded_length(int(b.max()), scheme.get("buckets"), scheme.get("pad_to_multiple_of"))
    return padded / max(real, 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.make_parser(__doc__)
    common.add_common_args(ap, steps=60, batch_size=32, max_length=64,
                           steps_help="timed training steps per variant (default 60)")
    ap.add_argument("--block", type=int, default=10, help="steps per block in the rotation")
    ap.add_argument("--warmup-steps", type=int, default=5, help="untimed first steps of each variant")
    ap.add_argument("--train-per-task", type=int, default=4000)
    ap.add_argument("--dev-per-task", type=int, default=1000)
    ap.add_argument("--eval-batch-size", type=int, default=128)
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args(argv)
    with common.torch_threads(args.threads):
        return bench(args, argv)


def bench(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    cfg, data_kind = common.bench_config(args, f"data.max_dev_per_task={args.dev_per_task}")
    encoder, tokenizer = common.load_encoder_from(cfg, freeze_embeddings=True)
    labels, train, dev = common.load_tasks(cfg, tokenizer, seed=int(cfg.seed), tasks=common.TASKS, with_dev=True)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    device = "cpu" if not torch.cuda.is_available() else "auto"
    variants = {f"{scheme}/{prec}": (scheme, prec) for scheme in SCHEMES for prec in precisions}
    trainers, rng = {}, {}
    for name, (scheme, prec) in variants.items():
        coll = collate(tokenizer, **SCHEMES[scheme])
        streams = {}
        for i, (t, ds) in enumerate(train.items()):
            bs = TaskBatchSampler(len(ds), args.batch_size, seed=1000 + i, lengths=ds["length"], group_by_length=True)
            streams[t] = TaskStream(ds, bs, coll)
        settings = TrainerSettings(max_steps=10**6, eval_every=10**9, log_every=10**9, lr=1e-4, head_lr=2e-3,
                                   warmup=0.0, precision=prec, device=device, progress=False, checkpoint_every=0,
                                   save_best=False)
        torch.manual_seed(0)  # same head initialisation for every variant
        model = MultiTaskModel(copy.deepcopy(encoder), labels, pooling=cfg.encoder.pooling, dropout=0.1)
        sampler = SAMPLERS.get("proportional")({t: len(ds) for t, ds in train.items()}, seed=0)
        trainers[name] = Trainer(model, build_balancer("equal", list(common.TASKS)), sampler, streams, {}, settings,
                                 tempfile.mkdtemp(prefix="mtl-bench-shapes-"))
        torch.manual_seed(1)
        rng[name] = torch.get_rng_state()
    del encoder
    names = list(variants)
    samples, seconds = common.train_in_rotation(trainers, rng, warmup=args.warmup_steps, until=args.steps,
                                                block=args.block)
    train_out = {k: {"samples_per_second": samples[k] / seconds[k], "seconds": seconds[k]} for k in names}
    base = train_out[names[0]]["samples_per_second"]
    for k in names:
        train_out[k]["ratio_to_" + names[0].replace("/", "_")] = train_out[k]["samples_per_second"] / base

    # evaluation: dataset order vs sorted by length, each scheme's collate, fp32 and bf16
    rows = sum(len(ds) for ds in dev.values())
    eval_out: dict[str, Any] = {}
    reference: dict[str, list[int]] | None = None
    for prec in precisions:
        tr = trainers[f"dynamic/{prec}"]
        for order in ("dataset_order", "sorted_by_length"):
            coll = collate(tokenizer)
            loaders = {
                t: DataLoader(ds, batch_size=args.eval_batch_size, collate_fn=coll,
                              sampler=LengthSortedSampler(ds["length"]) if order == "sorted_by_length" else None)
                for t, ds in dev.items()
            }
            tr.evaluate(loaders)  # warm-up pass (first kernels for these shapes)
            t0 = time.perf_counter()
            ev = tr.evaluate(loaders, keep_predictions=True)
            dt = time.perf_counter() - t0
            if prec == precisions[0] and reference is None:
                reference = ev.predictions
            same = sum(int(a == b) for t in ev.predictions for a, b in zip(ev.predictions[t], reference[t], strict=True))
            eval_out[f"{order}/{prec}"] = {"samples_per_second": rows / dt, "seconds": dt, "avg_macro_f1": ev.average,
                                           "predictions_equal_to_first": same / rows}
            print(f"eval {order}/{prec}: {rows / dt:.1f} samples/s", flush=True)
    for prec in precisions:
        eval_out[f"sorted_speedup/{prec}"] = (eval_out[f"sorted_by_length/{prec}"]["samples_per_second"]
                                              / eval_out[f"dataset_order/{prec}"]["samples_per_second"])

    lengths = {t: list(ds["length"]) for t, ds in train.items()}
    overhead = {s: padding_overhead(lengths, args.batch_size, SCHEMES[s]) for s in SCHEMES}
    result = {
        "benchmark": "shapes",
        "command": common.command_line(__file__, argv),
        "encoder": args.encoder, "frozen_embeddings": True, "max_length": args.max_length,
        "batch_size": args.batch_size, "steps": args.steps, "untimed_warmup_steps": args.warmup_steps,
        "block": args.block, "data": data_kind, "train_per_task": args.train_per_task,
        "dev_per_task": args.dev_per_task, "eval_batch_size": args.eval_batch_size, "machine": common.machine(),
        "schemes": SCHEMES, "train": train_out, "eval": eval_out,
        "padded_positions_per_real_token": overhead,
    }
    common.write_result("shapes", result, args.out)
    return result


if __name__ == "__main__":
    main()

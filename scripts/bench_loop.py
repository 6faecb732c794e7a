"""Training throughput of the mtl Trainer against a minimal hand-written PyTorch + transformers loop.

Same encoder weights, same task sequence and data batches (same samplers and seeds), same batch size,
precision and optimiser (AdamW, encoder/head learning rates, linear schedule, gradient clipping).
The two loops alternate (A B, B A, A B, ...) over a few repetitions so machine drift (other jobs on a
shared CPU) hits both alike; the report gives each repetition and the medians.

    python scripts/bench_loop.py                         # e5_small, frozen embeddings, max_length 64
    python scripts/bench_loop.py --encoder tiny_random   # smoke run
Writes outputs/bench/loop.json (or --out). Evaluation and logging are outside the timed region for both.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

from mtl.balancers import build_balancer  # noqa: E402
from mtl.data.batching import TaskBatchSampler, TaskStream  # noqa: E402
from mtl.data.loading import collate  # noqa: E402
from mtl.models.heads import pool  # noqa: E402
from mtl.models.multitask import MultiTaskModel  # noqa: E402
from mtl.samplers import SAMPLERS  # noqa: E402
from mtl.training.optim import build_scheduler  # noqa: E402
from mtl.training.trainer import Trainer, TrainerSettings  # noqa: E402
from mtl.utils.device import (
    resolve_device,  # noqa: E402
    resolve_precision,  # noqa: E402
)

# ----------------------------------------------------------------------------- the hand-written loop


class HandLoop:
    """What one would write by hand: encoder + pooled linear heads, AdamW, clip, linear schedule."""

    def __init__(self, encoder: nn.Module, num_labels: dict[str, int], pooling: str, dropout: float,
                 streams: dict[str, Iterator[dict[str, torch.Tensor]]], sampler, settings: TrainerSettings,
                 device: torch.device, precision: str) -> None:
        self.encoder = encoder.to(device)
        self.heads = nn.ModuleDict(
            {t: nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.config.hidden_size, n)) for t, n in num_labels.items()}
        ).to(device)
        self.pooling, self.streams, self.sampler, self.device = pooling, streams, sampler, device
        self.settings = settings
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        enc = [(n, p) for n, p in self.encoder.named_parameters() if p.requires_grad]
        nd = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias")
        groups = [
            {"params": [p for n, p in enc if p.ndim >= 2 and not any(k in n for k in nd)], "lr": settings.lr,
             "weight_decay": settings.weight_decay},
            {"params": [p for n, p in enc if p.ndim < 2 or any(k in n for k in nd)], "lr": settings.lr, "weight_decay": 0.0},
            {"params": [p for p in self.heads.parameters() if p.ndim >= 2], "lr": settings.head_lr,
             "weight_decay": settings.weight_decay},
            {"params": [p for p in self.heads.parameters() if p.ndim < 2], "lr": settings.head_lr, "weight_decay": 0.0},
        ]
        self.opt = torch.optim.AdamW(groups)
        self.sched = build_scheduler(self.opt, settings.max_steps, settings.warmup)
        self.params = [p for g in groups for p in g["params"]]
        self.step = 0

    def train_step(self) -> int:
        self.encoder.train(), self.heads.train()
        (task,) = self.sampler.draw(self.step, self.settings.max_steps)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in next(self.streams[task]).items()}
        ctx = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else torch.autocast(self.device.type, enabled=False)
        with ctx:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            out = self.encoder(**inputs)
            rep = pool(out.last_hidden_state, batch["attention_mask"], self.pooling, None)
            logits = self.heads[task](rep)
        loss = nn.functional.cross_entropy(logits.float(), batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return int(batch["labels"].shape[0])


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.make_parser(__doc__)
    common.add_common_args(ap, steps=30, batch_size=32, max_length=64,
                           steps_help="timed steps per loop per repetition (default 30)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--train-per-task", type=int, default=3000)
    ap.add_argument("--no-freeze", action="store_true", help="train the embedding matrix too")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    with common.torch_threads(args.threads):
        return bench(args, argv)


def bench(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    cfg, data_kind = common.bench_config(args, "data.max_dev_per_task=10")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    encoder, tokenizer = common.load_encoder_from(cfg, freeze_embeddings=not args.no_freeze)
    labels, sets, _ = common.load_tasks(cfg, tokenizer, seed=0, tasks=common.TASKS)
    coll = collate(tokenizer)
    total_steps = (args.steps + args.warmup_steps) * args.reps + args.warmup_steps
    settings = TrainerSettings(max_steps=10 * total_steps, eval_every=10**9, log_every=10**9, lr=5e-5, head_lr=1e-3,
                               warmup=0.06, grad_clip=1.0, precision=precision, device=str(device), progress=False,
                               checkpoint_every=0, save_best=False)
    pin = device.type == "cuda"

    def batch_samplers() -> dict[str, TaskBatchSampler]:
        return {t: TaskBatchSampler(len(ds), args.batch_size, seed=1000 + i) for i, (t, ds) in enumerate(sets.items())}

    def sampler():
        return SAMPLERS.get("proportional")({t: len(ds) for t, ds in sets.items()}, seed=0)

    # A: our Trainer
    model = MultiTaskModel(copy.deepcopy(encoder), labels, pooling=cfg.encoder.pooling, dropout=0.1)
    streams = {t: TaskStream(sets[t], bs, coll, pin_memory=pin) for t, bs in batch_samplers().items()}
    trainer = Trainer(model, build_balancer("equal", list(common.TASKS)), sampler(), streams, {}, settings,
                      tempfile.mkdtemp(prefix="mtl-bench-loop-"))
    # B: the hand-written loop, its own copies of everything (same seeds -> same batches)
    loaders = {t: iter(torch.utils.data.DataLoader(sets[t], batch_sampler=bs, collate_fn=coll, pin_memory=pin))
               for t, bs in batch_samplers().items()}
    hand = HandLoop(copy.deepcopy(encoder), labels, cfg.encoder.pooling, 0.1, loaders, sampler(), settings, device,
                    precision)
    del encoder

    def trainer_step() -> int:
        return common.step_samples(trainer.train_step())

    loops = {"trainer": trainer_step, "hand_loop": hand.train_step}
    for fn in loops.values():  # warm-up (allocator, first-iteration costs)
        for _ in range(args.warmup_steps):
            fn()
    reps: list[dict[str, float]] = []
    for r in range(args.reps):
        order = ["trainer", "hand_loop"] if r % 2 == 0 else ["hand_loop", "trainer"]
        rep: dict[str, float] = {}
        for name in order:
            fn = loops[name]
            for _ in range(args.warmup_steps if r else 0):
                fn()
            common.sync(device)
            t0, samples = time.perf_counter(), 0
            for _ in range(args.steps):
                samples += fn()
            common.sync(device)
            rep[name] = samples / (time.perf_counter() - t0)
        reps.append(rep)
        print(f"rep {r + 1}/{args.reps}: trainer {rep['trainer']:.1f} samples/s, hand loop {rep['hand_loop']:.1f} "
              f"samples/s, ratio {rep['trainer'] / rep['hand_loop']:.3f}", flush=True)
    med = {k: statistics.median(r[k] for r in reps) for k in loops}
    result = {
        "benchmark": "loop",
        "command": common.command_line(__file__, argv),
        "encoder": args.encoder, "frozen_embeddings": not args.no_freeze, "max_length": args.max_length,
        "batch_size": args.batch_size, "steps_per_rep": args.steps, "reps": args.reps, "precision": precision,
        "device": str(device), "data": data_kind, "machine": common.machine(),
        "samples_per_second": {"per_rep": reps, "median": med},
        "ratio_trainer_over_hand_loop": {
            "of_medians": med["trainer"] / med["hand_loop"],
            # each repetition runs the two loops back to back: its ratio cancels the machine's drift
            "median_of_rep_ratios": statistics.median(r["trainer"] / r["hand_loop"] for r in reps),
            "geometric_mean_of_rep_ratios": statistics.geometric_mean(r["trainer"] / r["hand_loop"] for r in reps),
        },
        "target_ratio": 0.95,
    }
    common.write_result("loop", result, args.out)
    return result


if __name__ == "__main__":
    main()

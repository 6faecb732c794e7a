"""Dynamic padding with length grouping vs padding every batch to a fixed length (128 tokens).

Three Trainers in one process, identical (same encoder weights, head initialisation, task sequence,
optimiser, schedule) except for the batching:

    dynamic_grouped   data.group_by_length=true, each batch padded to its longest row (the framework's way)
    dynamic_random    random batches, each padded to its longest row        (padding alone, no grouping)
    fixed_<L>         the same random batches, padded to encoder.max_length (the baseline)

They train in alternating blocks of steps (A B C, B C A, C A B, ...) so that machine drift (other jobs on a
shared CPU) hits all alike; each has its own dropout RNG stream. Reported: training samples/s, the share
of real tokens among the positions the encoder processed, and dev macro-F1 after the same steps
(evaluated with dynamic padding for all three).

    python scripts/bench_padding.py                 # e5_small, frozen embeddings, 60 steps each, batch 16
    python scripts/bench_padding.py --encoder tiny_random --steps 20    # smoke run
Writes outputs/bench/padding.json (or --out).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

from mtl.balancers import build_balancer  # noqa: E402
from mtl.data.batching import TaskBatchSampler, TaskStream  # noqa: E402
from mtl.data.loading import collate  # noqa: E402
from mtl.models.multitask import MultiTaskModel  # noqa: E402
from mtl.samplers import SAMPLERS  # noqa: E402
from mtl.training.trainer import Trainer, TrainerSettings  # noqa: E402


class Padded:
    """A collate function that counts real tokens and positions, optionally padding to a fixed width."""

    def __init__(self, fn, pad_id: int, fixed_length: int | None) -> None:
        self.fn, self.pad_id, self.fixed_length = fn, pad_id, fixed_length
        self.real = self.positions = 0

    def __call__(self, rows):
        batch = self.fn(rows)
        if self.fixed_length is not None:  # rows are already cut to max_length: pad, never truncate
            extra = self.fixed_length - batch["input_ids"].shape[1]
            if extra > 0:
                for k, v in list(batch.items()):
                    if v.dim() == 2:
                        fill = self.pad_id if k == "input_ids" else 0
                        batch[k] = torch.cat([v, torch.full((v.shape[0], extra), fill, dtype=v.dtype)], dim=1)
        self.real += int(batch["attention_mask"].sum())
        self.positions += int(batch["attention_mask"].numel())
        return batch


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.make_parser(__doc__)
    common.add_common_args(ap, steps=60, batch_size=16, max_length=128,
                           steps_help="training steps per variant (default 60)")
    ap.add_argument("--block", type=int, default=10, help="steps per block in the rotation")
    ap.add_argument("--warmup-steps", type=int, default=2, help="untimed first steps of each variant")
    ap.add_argument("--train-per-task", type=int, default=4000)
    ap.add_argument("--dev-per-task", type=int, default=200)
    ap.add_argument("--no-random", action="store_true", help="skip the dynamic_random variant")
    args = ap.parse_args(argv)
    with common.torch_threads(args.threads):
        return bench(args, argv)


def bench(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    cfg, data_kind = common.bench_config(args, f"data.max_dev_per_task={args.dev_per_task}")
    encoder, tokenizer = common.load_encoder_from(cfg, freeze_embeddings=True)
    labels, train, dev = common.load_tasks(cfg, tokenizer, seed=int(cfg.seed), tasks=common.TASKS, with_dev=True)
    dyn = collate(tokenizer)
    pad_id = int(tokenizer.pad_token_id)
    variants = {"dynamic_grouped": (True, None)}
    if not args.no_random:
        variants["dynamic_random"] = (False, None)
    variants[f"fixed_{args.max_length}"] = (False, args.max_length)
    settings = TrainerSettings(max_steps=args.steps, eval_every=10**9, log_every=10**9, lr=1e-4, head_lr=2e-3,
                               warmup=0.06, precision="fp32", device="cpu" if not torch.cuda.is_available() else "auto",
                               progress=False, checkpoint_every=0, save_best=False)
    trainers, collates, rng = {}, {}, {}
    for name, (grouped, fixed) in variants.items():
        coll = Padded(dyn, pad_id, fixed)
        streams = {}
        for i, (t, ds) in enumerate(train.items()):
            bs = TaskBatchSampler(len(ds), args.batch_size, seed=1000 + i, lengths=ds["length"] if grouped else None,
                                  group_by_length=grouped)
            streams[t] = TaskStream(ds, bs, coll)
        torch.manual_seed(0)  # same head initialisation for every variant
        model = MultiTaskModel(copy.deepcopy(encoder), labels, pooling=cfg.encoder.pooling, dropout=0.1)
        sampler = SAMPLERS.get("proportional")({t: len(ds) for t, ds in train.items()}, seed=0)
        trainers[name] = Trainer(model, build_balancer("equal", list(common.TASKS)), sampler, streams, {}, settings,
                                 tempfile.mkdtemp(prefix=f"mtl-bench-padding-{name}-"))
        collates[name] = coll
        torch.manual_seed(1)
        rng[name] = torch.get_rng_state()  # each variant its own (identical) dropout stream
    del encoder
    names = list(variants)
    warm = min(args.warmup_steps, args.steps)  # the first steps count towards --steps, untimed
    samples, seconds = common.train_in_rotation(trainers, rng, warmup=warm, until=args.steps, block=args.block,
                                                start=warm)
    dev_loaders = {t: DataLoader(ds, batch_size=64, shuffle=False, collate_fn=dyn) for t, ds in dev.items()}
    out: dict[str, Any] = {}
    for name in names:
        ev = trainers[name].evaluate(dev_loaders)
        c = collates[name]
        out[name] = {
            "train_samples_per_second": samples[name] / seconds[name],
            "train_seconds": seconds[name],
            "dev_avg_macro_f1": ev.average,
            "dev_macro_f1": {t: s.macro_f1 for t, s in ev.scores.items()},
            "real_token_share_of_positions": c.real / max(c.positions, 1),
        }
        print(f"{name}: {out[name]['train_samples_per_second']:.1f} samples/s, dev avg macro-F1 "
              f"{ev.average:.4f}, real tokens {100 * out[name]['real_token_share_of_positions']:.1f}% of positions",
              flush=True)
    fixed_name = names[-1]
    result = {
        "benchmark": "padding",
        "command": common.command_line(__file__, argv),
        "encoder": args.encoder, "frozen_embeddings": True, "max_length": args.max_length,
        "batch_size": args.batch_size, "steps": args.steps, "untimed_warmup_steps": warm, "block": args.block,
        "data": data_kind,
        "train_per_task": args.train_per_task, "dev_per_task": args.dev_per_task, "machine": common.machine(),
        "variants": out,
        "speedup_over_fixed": {k: out[k]["train_samples_per_second"] / out[fixed_name]["train_samples_per_second"]
                               for k in names},
        "dev_avg_macro_f1_minus_fixed": {k: out[k]["dev_avg_macro_f1"] - out[fixed_name]["dev_avg_macro_f1"]
                                         for k in names},
    }
    common.write_result("padding", result, args.out)
    return result


if __name__ == "__main__":
    main()

"""The step cost of each training trick against a plain step, on the quickstart's setting.

Trainers that are identical (same encoder weights, heads, task sequence, dropout stream) except for one
trick train in alternating blocks of steps (so machine drift hits all alike), on the quickstart's data and
batching (one task per step, length-grouped batches of 32, max 64 tokens, frozen embeddings, the run's
precision): ``plain``; FGM and PGD (3 steps) on the word embeddings; R-Drop; multi-sample dropout (4
masks); an EMA of the weights; layer-wise lr decay; Adafactor. Each variant's cost is its seconds per
sample over the plain step's, measured in this one process.

    python scripts/bench_tricks.py                                    # e5_small, 40 timed steps per variant
    python scripts/bench_tricks.py --encoder tiny_random --steps 4 --train-per-task 64
Writes outputs/bench/tricks.json (or --out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

#: variant -> (TrainerSettings overrides, MultiTaskModel keyword arguments)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "plain": ({}, {}),
    "fgm": ({"adversarial": "fgm"}, {}),
    "pgd3": ({"adversarial": "pgd", "adv_steps": 3}, {}),
    "rdrop": ({"rdrop_alpha": 1.0}, {}),
    "multi_sample_dropout4": ({}, {"dropout_samples": 4}),
    "ema": ({"ema_decay": 0.999}, {}),
    "layer_decay": ({"layer_decay": 0.8}, {}),
    "adafactor": ({"optimizer": "adafactor"}, {}),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.make_parser(__doc__)
    common.add_common_args(ap, steps=40, batch_size=32, max_length=64,
                           steps_help="timed training steps per variant (default 40)")
    ap.add_argument("--block", type=int, default=10, help="steps per block in the rotation")
    ap.add_argument("--warmup-steps", type=int, default=3, help="untimed first steps of each variant")
    ap.add_argument("--train-per-task", type=int, default=4000)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"a subset of {', '.join(VARIANTS)}")
    ap.add_argument("--precision", default="auto", help="trainer.precision for every variant (default auto)")
    args = ap.parse_args(argv)
    names = common.chosen_variants(ap, args.variants, list(VARIANTS), "plain")
    with common.torch_threads(args.threads):
        return bench(args, names, argv)


def bench(args: argparse.Namespace, names: list[str], argv: list[str] | None) -> dict[str, Any]:
    cfg, data_kind = common.bench_config(args)
    encoder, tokenizer = common.load_encoder_from(cfg, freeze_embeddings=True)
    labels, train, _ = common.load_tasks(cfg, tokenizer, seed=int(cfg.seed), tasks=common.TASKS)
    trainers, rng = {}, {}
    for name in names:
        settings, model_kwargs = VARIANTS[name]
        trainers[name] = common.quickstart_trainer(encoder, tokenizer, labels, train, batch_size=args.batch_size,
                                                   pooling=cfg.encoder.pooling, model_kwargs=model_kwargs,
                                                   precision=args.precision, **settings)
        torch.manual_seed(1)
        rng[name] = torch.get_rng_state()
    del encoder
    samples, seconds = common.train_in_rotation(trainers, rng, warmup=args.warmup_steps, until=args.steps,
                                                block=args.block)
    out = {k: {"samples_per_second": samples[k] / seconds[k], "seconds": seconds[k]} for k in names}
    for k in names:
        out[k]["step_cost_ratio_to_plain"] = out["plain"]["samples_per_second"] / out[k]["samples_per_second"]
        print(f"{k}: {out[k]['samples_per_second']:.1f} samples/s, {out[k]['step_cost_ratio_to_plain']:.2f}x plain")
    result = {
        "benchmark": "tricks", "command": common.command_line(__file__, argv), "encoder": args.encoder,
        "frozen_embeddings": True, "max_length": args.max_length, "batch_size": args.batch_size, "steps": args.steps,
        "untimed_warmup_steps": args.warmup_steps, "block": args.block, "data": data_kind,
        "train_per_task": args.train_per_task, "precision": trainers["plain"].precision,
        "machine": common.machine(), "variants": {k: VARIANTS[k] for k in names}, "train": out,
    }
    common.write_result("tricks", result, args.out)
    return result


if __name__ == "__main__":
    main()

"""The step cost of each task loss, and of scoring the decision rules, on the quickstart's setting.

Trainers that are identical (same encoder weights, heads, task sequence, optimiser, dropout stream) except
for the task loss train in alternating blocks of steps (so machine drift hits all alike), on the
quickstart's data and batching (one task per step, length-grouped batches of 32, max 64 tokens, frozen
embeddings, the run's precision). Every loss gets the class counts of the training split, as in a run.
Then the cost of scoring every decision rule (argmax, logit adjustment, two-fold cross-fitted tuned biases:
``mtl.evaluation.decision.score_rules``) on each task's dev logits, beside the forward pass that produced
them.

    python scripts/bench_losses.py                                    # e5_small, 60 timed steps per loss
    python scripts/bench_losses.py --encoder tiny_random --steps 4 --train-per-task 64 --dev-per-task 32
Writes outputs/bench/losses.json (or --out): samples/s per loss and its ratio to ``ce``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

from mtl.evaluation.decision import DecisionSettings, score_rules  # noqa: E402
from mtl.losses import build_loss, class_counts_from_labels  # noqa: E402
from mtl.training.build import build_dev_loaders  # noqa: E402

LOSSES = ("ce", "class_balanced", "focal", "logit_adjusted", "label_smoothing")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.make_parser(__doc__)
    common.add_common_args(ap, steps=60, batch_size=32, max_length=64,
                           steps_help="timed training steps per loss (default 60)")
    ap.add_argument("--block", type=int, default=10, help="steps per block in the rotation")
    ap.add_argument("--warmup-steps", type=int, default=5, help="untimed first steps of each loss")
    ap.add_argument("--train-per-task", type=int, default=4000)
    ap.add_argument("--dev-per-task", type=int, default=400)
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--precision", default="auto", help="trainer.precision for every loss (default auto)")
    args = ap.parse_args(argv)
    with common.torch_threads(args.threads):
        return bench(args, argv)


def bench(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    cfg, data_kind = common.bench_config(args, f"data.max_dev_per_task={args.dev_per_task}")
    encoder, tokenizer = common.load_encoder_from(cfg, freeze_embeddings=True)
    labels, train, dev = common.load_tasks(cfg, tokenizer, seed=int(cfg.seed), tasks=common.TASKS, with_dev=True)
    counts = {t: class_counts_from_labels(list(ds["labels"]), labels[t]) for t, ds in train.items()}
    names = [n.strip() for n in args.losses.split(",") if n.strip()]
    trainers, rng = {}, {}
    for name in names:
        losses = {t: build_loss(name, num_labels=labels[t], class_counts=counts[t]) for t in labels}
        trainers[name] = common.quickstart_trainer(encoder, tokenizer, labels, train, batch_size=args.batch_size,
                                                   pooling=cfg.encoder.pooling, losses=losses,
                                                   precision=args.precision)
        torch.manual_seed(1)
        rng[name] = torch.get_rng_state()
    del encoder
    samples, seconds = common.train_in_rotation(trainers, rng, warmup=args.warmup_steps, until=args.steps,
                                                block=args.block)
    train_out = {k: {"samples_per_second": samples[k] / seconds[k], "seconds": seconds[k]} for k in names}
    base = train_out[names[0]]["samples_per_second"]
    for k in names:
        train_out[k][f"step_cost_ratio_to_{names[0]}"] = base / train_out[k]["samples_per_second"]

    # decision rules: the forward pass over dev against scoring every rule on its logits
    first = trainers[names[0]]
    loaders = build_dev_loaders(cfg.data, dev, tokenizer)
    first.evaluate(loaders)  # warm-up
    t0 = time.perf_counter()
    first.evaluate(loaders)
    eval_seconds = time.perf_counter() - t0
    rule_seconds = {}
    first.model.eval()
    with torch.no_grad():
        for t, loader in loaders.items():
            z = torch.cat([first.model(t, {k: v for k, v in b.items() if k != "labels"}).float() for b in loader])
            y = [int(x) for b in loader for x in b["labels"].tolist()]
            t0 = time.perf_counter()
            score_rules(z, y, labels[t], DecisionSettings(), counts[t])
            rule_seconds[t] = time.perf_counter() - t0
    result = {
        "benchmark": "losses",
        "command": common.command_line(__file__, argv),
        "encoder": args.encoder, "frozen_embeddings": True, "max_length": args.max_length,
        "batch_size": args.batch_size, "steps": args.steps, "untimed_warmup_steps": args.warmup_steps,
        "block": args.block, "data": data_kind, "train_per_task": args.train_per_task,
        "dev_per_task": args.dev_per_task, "precision": first.precision, "machine": common.machine(),
        "train": train_out,
        "decision_rules": {"evaluation_seconds_all_rules_included": eval_seconds,
                           "score_rules_seconds_per_task": rule_seconds,
                           "share_of_evaluation": sum(rule_seconds.values()) / eval_seconds},
    }
    for k in names:
        print(f"{k}: {train_out[k]['samples_per_second']:.1f} samples/s, "
              f"step cost {train_out[k][f'step_cost_ratio_to_{names[0]}']:.3f}x {names[0]}")
    print(f"decision rules: {sum(rule_seconds.values()):.3f} s of a {eval_seconds:.2f} s evaluation")
    common.write_result("losses", result, args.out)
    return result


if __name__ == "__main__":
    main()

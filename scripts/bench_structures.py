"""The step cost of each model structure (docs/structures.md) against hard sharing, on the quickstart's setting.

Trainers that are identical (same encoder weights, task sequence, dropout stream, heads initialised from the
same seed) except for the ``model`` preset train in alternating blocks of steps (so machine drift hits all
alike), on the quickstart's data and batching (one task per step, length-grouped batches of 32, max 64
tokens, frozen embeddings, the run's precision): ``baseline`` (hard sharing, pooled vector, linear heads),
then each preset of ``mtl/conf/model/`` (scalar mix, concatenated layers, attention pooling, BiLSTM and CNN
heads, adapters, LoRA, private top-2 layers). Each variant's cost is its seconds per sample over the
baseline's, measured in this one process; the start-up estimate ``MultiTaskModel.describe`` logs (weights
per token) is written next to it, with the shared and per-task parameter counts.

    python scripts/bench_structures.py                                  # e5_small, 40 timed steps per variant
    python scripts/bench_structures.py --encoder tiny_random --steps 4 --train-per-task 64
Writes outputs/bench/structures.json (or --out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

#: variant -> the ``model`` preset it trains with (and overrides on top)
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "baseline": ("default", ()),
    "scalar_mix": ("scalar_mix", ()),
    "concat_layers": ("concat_layers", ()),
    "attention_pooling": ("attention_pooling", ()),
    "bilstm_heads": ("bilstm_heads", ()),
    "cnn_heads": ("cnn_heads", ()),
    "adapters": ("adapters", ()),
    "lora": ("lora", ()),
    "private_top2": ("private_top", ("model.private_layers=2",)),
}


def model_kwargs_for(name: str, max_length: int) -> dict[str, Any]:
    """``MultiTaskModel`` keyword arguments of a variant, from its preset as ``mtl-train`` composes it."""
    from omegaconf import OmegaConf

    from mtl.models.multitask import model_kwargs

    preset, extra = VARIANTS[name]
    cfg = common.compose([f"model={preset}", *extra])
    kwargs = model_kwargs(OmegaConf.to_container(cfg.model, resolve=True))
    kwargs.pop("dropout", None)  # quickstart_trainer's own (0.1, the default)
    kwargs["max_length"] = int(max_length)
    return kwargs


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
    names = common.chosen_variants(ap, args.variants, list(VARIANTS), "baseline")
    with common.torch_threads(args.threads):
        return bench(args, names, argv)


def bench(args: argparse.Namespace, names: list[str], argv: list[str] | None) -> dict[str, Any]:
    cfg, data_kind = common.bench_config(args)
    encoder, tokenizer = common.load_encoder_from(cfg, freeze_embeddings=True)
    labels, train, _ = common.load_tasks(cfg, tokenizer, seed=int(cfg.seed), tasks=common.TASKS)
    trainers, rng, structure = {}, {}, {}
    for name in names:
        kwargs = model_kwargs_for(name, args.max_length)
        trainers[name] = common.quickstart_trainer(encoder, tokenizer, labels, train, batch_size=args.batch_size,
                                                   pooling=cfg.encoder.pooling, model_kwargs=kwargs,
                                                   precision=args.precision)
        model = trainers[name].model
        base = max(1, model.baseline_token_weights())
        structure[name] = {
            "preset": VARIANTS[name][0], "overrides": list(VARIANTS[name][1]),
            "parameters": model.parameter_counts(),
            "representation_size": model.representation_size,
            "estimated_cost_ratio": sum(model.token_weights(t) for t in model.task_names)
            / (base * len(model.task_names)),
        }
        torch.manual_seed(1)
        rng[name] = torch.get_rng_state()
    del encoder
    samples, seconds = common.train_in_rotation(trainers, rng, warmup=args.warmup_steps, until=args.steps,
                                                block=args.block)
    out = {k: {"samples_per_second": samples[k] / seconds[k], "seconds": seconds[k]} for k in names}
    for k in names:
        out[k]["step_cost_ratio_to_baseline"] = (out["baseline"]["samples_per_second"]
                                                 / out[k]["samples_per_second"])
        print(f"{k}: {out[k]['samples_per_second']:.1f} samples/s, {out[k]['step_cost_ratio_to_baseline']:.2f}x "
              f"baseline (estimate {structure[k]['estimated_cost_ratio']:.2f}x)")
    result = {
        "benchmark": "structures", "command": common.command_line(__file__, argv), "encoder": args.encoder,
        "frozen_embeddings": True, "max_length": args.max_length, "batch_size": args.batch_size, "steps": args.steps,
        "untimed_warmup_steps": args.warmup_steps, "block": args.block, "data": data_kind,
        "train_per_task": args.train_per_task, "precision": trainers["baseline"].precision,
        "machine": common.machine(), "structures": structure, "train": out,
    }
    common.write_result("structures", result, args.out)
    return result


if __name__ == "__main__":
    main()

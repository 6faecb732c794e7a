"""GPU throughput and memory: bf16 autocast vs fp32 (TF32 matmuls), through the mtl Trainer.

Encoders: the embedded multilingual-e5-small (118M; 96M of it the 250k-row embedding) and a
base-size BERT-shaped encoder with random weights (``transformers.BertConfig()`` defaults: 12 layers,
768 hidden, 110M; no download). Data: synthetic token batches (lengths uniform in
[min-length, max-length], dynamic padding), 3 tasks, ``all_tasks`` sampler, equal weights; each
variant does warm-up steps, then timed steps; peak memory is ``torch.cuda.max_memory_allocated``.

    python scripts/bench_gpu.py                       # needs a CUDA GPU
    python scripts/bench_gpu.py --precisions fp32,bf16,fp16 --compile
    python scripts/bench_gpu.py --device cpu          # smoke check of the script at tiny sizes
Writes outputs/bench/gpu.json (or --out).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

from mtl.balancers import build_balancer  # noqa: E402
from mtl.data.batching import TaskBatchSampler, TaskStream  # noqa: E402
from mtl.data.loading import collate  # noqa: E402
from mtl.models.multitask import MultiTaskModel  # noqa: E402
from mtl.samplers import SAMPLERS  # noqa: E402
from mtl.training.trainer import Trainer, TrainerSettings  # noqa: E402

TASKS = {"nli": 3, "emotion": 7, "news": 15}


def build_encoder(name: str, tiny: bool):
    from transformers import BertConfig, BertModel

    if name == "bert_base_random":
        cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if tiny \
            else BertConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return BertModel(cfg, add_pooling_layer=False)
    if name == "e5_small":
        if tiny:
            from mtl.models.encoder import tiny_random_encoder

            return tiny_random_encoder()[0]
        from mtl.models.encoder import load_encoder

        return load_encoder("embedded:e5-small")[0]
    raise ValueError(f"unknown encoder {name!r}")


def synthetic_rows(n: int, vocab: int, num_labels: int, lo: int, hi: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        length = int(rng.integers(lo, hi + 1))
        ids = rng.integers(5, vocab, size=length).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": int(rng.integers(num_labels))})
    return rows


# the framework's own collate (dynamic padding to the longest row); synthetic rows pad with id 0
PAD_COLLATE = collate(SimpleNamespace(pad_token_id=0, padding_side="right"))


def measure(encoder_name: str, precision: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    tiny = device.type != "cuda"
    enc = build_encoder(encoder_name, tiny)
    if args.freeze_embeddings:
        enc.get_input_embeddings().weight.requires_grad_(False)
    vocab = int(enc.config.vocab_size)
    torch.manual_seed(0)
    model = MultiTaskModel(enc, TASKS, pooling="mean", dropout=0.1)
    n = args.batch_size * (args.steps + args.warmup_steps + 1)
    streams = {
        t: TaskStream(synthetic_rows(n, vocab, k, args.min_length, args.max_length, i),
                      TaskBatchSampler(n, args.batch_size, seed=i), PAD_COLLATE, pin_memory=device.type == "cuda")
        for i, (t, k) in enumerate(TASKS.items())
    }
    settings = TrainerSettings(max_steps=10 * (args.steps + args.warmup_steps), eval_every=10**9, log_every=10**9,
                               lr=5e-5, head_lr=1e-3, precision=precision, device=str(device), progress=False,
                               checkpoint_every=0, save_best=False, compile=args.compile,
                               grad_accum_steps=args.grad_accum_steps)
    sampler = SAMPLERS.get("all_tasks")({t: n for t in TASKS}, seed=0)
    trainer = Trainer(model, build_balancer("equal", list(TASKS)), sampler, streams, {}, settings,
                      tempfile.mkdtemp(prefix="mtl-bench-gpu-"))
    for _ in range(args.warmup_steps):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    common.sync(device)
    t0, samples = time.perf_counter(), 0
    for _ in range(args.steps):
        samples += common.step_samples(trainer.train_step())
    common.sync(device)
    secs = time.perf_counter() - t0
    out = {
        "encoder": encoder_name,
        "precision": precision,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "samples_per_second": samples / secs,
        "steps": args.steps,
    }
    if device.type == "cuda":
        out["peak_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_memory_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    print(f"{encoder_name:>18} {precision:>5}: {out['samples_per_second']:8.1f} samples/s"
          + (f", peak {out['peak_memory_allocated_mib']:.0f} MiB" if "peak_memory_allocated_mib" in out else ""),
          flush=True)
    del trainer, model, enc, streams
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.make_parser(__doc__)
    ap.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu (tiny smoke sizes)")
    ap.add_argument("--encoders", default="e5_small,bert_base_random")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--batch-size", type=int, default=32, help="rows per task per step (3 tasks per step)")
    ap.add_argument("--min-length", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--grad-accum-steps", type=int, default=1)
    ap.add_argument("--freeze-embeddings", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU on this machine; this benchmark measures GPU throughput and memory. "
              "Run it on a GPU machine, or pass --device cpu for a smoke check of the script at tiny sizes.",
              file=sys.stderr)
        raise SystemExit(2)
    if device.type == "cpu":
        args.steps, args.warmup_steps = min(args.steps, 3), min(args.warmup_steps, 1)
        args.min_length, args.max_length = min(args.min_length, 8), min(args.max_length, 16)
        args.batch_size = min(args.batch_size, 4)
    rows = [measure(e, p, args, device) for e in args.encoders.split(",") for p in args.precisions.split(",")]
    result = {
        "benchmark": "gpu",
        "command": common.command_line(__file__, argv),
        "device": str(device), "smoke_sizes": device.type == "cpu", "batch_size_per_task": args.batch_size,
        "tasks_per_step": len(TASKS), "lengths": [args.min_length, args.max_length], "compile": args.compile,
        "grad_accum_steps": args.grad_accum_steps, "freeze_embeddings": args.freeze_embeddings,
        "machine": common.machine(), "results": rows,
    }
    by = {(r["encoder"], r["precision"]): r for r in rows}
    result["bf16_over_fp32"] = {
        e: {
            "speedup": by[(e, "bf16")]["samples_per_second"] / by[(e, "fp32")]["samples_per_second"],
            **({"memory_ratio": by[(e, "bf16")]["peak_memory_allocated_mib"] / by[(e, "fp32")]["peak_memory_allocated_mib"]}
               if "peak_memory_allocated_mib" in by[(e, "fp32")] else {}),
        }
        for e in args.encoders.split(",") if (e, "bf16") in by and (e, "fp32") in by
    }
    common.write_result("gpu" if device.type == "cuda" else "gpu_cpu_smoke", result, args.out)
    return result


if __name__ == "__main__":
    main()

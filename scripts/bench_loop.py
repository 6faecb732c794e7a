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
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mtl.balancers import build_balancer  # noqa: E402
from mtl.data.batching import TaskBatchSampler, TaskStream  # noqa: E402
from mtl.data.loading import collate, load_task, tokenize_examples  # noqa: E402
from mtl.models.encoder import load_encoder  # noqa: E402
from mtl.models.heads import pool  # noqa: E402
from mtl.models.multitask import MultiTaskModel  # noqa: E402
from mtl.samplers import SAMPLERS  # noqa: E402
from mtl.training.optim import build_scheduler  # noqa: E402
from mtl.training.trainer import Trainer, TrainerSettings, resolve_device, resolve_precision  # noqa: E402

TASKS = ("ocnli", "ocemotion", "tnews")


# ----------------------------------------------------------------------------- shared bench helpers


def data_root() -> tuple[Path, str]:
    """The real data when present (MTL_DATA_DIR or ../shared/data/raw), else fixture files in a temp dir."""
    for cand in (os.environ.get("MTL_DATA_DIR"), REPO.parent / "shared" / "data" / "raw"):
        if cand and (Path(cand) / "tianchi" / "OCNLI_train1128.csv").exists():
            return Path(cand), "real"
    from mtl.data.fixtures import write_fixture_data

    root = Path(tempfile.mkdtemp(prefix="mtl-bench-data-"))
    return write_fixture_data(root, rows_per_task=400, seed=0), "fixtures"


def compose_cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from mtl.cli.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def write_result(name: str, result: dict[str, Any], out: str | None = None) -> Path:
    path = Path(out) if out else REPO / "outputs" / "bench" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=float), encoding="utf-8")
    print(json.dumps(result, indent=2, ensure_ascii=False, default=float))
    print(f"written to {path}")
    return path


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="e5_small", help="an encoder config name (configs/encoder/*.yaml)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per loop per repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--train-per-task", type=int, default=3000)
    ap.add_argument("--no-freeze", action="store_true", help="train the embedding matrix too")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    root, data_kind = data_root()
    cfg = compose_cfg([f"encoder={args.encoder}", f"data.root={root}", f"encoder.max_length={args.max_length}",
                       f"data.max_train_per_task={args.train_per_task}", "data.max_dev_per_task=10"])
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    enc_kwargs = dict(cfg.encoder.get("kwargs") or {})
    encoder, tokenizer = load_encoder(cfg.encoder.name_or_path, **enc_kwargs)
    if not args.no_freeze:
        encoder.get_input_embeddings().weight.requires_grad_(False)
    sets, labels = {}, {}
    for task in TASKS:
        td = load_task(task, cfg.tasks[task], cfg.data, seed=0)
        labels[task] = len(td.labels)
        sets[task] = tokenize_examples(td.train, tokenizer, args.max_length, cfg.data.cache_dir,
                                       [f"normalize={cfg.data.normalize}"])
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
    trainer = Trainer(model, build_balancer("equal", list(TASKS)), sampler(), streams, {}, settings,
                      tempfile.mkdtemp(prefix="mtl-bench-loop-"))
    # B: the hand-written loop, its own copies of everything (same seeds -> same batches)
    loaders = {t: iter(torch.utils.data.DataLoader(sets[t], batch_sampler=bs, collate_fn=coll, pin_memory=pin))
               for t, bs in batch_samplers().items()}
    hand = HandLoop(copy.deepcopy(encoder), labels, cfg.encoder.pooling, 0.1, loaders, sampler(), settings, device,
                    precision)
    del encoder

    def trainer_step() -> int:
        res = trainer.train_step()
        return sum(n for _, n in res.correct.values()) if res is not None else 0

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
            sync(device)
            t0, samples = time.perf_counter(), 0
            for _ in range(args.steps):
                samples += fn()
            sync(device)
            rep[name] = samples / (time.perf_counter() - t0)
        reps.append(rep)
        print(f"rep {r + 1}/{args.reps}: trainer {rep['trainer']:.1f} samples/s, hand loop {rep['hand_loop']:.1f} "
              f"samples/s, ratio {rep['trainer'] / rep['hand_loop']:.3f}", flush=True)
    med = {k: statistics.median(r[k] for r in reps) for k in loops}
    result = {
        "benchmark": "loop",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "encoder": args.encoder, "frozen_embeddings": not args.no_freeze, "max_length": args.max_length,
        "batch_size": args.batch_size, "steps_per_rep": args.steps, "reps": args.reps, "precision": precision,
        "device": str(device), "data": data_kind, "machine": machine(),
        "samples_per_second": {"per_rep": reps, "median": med},
        "ratio_trainer_over_hand_loop": {
            "of_medians": med["trainer"] / med["hand_loop"],
            # each repetition runs the two loops back to back: its ratio cancels the machine's drift
            "median_of_rep_ratios": statistics.median(r["trainer"] / r["hand_loop"] for r in reps),
            "geometric_mean_of_rep_ratios": statistics.geometric_mean(r["trainer"] / r["hand_loop"] for r in reps),
        },
        "target_ratio": 0.95,
    }
    write_result("loop", result, args.out)
    return result


if __name__ == "__main__":
    main()

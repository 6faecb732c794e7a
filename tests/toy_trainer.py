"""A fast in-memory Trainer (toy encoder, random token data) for loop-level tests of the scale features."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mtl.balancers import build_balancer
from mtl.data.batching import TaskBatchSampler, TaskStream
from mtl.data.loading import collate
from mtl.models.multitask import MultiTaskModel
from mtl.samplers import SAMPLERS
from mtl.training.trainer import Trainer, TrainerSettings
from tests.helpers import ToyEncoder

TASKS = {"a": 3, "b": 2, "c": 4}
VOCAB = 50


def single_thread():
    """(Generator for an autouse fixture.) Tiny models gain nothing from intra-op threads, and on a shared, busy CPU two OpenMP threads
    spin-waiting for each other can make a step 20x slower: the scale tests run single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def toy_rows(n: int, num_labels: int, seed: int, min_len: int = 3, max_len: int = 12) -> list[dict[str, Any]]:
    """Variable-length rows whose label is readable from the tokens (so a model can learn it)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        y = int(rng.integers(num_labels))
        length = int(rng.integers(min_len, max_len + 1))
        ids = [int(x) for x in rng.integers(5, VOCAB, size=length)]
        ids[0] = 1 + y  # a label token up front
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": y})
    return rows


def toy_trainer(
    run_dir: str | Path,
    balancer: str = "equal",
    sampler: str = "all_tasks",
    batch_size: int = 8,
    balancer_kwargs: dict[str, Any] | None = None,
    dropout: float = 0.0,
    **settings: Any,
) -> Trainer:
    torch.manual_seed(0)
    model = MultiTaskModel(ToyEncoder(vocab=VOCAB, hidden=8), TASKS, pooling="mean", dropout=dropout)
    tok = SimpleNamespace(pad_token_id=0, padding_side="right")
    coll = collate(tok)
    streams, dev = {}, {}
    for i, (t, n) in enumerate(TASKS.items()):
        rows = toy_rows(64, n, seed=i)
        streams[t] = TaskStream(rows, TaskBatchSampler(len(rows), batch_size, seed=100 + i), coll)
        dev[t] = DataLoader(toy_rows(20, n, seed=50 + i), batch_size=16, shuffle=False, collate_fn=coll)
    bal = build_balancer(balancer, list(TASKS), **(balancer_kwargs or {}))
    samp = SAMPLERS.get(sampler)({t: 64 for t in TASKS}, seed=0)
    base = {"max_steps": 10, "eval_every": 5, "log_every": 1, "lr": 1e-2, "head_lr": 1e-2, "warmup": 0.0,
            "progress": False, "device": "cpu", "precision": "fp32", "checkpoint_every": 0}
    base.update(settings)
    return Trainer(model, bal, samp, streams, dev, TrainerSettings(**base), run_dir)


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

"""Small stand-ins shared by tests: an HF-shaped toy encoder, random batches, and the setup of tiny
end-to-end runs (config composition, fixture-data-only environment)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

#: what every tiny end-to-end run shares: the random tiny encoder, mean pooling, a high flat learning rate
TINY_RUN = (
    "encoder=tiny_random", "encoder.pooling=mean", "trainer.progress=false",
    "trainer.precision=fp32",  # exact numerics for the comparisons; auto is bf16 on CPUs with native bf16
    "optim.lr=3e-3", "optim.head_lr=3e-3", "optim.warmup=0",
)


def compose_train(*overrides: str) -> Any:
    """The ``train`` config from ``mtl/conf/`` with Hydra ``overrides`` (a later value for a key wins)."""
    from mtl.config import compose_train as compose

    return compose(overrides)


def tiny_run_cfg(data_root: Path, *overrides: str) -> Any:
    """A tiny run on the fixture data under ``data_root``: :data:`TINY_RUN`, then ``overrides``."""
    return compose_train(*TINY_RUN, f"data.root={data_root}", *overrides)


def no_plots(*args: Any, **kwargs: Any) -> list:
    """Stands in for ``write_run_outputs`` where the plots are not what a test checks (saves time)."""
    return []


def tiny_run_env(monkeypatch: pytest.MonkeyPatch, *, plots: bool = True, one_thread: bool = False) -> Iterator[None]:
    """(Generator for an autouse fixture.) Runs read the fixture data only (``MTL_DATA_DIR`` unset);
    ``plots=False`` skips the end-of-run plots; ``one_thread=True`` runs torch single-threaded."""
    from mtl.training import run as run_mod
    from tests.toy_trainer import single_thread

    monkeypatch.delenv("MTL_DATA_DIR", raising=False)
    if not plots:
        monkeypatch.setattr(run_mod, "write_run_outputs", no_plots)
    if one_thread:
        yield from single_thread()
    else:
        yield


class ToyEncoder(nn.Module):
    """Embedding + one linear layer, returning ``last_hidden_state`` like a transformers model."""

    def __init__(self, vocab: int = 50, hidden: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.config = SimpleNamespace(hidden_size=hidden)
        self.emb = nn.Embedding(vocab, hidden)
        self.lin = nn.Linear(hidden, hidden)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(vocab, hidden, generator=g))
            self.lin.weight.copy_(torch.randn(hidden, hidden, generator=g) * 0.5)
            self.lin.bias.copy_(torch.randn(hidden, generator=g) * 0.1)

    def get_input_embeddings(self) -> nn.Module:
        return self.emb

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return SimpleNamespace(last_hidden_state=torch.tanh(self.lin(self.emb(input_ids))), pooler_output=None)


def random_batch(n: int, length: int, num_labels: int, seed: int, vocab: int = 50) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, vocab, (n, length), generator=g),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (n,), generator=g),
    }

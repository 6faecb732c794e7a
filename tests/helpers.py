"""Small stand-ins shared by tests: an HF-shaped toy encoder and random batches."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


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

"""Pooling of the encoder's token states and the per-task classification heads."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Pooling = Literal["cls", "mean", "pooler"]


def pool(last_hidden_state: Tensor, attention_mask: Tensor, method: Pooling, pooler_output: Tensor | None) -> Tensor:
    """Reduce ``[B, L, H]`` token states to one ``[B, H]`` vector per example."""
    if method == "cls":
        return last_hidden_state[:, 0]
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
        return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    if method == "pooler":
        if pooler_output is None:
            raise ValueError(
                "pooling=pooler but this encoder has no pooler layer (e.g. the embedded e5-small); "
                "use encoder.pooling=mean or cls"
            )
        return pooler_output
    raise ValueError(f"unknown pooling {method!r}; choose cls, mean or pooler")


class ClassificationHead(nn.Module):
    """Dropout then a linear layer, or a one-hidden-layer MLP (tanh, as BERT's classifier)."""

    def __init__(self, hidden_size: int, num_labels: int, kind: str = "linear", dropout: float = 0.1) -> None:
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"a classification head needs at least 2 labels, got {num_labels}")
        self.dropout = nn.Dropout(dropout)
        if kind == "linear":
            self.net: nn.Module = nn.Linear(hidden_size, num_labels)
        elif kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden_size, num_labels)
            )
        else:
            raise ValueError(f"unknown head kind {kind!r}; choose linear or mlp")

    def forward(self, rep: Tensor) -> Tensor:
        return self.net(self.dropout(rep))


def init_head_(head: nn.Module, std: float = 0.02) -> None:
    """BERT-style initialisation so heads start near uniform predictions."""
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)


@torch.no_grad()
def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""Pooling of the encoder's token states and the per-task heads.

Two levels (``docs/structures.md``):

* :func:`pool` reduces one layer's token states ``[B, L, H]`` to one vector per example (``cls``, ``mean``,
  ``max``, ``pooler``); it is what the shared representation holds when a task reads a pooled vector.
* :class:`TaskHead` is a task's whole head: the combination of the layers it reads (one layer, an ELMo-style
  :class:`ScalarMix`, or a concatenation), an optional network over the token states (:class:`SequenceHead`:
  BiLSTM, BiGRU, CNN), the pooling (:func:`pool_tokens`, with :class:`AttentionPooling`'s learned query),
  then dropout and the classifier (``linear`` or a one-hidden-layer ``mlp``). With one pooled vector and a
  linear or MLP classifier it holds exactly what :class:`ClassificationHead` holds (same parameter names).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Pooling = Literal["cls", "mean", "max", "pooler", "attention"]
#: poolings a run may choose (``encoder.pooling``, ``model.pooling``, ``model.heads.<task>.pooling``)
POOLINGS = ("cls", "mean", "max", "pooler", "attention")
#: the classifiers on a pooled vector
POOLED_HEADS = ("linear", "mlp")
#: the networks over a task's token states (then pooled, then a linear classifier)
SEQUENCE_HEADS = ("bilstm", "bigru", "cnn")
HEAD_KINDS = POOLED_HEADS + SEQUENCE_HEADS
CNN_KERNELS = (3, 5)


def pool(last_hidden_state: Tensor, attention_mask: Tensor, method: Pooling, pooler_output: Tensor | None) -> Tensor:
    """Reduce ``[B, L, H]`` token states to one ``[B, H]`` vector per example (no learned parameters)."""
    if method == "cls":
        return last_hidden_state[:, 0]
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
        return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    if method == "max":
        keep = attention_mask.unsqueeze(-1).bool()
        lowest = torch.finfo(last_hidden_state.dtype).min
        return last_hidden_state.masked_fill(~keep, lowest).max(1).values
    if method == "pooler":
        if pooler_output is None:
            raise ValueError(
                "pooling=pooler but this encoder has no pooler layer (e.g. the embedded e5-small); "
                "use encoder.pooling=mean or cls"
            )
        return pooler_output
    if method == "attention":
        raise ValueError("pooling=attention has a learned query: it belongs to a task's head (pool_tokens)")
    raise ValueError(f"unknown pooling {method!r}; choose one of {', '.join(POOLINGS)}")


class AttentionPooling(nn.Module):
    """``sum_i softmax_i(h_i · q / sqrt(d)) h_i`` over the unmasked tokens, ``q`` a learned query (starts
    at small random values: close to mean pooling)."""

    def __init__(self, dim: int, std: float = 0.02) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * std)

    def forward(self, states: Tensor, attention_mask: Tensor) -> Tensor:
        scores = (states @ self.query.to(states.dtype)).float() / math.sqrt(states.shape[-1])
        scores = scores.masked_fill(~attention_mask.bool(), float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0).to(states.dtype)  # a row without tokens: zeros
        return (weights.unsqueeze(-1) * states).sum(1)


def pool_tokens(states: Tensor, attention_mask: Tensor, method: str, attention: AttentionPooling | None = None) -> Tensor:
    """:func:`pool` inside a head (``attention``: with the head's learned query)."""
    if method == "attention":
        if attention is None:
            raise ValueError("pooling=attention needs the head's AttentionPooling")
        return attention(states, attention_mask)
    return pool(states, attention_mask, method, None)  # type: ignore[arg-type]


class ScalarMix(nn.Module):
    """ELMo's scalar mix (Peters et al., NAACL 2018, eq. 1): ``gamma · sum_j softmax(w)_j · h_j`` over the
    layers a task reads, ``w = 0`` and ``gamma = 1`` at the start (the plain average)."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(n_layers))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, layers: Sequence[Tensor]) -> Tensor:
        s = torch.softmax(self.weights, dim=0)
        out = sum(s[j].to(x.dtype) * x for j, x in enumerate(layers))
        return self.gamma.to(out.dtype) * out  # type: ignore[union-attr]


class SequenceHead(nn.Module):
    """A task's network over its token states ``[B, L, D]`` -> ``[B, L, out_dim]``.

    ``bilstm`` / ``bigru``: one bidirectional layer of ``hidden // 2`` units per direction over the packed
    sequence (the mask's lengths; right padding, as BERT tokenizers pad), run in float32 outside autocast;
    ``cnn``: convolutions of widths 3 and 5 (``hidden // 2`` channels each, ReLU, "same" length) over the
    tokens, padding positions zeroed first (Kim, EMNLP 2014, with the pooling left to the task's ``pooling``).
    """

    def __init__(self, kind: str, in_dim: int, hidden: int) -> None:
        super().__init__()
        if kind not in SEQUENCE_HEADS:
            raise ValueError(f"unknown sequence head {kind!r}; choose one of {', '.join(SEQUENCE_HEADS)}")
        self.kind = kind
        half = max(1, int(hidden) // 2)
        if kind in ("bilstm", "bigru"):
            rnn = nn.LSTM if kind == "bilstm" else nn.GRU
            self.rnn = rnn(in_dim, half, batch_first=True, bidirectional=True)
            self.out_dim = 2 * half
        else:
            self.convs = nn.ModuleList(nn.Conv1d(in_dim, half, k, padding=k // 2) for k in CNN_KERNELS)
            self.out_dim = half * len(CNN_KERNELS)

    def forward(self, states: Tensor, attention_mask: Tensor) -> Tensor:
        keep = attention_mask.unsqueeze(-1).to(states.dtype)
        if self.kind == "cnn":
            x = (states * keep).transpose(1, 2)
            return torch.cat([torch.relu(conv(x)) for conv in self.convs], dim=1).transpose(1, 2)
        total = states.shape[1]
        lengths = attention_mask.sum(1).clamp_min(1).cpu()
        with torch.autocast(device_type=states.device.type, enabled=False):
            packed = nn.utils.rnn.pack_padded_sequence(states.float(), lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=total)
        return out


class ClassificationHead(nn.Module):
    """Dropout then a linear layer, or a one-hidden-layer MLP (tanh, as BERT's classifier; ``inner`` units,
    default ``hidden_size``)."""

    def __init__(self, hidden_size: int, num_labels: int, kind: str = "linear", dropout: float = 0.1,
                 inner: int | None = None) -> None:
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"a classification head needs at least 2 labels, got {num_labels}")
        self.dropout = nn.Dropout(dropout)
        if kind == "linear":
            self.net: nn.Module = nn.Linear(hidden_size, num_labels)
        elif kind == "mlp":
            mid = int(inner or hidden_size)
            self.net = nn.Sequential(
                nn.Linear(hidden_size, mid), nn.Tanh(), nn.Dropout(dropout), nn.Linear(mid, num_labels)
            )
        else:
            raise ValueError(f"unknown head kind {kind!r}; choose one of {', '.join(HEAD_KINDS)}")

    def forward(self, rep: Tensor) -> Tensor:
        return self.net(self.dropout(rep))


class TaskHead(ClassificationHead):
    """One task's head over the views of the layers it reads (see the module docstring).

    ``combine``: ``single`` (one layer), ``mix`` (:class:`ScalarMix` over ``n_layers``) or ``concat`` (the
    views concatenated along the features). ``token_level``: the views are token states ``[B, L, H]`` (a
    sequence head, attention pooling, or max pooling of a mix), combined, run through the sequence head and
    pooled here; otherwise they are pooled vectors ``[B, H]`` and only combined (a mix of cls/mean vectors is
    the cls/mean vector of the mix: pooling and mixing are both linear).
    """

    def __init__(self, hidden_size: int, num_labels: int, kind: str = "linear", dropout: float = 0.1, *,
                 combine: str = "single", n_layers: int = 1, token_level: bool = False, pooling: str = "cls",
                 hidden: int | None = None) -> None:
        in_dim = hidden_size * n_layers if combine == "concat" else hidden_size
        seq_kind = kind if kind in SEQUENCE_HEADS else None
        if seq_kind is not None and not token_level:
            raise ValueError(f"head kind {kind!r} reads token states: token_level must be true")
        out_dim = in_dim
        seq = None
        if seq_kind is not None:
            seq = SequenceHead(seq_kind, in_dim, int(hidden or hidden_size))
            out_dim = seq.out_dim
        super().__init__(out_dim, num_labels, kind="linear" if seq_kind else kind, dropout=dropout, inner=hidden)
        self.kind, self.combine, self.token_level, self.pooling = kind, combine, bool(token_level), pooling
        if combine == "mix":
            self.mix = ScalarMix(n_layers)
        elif combine not in ("single", "concat"):
            raise ValueError(f"unknown layer combination {combine!r}")
        if seq is not None:
            self.seq = seq
        if token_level and pooling == "attention":
            self.attention = AttentionPooling(out_dim)

    def features(self, views: Sequence[Tensor], attention_mask: Tensor | None) -> Tensor:
        """The pooled vector the classifier reads, from the task's layer views."""
        if self.combine == "mix":
            x = self.mix(views)
        elif self.combine == "concat":
            x = torch.cat(list(views), dim=-1)
        else:
            x = views[0]
        if not self.token_level:
            return x
        if attention_mask is None:
            raise ValueError("this head reads token states: it needs the batch's attention_mask")
        if hasattr(self, "seq"):
            x = self.seq(x, attention_mask)
        return pool_tokens(x, attention_mask, self.pooling, getattr(self, "attention", None))

    def forward(self, rep: Tensor | Sequence[Tensor], attention_mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if isinstance(rep, Tensor):  # one pooled vector: the classifier alone
            return self.net(self.dropout(rep))
        return self.net(self.dropout(self.features(rep, attention_mask)))


def init_head_(head: nn.Module, std: float = 0.02) -> None:
    """BERT-style initialisation of a head's linear layers so heads start near uniform predictions."""
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)


@torch.no_grad()
def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

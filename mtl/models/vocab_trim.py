"""Trim a large input vocabulary to the tokens the data uses (``encoder.trim_vocab: true``).

multilingual-e5-small spends 96M of its 118M parameters on a 250k x 384 embedding matrix, most of
whose rows never occur in Chinese classification data. Trimming keeps the rows of the token ids
found in the tasks' train, dev (and test, when their files are there) data, plus the tokenizer's
special tokens, and puts an id remapping in front of the smaller matrix:

* the tokenizer is unchanged (same ids, same tokenisation cache);
* :class:`RemappedEmbedding` replaces ``encoder.get_input_embeddings()``: a ``remap`` buffer maps
  every original id to its row (ids not kept map to ``<unk>``'s row), then an ordinary embedding
  lookup; outputs are identical to the untrimmed model for every kept id;
* the ``remap`` buffer is in the model's ``state_dict``, so checkpoints carry it. To load a trimmed
  checkpoint into a freshly built (untrimmed) model, call :func:`restore_trimmed_embeddings` on the
  model with the checkpoint's state dict before ``load_state_dict``;
* freezing (``encoder.freeze_embeddings``) works as before: the trimmed matrix keeps the original
  ``requires_grad``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

REMAP = "remap"


class RemappedEmbedding(nn.Embedding):
    """``weight[remap[input_ids]]``: an embedding over a subset of an original vocabulary."""

    def __init__(
        self,
        remap: Tensor,
        weight: Tensor,
        padding_idx: int | None = None,
        requires_grad: bool = True,
    ) -> None:
        super().__init__(
            weight.shape[0], weight.shape[1], padding_idx=padding_idx, _weight=weight.detach().clone(),
            _freeze=not requires_grad, device=weight.device, dtype=weight.dtype,
        )
        self.register_buffer(REMAP, remap.to(device=weight.device, dtype=torch.long), persistent=True)

    @property
    def original_num_embeddings(self) -> int:
        return int(self.remap.shape[0])

    def forward(self, input_ids: Tensor) -> Tensor:
        return super().forward(self.remap[input_ids])

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, keep_ids: Sequence[int], unk_id: int) -> RemappedEmbedding:
        keep = torch.as_tensor(sorted(set(int(i) for i in keep_ids) | {int(unk_id)}), dtype=torch.long)
        n_old = emb.num_embeddings
        if isinstance(emb, RemappedEmbedding):  # trimming twice: compose the maps
            raise ValueError("the embedding is already trimmed")
        if int(keep.max()) >= n_old or int(keep.min()) < 0:
            raise ValueError(f"token ids outside the embedding's {n_old} rows: {int(keep.min())}..{int(keep.max())}")
        remap = torch.empty(n_old, dtype=torch.long)
        new_unk = int(torch.searchsorted(keep, torch.tensor(int(unk_id))))
        remap.fill_(new_unk)
        remap[keep] = torch.arange(len(keep))
        padding_idx = None if emb.padding_idx is None else int(remap[emb.padding_idx])
        with torch.no_grad():
            weight = emb.weight[keep.to(emb.weight.device)]
        return cls(remap, weight, padding_idx=padding_idx, requires_grad=emb.weight.requires_grad)

    def extra_repr(self) -> str:
        return f"{self.original_num_embeddings} -> {self.num_embeddings}, {self.embedding_dim}"


@dataclass
class TrimReport:
    original_rows: int
    kept_rows: int
    parameters_before: int
    parameters_after: int

    def summary(self) -> str:
        return (
            f"vocabulary trimmed to the data's tokens: {self.kept_rows:,} of {self.original_rows:,} embedding rows; "
            f"encoder parameters {self.parameters_before:,} -> {self.parameters_after:,}"
        )


def token_ids_in(datasets: Iterable[Any], column: str = "input_ids") -> np.ndarray:
    """Sorted unique token ids over the ``column`` of tokenised datasets (``datasets.Dataset`` or row lists)."""
    seen: set[int] = set()
    for ds in datasets:
        if ds is None:
            continue
        col = ds[column] if not isinstance(ds, list) else [r[column] for r in ds]
        arr = np.fromiter((i for row in col for i in row), dtype=np.int64)
        seen.update(np.unique(arr).tolist())
    return np.asarray(sorted(seen), dtype=np.int64)


def trim_vocabulary(encoder: nn.Module, tokenizer: Any, datasets: Iterable[Any]) -> TrimReport:
    """Replace ``encoder``'s input embeddings by a :class:`RemappedEmbedding` over the data's tokens."""
    emb = encoder.get_input_embeddings()
    if not isinstance(emb, nn.Embedding):
        raise TypeError(f"cannot trim an input embedding of type {type(emb).__name__}")
    before = sum(p.numel() for p in encoder.parameters())
    ids = set(token_ids_in(datasets).tolist())
    ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None)
    unk = tokenizer.unk_token_id if getattr(tokenizer, "unk_token_id", None) is not None else 0
    new = RemappedEmbedding.from_embedding(emb, sorted(ids), int(unk))
    encoder.set_input_embeddings(new)
    after = sum(p.numel() for p in encoder.parameters())
    report = TrimReport(emb.num_embeddings, new.num_embeddings, before, after)
    log.info("%s", report.summary())
    return report


def trim_for_run(encoder: nn.Module, tokenizer: Any, cfg: Any, datasets: Sequence[Any]) -> TrimReport:
    """What ``run()`` calls: the train/dev datasets given, plus each task's test files when they exist."""
    from mtl.data.loading import load_test_sets, tokenize_split

    extra: list[Any] = []
    for task in cfg.tasks:
        try:
            tests = load_test_sets(task, cfg.tasks[task], cfg.data)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.info("vocabulary trimming: no test files for %s (%s); train and dev only", task, exc)
            continue
        for examples in tests.values():
            if examples:
                extra.append(tokenize_split(examples, tokenizer, int(cfg.encoder.max_length), cfg.data))
    return trim_vocabulary(encoder, tokenizer, [*datasets, *extra])


def restore_trimmed_embeddings(model: nn.Module, state_dict: Mapping[str, Tensor]) -> int:
    """Give ``model`` the trimmed embeddings a checkpoint's ``state_dict`` was saved with.

    Call before ``model.load_state_dict(state_dict)`` when the model was built from the original
    encoder: every ``nn.Embedding`` whose ``<name>.remap`` is in the state dict is replaced by a
    :class:`RemappedEmbedding` of the saved shape. Returns how many were replaced.
    """
    replaced = 0
    for name, module in list(model.named_modules()):
        key = f"{name}.{REMAP}" if name else REMAP
        if not isinstance(module, nn.Embedding) or isinstance(module, RemappedEmbedding) or key not in state_dict:
            continue
        weight = state_dict[f"{name}.weight" if name else "weight"]
        remap = state_dict[key]
        padding_idx = None if module.padding_idx is None else int(remap[module.padding_idx])
        new = RemappedEmbedding(
            remap, torch.zeros(weight.shape, dtype=module.weight.dtype, device=module.weight.device),
            padding_idx=padding_idx, requires_grad=module.weight.requires_grad,
        )
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], new)
        replaced += 1
    return replaced

"""Predictions of a loaded checkpoint on examples: logits, or label indices, in the examples' order."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl.data.loading import collate, tokenize_examples
from mtl.data.readers import Example
from mtl.inference.checkpoint import LoadedCheckpoint
from mtl.models.multitask import ENCODER_INPUTS

__all__ = ["predict", "predict_logits"]


@torch.no_grad()
def predict_logits(
    ckpt: LoadedCheckpoint, task: str, examples: Sequence[Example], batch_size: int = 128
) -> torch.Tensor:
    """``(len(examples), num_labels)`` float logits on CPU, rows in the examples' order (batched by length)."""
    if task not in ckpt.labels:
        raise KeyError(f"the checkpoint has no head for task {task!r}; it has {', '.join(ckpt.tasks)}")
    out = torch.zeros(len(examples), len(ckpt.labels[task]))
    if not examples:
        return out
    ds = tokenize_examples(examples, ckpt.tokenizer, ckpt.max_length)
    lengths = ds["length"]
    order = sorted(range(len(ds)), key=lambda i: lengths[i])
    coll = collate(ckpt.tokenizer)
    model = ckpt.model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = coll([ds[i] for i in idx])
        inputs = {k: v.to(ckpt.device) for k, v in batch.items() if k in ENCODER_INPUTS}
        out[torch.tensor(idx)] = model(task, inputs).float().cpu()
    return out


def predict(ckpt: LoadedCheckpoint, task: str, examples: Sequence[Example], batch_size: int = 128) -> list[int]:
    """Predicted label indices (into ``ckpt.labels[task]``) for ``examples``, in their order."""
    return [int(i) for i in predict_logits(ckpt, task, examples, batch_size).argmax(-1).tolist()]

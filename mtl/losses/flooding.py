"""Flooding: keep the training loss floating around a level ``b`` instead of driving it to zero.

Paper: Ishida, Yamane, Sakai, Niu & Sugiyama, "Do We Need Zero Training Loss After Achieving Zero Training
Error?", ICML 2020, https://arxiv.org/abs/2002.08709.

Formula (``L`` the batch mean loss, ``b ≥ 0`` the flood level)::

    L̃ = |L − b| + b

Above ``b`` the gradient is unchanged; below ``b`` it is reversed (gradient ascent back up to ``b``).
``b = 0`` is the plain loss (nothing is computed).

Two equivalent ways, combinable with every loss:

* the ``flood`` option every registered loss has (``TaskLoss(flood=b)``; ``loss=focal loss.flood=0.05`` in
  the planned config interface): the config way;
* the wrapper :class:`Flooded` ``(inner, b)``, for Python code composing losses (also any module or
  function ``(logits, targets) -> mean loss``).

Both flood only the ``reduction="mean"`` value: flooding is defined on the batch mean, so
``reduction="none"`` (per-row) and ``"sum"`` return the unflooded values.

Caveat for callers: the mean is that of the call, so under gradient accumulation (the batch split in
micro-batches, each loss scaled by its fraction) each micro-batch is flooded on its own mean. With equal
micro-batches that differs from flooding the full batch only when some micro-batch means fall on the other
side of ``b``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from mtl.losses.base import TaskLoss, _check_reduction, flood


class Flooded(nn.Module):
    """``inner`` with flooding at level ``b`` applied to its batch-mean result."""

    def __init__(self, inner: nn.Module | Callable[[Tensor, Tensor], Tensor], b: float) -> None:
        super().__init__()
        if not (isinstance(b, int | float) and b >= 0 and b == b and b != float("inf")):
            raise ValueError(f"Flooded: the flood level b must be a finite number >= 0, got {b!r}")
        if isinstance(inner, TaskLoss) and inner.flood:
            raise ValueError(f"Flooded: the inner loss {inner.name!r} floods already (flood={inner.flood})")
        self.inner, self.b = inner, float(b)

    @property
    def multi_label(self) -> bool:
        return bool(getattr(self.inner, "multi_label", False))

    def forward(self, logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        _check_reduction(reduction)
        if isinstance(self.inner, TaskLoss):
            out = self.inner(logits, targets, reduction)
        elif reduction == "mean":
            out = self.inner(logits, targets)
        else:
            raise ValueError(f"Flooded: reduction={reduction!r} needs a TaskLoss inside (it takes `reduction`)")
        return flood(out, self.b) if reduction == "mean" else out

    def extra_repr(self) -> str:
        return f"b={self.b}"

"""The task-loss contract, the registry and the shared helpers (class prior, class weights, flooding).

A task loss is a :class:`torch.nn.Module` built as ``cls(num_labels, class_counts=None, **options)``:

* ``num_labels`` and ``class_counts`` (the training label counts, one per class) are supplied by the run;
* every other constructor argument is a keyword option with a simple default, so the config layer can
  generate a ``loss/<name>`` node from the signature (as it does for balancers). Subclasses forward
  ``**kwargs`` to :class:`TaskLoss`, whose own option is ``flood`` (see :func:`flood`).

Calling it: ``loss(logits [N, C] float, targets [N] long) -> scalar`` (the batch mean);
``loss(logits, targets, reduction="none") -> [N]`` gives the per-row losses and ``reduction="sum"`` their
sum. Multi-label losses (``multi_label = True``, e.g. ``zlpr``) take multi-hot targets ``[N, C]``.

Zero counts: a class with zero training count is treated as if it had **one** example wherever a count
enters a weight or a log-prior (``class_balanced``, ``focal``'s α from counts, ``logit_adjusted``), so
nothing divides by zero and no weight or logit becomes infinite. :func:`class_prior` itself returns the
plain proportions unless given ``min_count``. (All counts zero, e.g. an empty training split, thus gives
uniform weights and a uniform prior: the losses fall back to plain cross-entropy.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtl.registry import Registry, constructor_options

REDUCTIONS = ("mean", "sum", "none")
#: constructor arguments the run supplies (not config options): for mtl.config.RUN_SUPPLIED["loss"]
RUN_SUPPLIED = frozenset({"num_labels", "class_counts"})
WEIGHT_MODES = ("effective_number", "inverse_frequency")


def _counts_array(counts: Sequence[float] | Tensor) -> Tensor:
    """``counts`` as a 1-D float64 CPU tensor, refusing negative or non-finite entries."""
    out = torch.as_tensor(counts, dtype=torch.float64).detach().cpu().flatten()
    if out.numel() == 0:
        raise ValueError("class counts are empty")
    if not bool(torch.isfinite(out).all()) or bool((out < 0).any()):
        raise ValueError(f"class counts must be finite and non-negative, got {out.tolist()}")
    return out


def class_prior(counts: Sequence[float] | Tensor, min_count: float = 0.0) -> Tensor:
    """The label prior ``π_c = n_c / Σ_k n_k`` (float64), each count first raised to at least ``min_count``.

    With the default ``min_count=0`` a class with zero count gets prior 0; the losses call it with
    ``min_count=1`` so that ``log π`` stays finite. All counts zero (after ``min_count``) is a ValueError.
    """
    n = _counts_array(counts).clamp(min=float(min_count))
    total = float(n.sum())
    if total <= 0:
        raise ValueError(f"class counts sum to {total}: no prior (give counts from a non-empty training split)")
    return n / total


def class_counts_from_labels(labels: Sequence[int] | Tensor, num_labels: int) -> list[int]:
    """How many times each of ``range(num_labels)`` occurs in ``labels`` (the ``class_counts`` of a run)."""
    y = torch.as_tensor(labels, dtype=torch.long).flatten()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_labels):
        raise ValueError(f"labels must lie in [0, {num_labels}), got [{int(y.min())}, {int(y.max())}]")
    return [int(c) for c in torch.bincount(y, minlength=num_labels).tolist()]


def class_balanced_weights(counts: Sequence[float] | Tensor, mode: str = "effective_number",
                           beta: float = 0.9999) -> Tensor:
    """Per-class weights from training counts, normalised to average 1 over the classes (float64).

    ``effective_number`` (Cui et al., CVPR 2019): ``w_c ∝ (1 − β) / (1 − β^{n_c})``;
    ``inverse_frequency``: ``w_c ∝ 1 / n_c``. Zero counts are raised to 1 first.
    """
    n = _counts_array(counts).clamp(min=1.0)
    if mode == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must lie in [0, 1) for mode='effective_number', got {beta}")
        # 1 - β^n computed as -expm1(n log β): accurate for β close to 1 (β=0 gives weights all 1)
        effective = -torch.expm1(n * math.log(beta)) if beta > 0 else torch.ones_like(n)
        raw = (1.0 - beta) / effective
    elif mode == "inverse_frequency":
        raw = 1.0 / n
    else:
        raise ValueError(f"unknown class-weight mode {mode!r}; choose one of {list(WEIGHT_MODES)}")
    return raw * (len(raw) / raw.sum())


def flood(loss: Tensor, level: float) -> Tensor:
    """Flooding (Ishida et al., ICML 2020): ``|L − b| + b``; ``b = 0`` returns ``loss`` itself."""
    if level == 0:
        return loss
    return (loss - level).abs() + level


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")


class TaskLoss(nn.Module):
    """Base of every task loss: options checking, the reduction argument and the ``flood`` option.

    Subclasses implement :meth:`compute` (the unflooded loss under ``reduction``). :meth:`forward` floods
    the ``"mean"`` result when ``flood > 0`` (flooding is defined on the batch mean; ``"none"`` and
    ``"sum"`` return the unflooded values).

    Buffers (class weights, log-prior) are registered, so ``loss.to(device)`` moves them once; a loss
    called on another device copies them on each call.
    """

    #: targets are multi-hot ``[N, C]`` rather than class indices ``[N]``
    multi_label: ClassVar[bool] = False
    #: the loss cannot be built without ``class_counts``
    needs_class_counts: ClassVar[bool] = False
    registry_name: ClassVar[str]

    def __init__(self, num_labels: int, class_counts: Sequence[int] | None = None, flood: float = 0.0) -> None:
        super().__init__()
        if int(num_labels) < 1:
            raise ValueError(f"loss {self.name!r}: num_labels must be at least 1, got {num_labels}")
        self.num_labels = int(num_labels)
        if not (isinstance(flood, int | float) and math.isfinite(flood) and flood >= 0):
            raise ValueError(f"loss {self.name!r}: flood must be a finite number >= 0, got {flood!r}")
        self.flood = float(flood)
        counts = None if class_counts is None or len(class_counts) == 0 else list(class_counts)
        if counts is not None and len(counts) != self.num_labels:
            raise ValueError(
                f"loss {self.name!r}: class_counts has {len(counts)} entries for {self.num_labels} labels"
            )
        if counts is not None:
            try:
                _counts_array(counts)
            except ValueError as exc:
                raise ValueError(f"loss {self.name!r}: {exc}") from None
        self.class_counts = counts

    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", type(self).__name__)

    def require_counts(self, option: str) -> list[int]:
        """The run's class counts, or a ValueError naming this loss and the option that needs them."""
        if self.class_counts is None:
            raise ValueError(
                f"loss {self.name!r} ({option}) needs class_counts, the training label counts of the task "
                f"({self.num_labels} numbers); got none or an empty list"
            )
        return self.class_counts

    def compute(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        _check_reduction(reduction)
        if logits.dim() != 2 or logits.shape[-1] != self.num_labels:
            raise ValueError(
                f"loss {self.name!r}: logits must be [N, {self.num_labels}], got {list(logits.shape)}"
            )
        out = self.compute(logits.float(), targets, reduction)
        return flood(out, self.flood) if reduction == "mean" else out

    def _on(self, buffer: Tensor, like: Tensor) -> Tensor:
        return buffer if buffer.device == like.device else buffer.to(like.device)

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}, flood={self.flood}"


LOSSES: Registry[TaskLoss] = Registry("loss")
register_loss = LOSSES.register


def loss_options(cls: type[TaskLoss] | str) -> dict[str, Any]:
    """The keyword options ``cls(num_labels, class_counts, **options)`` accepts, with their defaults.

    Walks the constructors up to :class:`TaskLoss` while they forward ``**kwargs`` (so ``flood`` is
    everyone's option); ``num_labels`` and ``class_counts`` (supplied by the run) are left out.
    """
    klass = LOSSES.get(cls) if isinstance(cls, str) else cls
    return constructor_options(klass, supplied=RUN_SUPPLIED)

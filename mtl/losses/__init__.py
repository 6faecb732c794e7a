"""Task losses: a registry of ``(logits [N, C], targets) -> loss`` modules, chosen per run or per task.

Layout (one module per loss, each with its paper, formula and knobs in its docstring; docs/losses.md):

- :mod:`mtl.losses.base`: the contract (:class:`TaskLoss`), the registry (``LOSSES``, ``register_loss``)
  and the helpers (:func:`class_prior`, :func:`class_balanced_weights`, :func:`class_counts_from_labels`,
  :func:`flood`).
- ``ce``, ``label_smoothing``, ``class_balanced``, ``focal``, ``logit_adjusted``, ``zlpr`` (multi-label):
  :mod:`mtl.losses.ce`, ... one file each; flooding (the ``flood`` option of every loss, and the
  :class:`Flooded` wrapper) in :mod:`mtl.losses.flooding`.

Importing this package registers every built-in loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtl.losses import ce, class_balanced, focal, label_smoothing, logit_adjusted, zlpr  # noqa: F401
from mtl.losses.base import (
    LOSSES,
    RUN_SUPPLIED,
    TaskLoss,
    class_balanced_weights,
    class_counts_from_labels,
    class_prior,
    flood,
    loss_options,
    register_loss,
)
from mtl.losses.flooding import Flooded
from mtl.registry import check_options

__all__ = [
    "LOSSES",
    "RUN_SUPPLIED",
    "Flooded",
    "TaskLoss",
    "build_loss",
    "class_balanced_weights",
    "class_counts_from_labels",
    "class_prior",
    "flood",
    "loss_options",
    "register_loss",
]


def build_loss(name: str, num_labels: int, class_counts: Sequence[int] | None = None, **options: Any) -> TaskLoss:
    """Instantiate a registered loss by name (unknown names list the registered ones).

    ``options`` are the rest of the ``loss`` config node, so ``build_loss(**node, num_labels=C,
    class_counts=counts)`` builds a node's loss (its ``name`` key is the loss name); an option the loss
    does not take is a ``TypeError`` naming it and the options it does take.
    ``class_counts``: the task's training label counts (:func:`class_counts_from_labels`); losses that need
    them raise a ``ValueError`` naming the loss and option when it is missing or empty.
    """
    cls = LOSSES.get(name)
    check_options("loss", name, options, loss_options(cls))
    return cls(num_labels, class_counts, **options)

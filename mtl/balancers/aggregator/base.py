"""The aggregator contract: the combined update from the task gradients, not a weighting of them.

A weighting (every method of :mod:`mtl.balancers.loss` and :mod:`mtl.balancers.gramian`) returns ``T``
weights and the update is ``sum_t w_t g_t``. Some methods are not of that form (torchjd calls them
*aggregators*: a ``T x D`` matrix of task gradients in, one ``D`` vector out): GradDrop keeps or drops
every coordinate of every task gradient by a random sign vote, MoCo applies momentum-tracked gradients.
They read ``BalanceInput.gradients`` (``needs_gradients``) and return an :class:`Aggregation`:

* ``coefficients`` ``C`` (``T x D``), per-task, per-coordinate weights, the update being
  ``sum_t C_t * g_t`` (a weighting is the special case ``C_t = w_t``). This is the form the
  ``representation`` source can apply: every task's representation gradient goes back through its own
  graph (the tasks' batches hold different sentences), multiplied by its row of ``C`` (broadcast over the
  batch rows), in the one encoder backward of the step.
* or the ``update`` itself (``D``), which only the ``parameters`` source can apply (it writes the shared
  parameters' ``.grad``). An update that is not a per-coordinate weighting of this step's gradients (MoCo's
  tracked gradients) is therefore parameters-only: such a class lists ``sources = ("parameters",)`` and
  its constructor refuses the representation.

``weights`` (``T``) is what the step reports and logs as the task weights (a per-task summary: MoCo's
``T lambda``, GradDrop's kept share of each gradient). The engine still does one backward per task graph.

Common behaviour of :meth:`Aggregator.aggregate` (what the engine calls; :meth:`compute` returns its
``weights``): it checks the shapes and remembers the input (``last_input``, ``last_weights``); a step
with non-finite gradients or losses gets the plain sum (all coefficients 1; the trainer then skips the
step) and leaves the method's state untouched.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, Balancer, GradientSource

__all__ = ["Aggregation", "Aggregator", "finite_gradients"]


def finite_gradients(inp: BalanceInput) -> bool:
    """Whether every task gradient is finite, read off the Gramian when there is one (``T x T`` instead of a
    pass over ``T x D``: a non-finite entry makes its row's squared norm inf or NaN)."""
    if inp.gramian is not None:
        return bool(torch.isfinite(inp.gramian).all())
    return inp.gradients is not None and bool(torch.isfinite(inp.gradients).all())


@dataclass
class Aggregation:
    """What an aggregator returns for one step (rows and coordinates as in ``BalanceInput.gradients``)."""

    weights: Tensor  #: [T] float32 on the CPU: the per-task summary the step reports and logs
    coefficients: Tensor | None = None  #: [T, D] per-coordinate weights: update = sum_t C_t * g_t
    update: Tensor | None = None  #: [D] the combined update itself (parameters source only)

    def combined(self, gradients: Tensor) -> Tensor:
        """The update ``d`` (a new tensor): ``update`` when given, else ``sum_t C_t * g_t``."""
        if self.update is not None:
            return self.update
        assert self.coefficients is not None
        return (self.coefficients * gradients).sum(0)


class Aggregator(Balancer):
    """Base of the methods whose update is not a weighting of the step's task gradients.

    Subclasses implement :meth:`aggregation` (finite gradients and losses, shapes checked) and may
    restrict ``sources``.
    """

    needs_gramian = True  # a gradient-level method: every task each step, the engine's gradient modes
    needs_gradients = True
    #: the gradient sources the method is defined on (the constructor refuses the others)
    sources: ClassVar[tuple[GradientSource, ...]] = ("representation", "parameters")

    def __init__(self, task_names: Sequence[str], source: GradientSource | None = None) -> None:
        super().__init__(task_names, source=source)
        if self.source not in self.sources:
            raise ValueError(
                f"balancer {self.registry_name!r} supports source={' or '.join(self.sources)}, not "
                f"{self.source!r}: on the representation the engine can only apply per-coordinate weights of "
                "this step's task gradients (each task's representation gradient goes back through its own graph)"
            )

    def aggregation(self, inp: BalanceInput) -> Aggregation:  # pragma: no cover - abstract
        raise NotImplementedError

    def weights(self, inp: BalanceInput) -> Tensor:
        return self.aggregate(inp).weights

    def compute(self, inp: BalanceInput) -> Tensor:
        """The per-task summary weights of :meth:`aggregate` (for tools that only want weights)."""
        return self.aggregate(inp).weights

    def aggregate(self, inp: BalanceInput) -> Aggregation:
        """Validate and record the step's aggregation (``last_input``, ``last_weights``); what the engine calls."""
        grads = inp.gradients
        if grads is None or grads.dim() != 2 or grads.shape[0] != len(inp.tasks):
            shape = None if grads is None else tuple(grads.shape)
            raise ValueError(
                f"balancer {self.registry_name!r} needs the task gradients as a [{len(inp.tasks)}, D] matrix "
                f"(BalanceInput.gradients), got {shape}"
            )
        self.index(inp.tasks)  # reject tasks this balancer was not built for
        self.last_input = inp
        if not (finite_gradients(inp) and bool(torch.isfinite(inp.losses).all())):
            warnings.warn(
                f"balancer {self.registry_name!r}: non-finite gradients or losses, plain sum for this step",
                RuntimeWarning,
                stacklevel=2,
            )
            ones = torch.ones(len(inp.tasks))
            if self.source == "representation":
                out = Aggregation(ones, coefficients=torch.ones_like(grads))
            else:  # no T x D allocation on the parameters
                out = Aggregation(ones, update=grads.sum(0))
        else:
            out = self.aggregation(inp)
        t, d = grads.shape
        if out.weights.shape != (t,):
            raise ValueError(f"balancer {self.registry_name!r} returned weights of shape {tuple(out.weights.shape)}")
        if out.coefficients is None and out.update is None:
            raise ValueError(f"balancer {self.registry_name!r} returned neither coefficients nor an update")
        if out.coefficients is not None and out.coefficients.shape != (t, d):
            raise ValueError(f"balancer {self.registry_name!r}: coefficients {tuple(out.coefficients.shape)}, "
                             f"expected {(t, d)}")
        if out.update is not None and out.update.shape != (d,):
            raise ValueError(f"balancer {self.registry_name!r}: update {tuple(out.update.shape)}, expected {(d,)}")
        out.weights = out.weights.detach().to("cpu", torch.float32)
        self.last_weights = {k: float(x) for k, x in zip(inp.tasks, out.weights.tolist(), strict=True)}
        return out

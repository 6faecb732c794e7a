"""The common base of the Gramian-level methods: "Gramian -> weights", with shared safeguards.

Each method produces an update that is a linear combination ``d = sum_t w_t g_t`` of the task
gradients, with coefficients computable from the inner products ``G = J J^T`` alone (the insight
behind torchjd's Weighting/Aggregator split). The trainer hands over ``G`` (on the shared
representation by default, MGDA-UB style, or on all shared parameters: ``source``) and applies
``sum_t w_t L_t``, whose gradient on the shared part is ``d``.

Common behaviour of :class:`GramianBalancer`:

- the numerics run in float64 on the CPU; weights come back as float32 on the Gramian's device;
- a Gramian with inf/NaN entries gives all weights 1 (plain sum, so an AMP ``GradScaler``
  sees the overflow and skips the step) and leaves any internal state untouched;
- (numerically) zero gradients never cause a division by zero: each method documents what
  it gives them.

``gradnorm`` and ``grad_norm_normalized`` need only the diagonal (the gradient norms, from
:func:`input_gradient_norms`) and subclass :class:`~mtl.balancers.base.Balancer` directly.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, Balancer
from mtl.balancers.gramian.linalg import gradient_norms, prepare_gramian

__all__ = ["GramianBalancer", "SeededMixin", "input_gradient_norms"]


class GramianBalancer(Balancer):
    """Base for methods that map the Gramian of task gradients to weights.

    Subclasses implement :meth:`gramian_weights` on a float64 CPU Gramian (rows in the order of
    ``inp.tasks``) and return float64 weights.
    """

    needs_gramian = True

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def weights(self, inp: BalanceInput) -> Tensor:
        if inp.gramian is None:
            raise ValueError(f"balancer {self.registry_name!r} needs the Gramian of task gradients")
        if inp.gramian.shape != (len(inp.tasks), len(inp.tasks)):
            raise ValueError(
                f"balancer {self.registry_name!r} got a Gramian of shape {tuple(inp.gramian.shape)} "
                f"for {len(inp.tasks)} tasks"
            )
        device = inp.gramian.device
        g = prepare_gramian(inp.gramian)
        if g is None:
            warnings.warn(
                f"balancer {self.registry_name!r}: non-finite Gramian, using weights 1 for this step",
                RuntimeWarning,
                stacklevel=2,
            )
            return torch.ones(len(inp.tasks), dtype=torch.float32, device=device)
        w = self.gramian_weights(g, inp)
        if not bool(torch.isfinite(w).all()):
            raise FloatingPointError(f"balancer {self.registry_name!r} produced non-finite weights {w.tolist()}")
        return w.to(device=device, dtype=torch.float32)


class SeededMixin:
    """A private ``torch.Generator`` for random task orders, checkpointed via ``extra_state``."""

    _gen: torch.Generator

    def _init_generator(self, seed: int) -> None:
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(int(seed))

    def get_extra_state(self) -> dict[str, Any]:
        return {"rng_state": self._gen.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state and "rng_state" in state:
            self._gen.set_state(state["rng_state"])


def input_gradient_norms(inp: BalanceInput) -> Tensor:
    """``||g_i|| = sqrt(G_ii)`` from the step's Gramian (float32; tiny negative round-off clipped)."""
    assert inp.gramian is not None
    return gradient_norms(inp.gramian.detach().to(torch.float32))

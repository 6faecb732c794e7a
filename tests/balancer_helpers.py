"""Shared helpers of the balancer tests (``tests/test_balancers_*.py``, one file per method).

Expected numbers in those tests are worked out by hand (written as literals or as the closed-form
formula of the method on the given numbers), never by re-running the implementation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtl.balancers import BalanceInput, Balancer, build_balancer

REPO = Path(__file__).resolve().parents[1]
#: the tasks of the Gramian-level tests (``make(name, n)`` takes the first ``n``)
GRAD_TASKS = ["a", "b", "c", "d", "e"]


def config_dir(group: str) -> Path:
    """``mtl/conf/<group>`` or, before the configs moved there, ``configs/<group>``."""
    for cand in (REPO / "mtl" / "conf" / group, REPO / "configs" / group):
        if cand.is_dir():
            return cand
    return REPO / "mtl" / "conf" / group


def inp(
    tasks: list[str],
    losses: list[float],
    step: int = 0,
    gramian: list[list[float]] | Tensor | None = None,
    counts: dict[str, tuple[int, int]] | None = None,
    max_steps: int = 1000,
) -> BalanceInput:
    """A loss-level test input (``gramian`` as float64 when given)."""
    g = None if gramian is None else torch.as_tensor(gramian, dtype=torch.float64)
    return BalanceInput(
        tasks=list(tasks),
        losses=torch.tensor(losses, dtype=torch.float32),
        step=step,
        max_steps=max_steps,
        gramian=g,
        counts=dict(counts or {}),
    )


def w_list(b: Balancer, x: BalanceInput) -> list[float]:
    return b.compute(x).detach().double().tolist()


def make(name: str, n: int, **kwargs: Any) -> Balancer:
    """A Gramian-level balancer over the first ``n`` of :data:`GRAD_TASKS`."""
    if name == "primary_auxiliary":
        kwargs.setdefault("primary", GRAD_TASKS[0])
    return build_balancer(name, GRAD_TASKS[:n], **kwargs)


def inp_for(gram: Tensor, tasks: list[str] | None = None, losses: Tensor | None = None,
            gradients: Tensor | None = None, step: int = 0) -> BalanceInput:
    """A Gramian-level input; ``gradients`` (the rows whose Gramian ``gram`` is) for methods that read them."""
    n = gram.shape[0]
    tasks = tasks or GRAD_TASKS[:n]
    return BalanceInput(
        tasks=tasks,
        losses=torch.ones(n) if losses is None else losses,
        step=step,
        max_steps=100,
        gramian=gram,
        gradients=None if gradients is None else gradients.to(torch.float32),
    )


def weights_of(bal: Balancer, jac: Tensor, **kw: Any) -> Tensor:
    """The weights for the Jacobian ``jac`` (rows = task gradients, also handed over as the gradients
    themselves), checked float32 and as float64."""
    w = bal.compute(inp_for(jac @ jac.T, gradients=jac, **kw))
    assert w.dtype == torch.float32 and w.shape == (jac.shape[0],)
    return w.double()


def rand_jac(t: int, n: int, seed: int) -> Tensor:
    return torch.randn(t, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def nnls():
    from mtl.balancers.gramian.torchjd_adapter import nnls_projector

    return nnls_projector()

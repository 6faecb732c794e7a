"""Every loss-level method (and the two that need only the Gramian's diagonal): the common contract.

State round-trips, one-task steps, refusals, non-finite steps, and the hooks driven as the trainer drives
them (``compute`` remembers its input; the hooks take no arguments).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from mtl.balancers import BalanceInput, Balancer, build_balancer
from tests.balancer_helpers import inp

TASKS = ["a", "b", "c"]
OURS = [
    "log_loss",
    "initial_loss",
    "grad_norm_normalized",
    "uncertainty",
    "gradnorm",
    "dwa",
    "dtp",
    "rlw",
    "famo",
    "imtl_l",
    "gls",
    "stch",
    "db_mtl",
    "go4align",
    "igb",
]
GRAMIAN_METHODS = {"grad_norm_normalized", "gradnorm", "db_mtl"}


def _make(name: str) -> Balancer:
    options: dict[str, dict[str, Any]] = {"dwa": {"window": 2}, "stch": {"warmup_steps": 2, "nadir_steps": 2},
                                          "igb": {"warmup_steps": 2, "base_steps": 2},
                                          "go4align": {"step_size": 0.1}}
    kwargs = options.get(name, {})
    return build_balancer(name, TASKS, **kwargs)


def _stream(name: str, n: int, start: int = 0, seed: int = 0) -> list[BalanceInput]:
    """Steps alternating one-task and all-task inputs (all tasks for Gramian methods)."""
    rng = np.random.default_rng(seed)
    out = []
    for step in range(start, start + n):
        tasks = TASKS if (name in GRAMIAN_METHODS or step % 3 == 2) else [TASKS[step % 3]]
        losses = np.exp(rng.normal(size=len(tasks)) - 0.02 * step).tolist()
        jac = rng.normal(size=(len(tasks), 4))
        accuracy = {t: float(rng.uniform(0.2, 0.9)) for t in TASKS[:2]}
        counts = {t: (round(100 * accuracy.get(t, 0.5)), 100) for t in tasks}
        out.append(inp(tasks, losses, step, jac @ jac.T, counts))
    return out


def _run(b: Balancer, stream: list[BalanceInput]) -> list[list[float]]:
    opt = torch.optim.SGD(b.optimizer_param_groups(), lr=0.05) if b.optimizer_param_groups() else None
    out = []
    for x in stream:
        if opt is not None:
            opt.zero_grad()
        w = b.compute(x)
        assert w.shape == (len(x.tasks),) and bool(torch.isfinite(w).all())
        out.append(w.detach().tolist())
        reg = b.regularizer()
        if w.requires_grad:
            ((w * x.losses).sum() + (reg if reg is not None else 0.0)).backward()
        b.before_optimizer_step()
        if opt is not None:
            opt.step()
        b.after_optimizer_step()
    return out


def _flat(rows: list[list[float]]) -> list[float]:
    return [x for row in rows for x in row]


def test_all_names_registered_and_built_by_name() -> None:
    from mtl.balancers import BALANCERS

    for name in OURS:
        assert name in BALANCERS
        b = build_balancer(name, TASKS)
        assert isinstance(b, BALANCERS.get(name))
        assert b.registry_name == name
    assert BALANCERS.get("grad_norm_normalized").needs_gramian
    assert BALANCERS.get("gradnorm").needs_gramian
    assert not any(BALANCERS.get(n).needs_gramian for n in set(OURS) - GRAMIAN_METHODS)


@pytest.mark.parametrize("name", OURS)
def test_state_dict_round_trip(name: str) -> None:
    b = _make(name)
    _run(b, _stream(name, 9))
    state = b.state_dict()
    # rlw: a different seed in the fresh instance; the checkpointed generator state wins
    fresh = build_balancer("rlw", TASKS, seed=7) if name == "rlw" else _make(name)
    fresh.load_state_dict(state)
    nxt = _stream(name, 6, start=9, seed=1)
    expected, got = _flat(_run(b, nxt)), _flat(_run(fresh, nxt))
    assert got == pytest.approx(expected, rel=1e-6)
    # and the history mattered: a never-trained instance gives different weights (except dtp)
    if name not in ("dtp", "log_loss", "grad_norm_normalized", "gls", "db_mtl"):
        assert _flat(_run(_make(name), nxt)) != pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", sorted(set(OURS) - GRAMIAN_METHODS))
def test_one_task_steps_touch_only_that_task(name: str) -> None:
    b = _make(name)
    for step in range(6):
        task = TASKS[step % 2]
        w = b.compute(inp([task], [1.0 + step], step, counts={task: (3, 5)}))
        b.after_optimizer_step()
        assert w.shape == (1,)
    assert b.last_weights.keys() == {TASKS[5 % 2]}
    with pytest.raises(KeyError, match="not built for"):
        b.compute(inp(["zzz"], [1.0], 6))


@pytest.mark.parametrize("name", sorted(GRAMIAN_METHODS))
def test_gramian_methods_refuse_without_gramian(name: str) -> None:
    with pytest.raises(ValueError, match="Gramian"):
        _make(name).compute(inp(TASKS, [1.0, 1.0, 1.0]))


@pytest.mark.parametrize("name", ["initial_loss", "gradnorm", "dwa", "famo", "dtp", "stch", "go4align", "igb"])
def test_non_finite_loss_step_leaves_no_trace(name: str) -> None:
    """The trainer skips a step with a non-finite loss (after ``compute``): history must ignore it."""
    clean = _stream(name, 8, seed=3)
    clean = [x for x in clean if x.step != 1]
    with_nan = _stream(name, 8, seed=3)
    bad = with_nan[1]
    bad.losses = torch.full_like(bad.losses, float("nan"))
    a, b = _make(name), _make(name)
    expected = _flat(_run(a, clean))
    got = []
    for x in with_nan:
        if x.step == 1:
            b.compute(x)  # no hooks, no optimiser step: what the trainer does
            continue
        got.extend(_run(b, [x])[0])
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", [*OURS, "equal", "static", "pcgrad"])
def test_compute_remembers_its_input_and_hooks_take_no_arguments(name: str) -> None:
    b = _make(name)
    assert b.last_input is None
    x = _stream(name if name != "pcgrad" else "gradnorm", 1)[0]  # all tasks with a Gramian for pcgrad
    b.compute(x)
    assert b.last_input is x
    b.before_optimizer_step()
    b.after_optimizer_step()
    assert b.last_input is x

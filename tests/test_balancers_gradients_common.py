"""Every method that reads the task gradients (``excess_mtl``) or aggregates them (``graddrop``, ``moco``), and
every method added with them (``go4align``, ``igb``): state round trips, resuming a run exactly, non-finite steps.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mtl.balancers import BalanceInput, Balancer, build_balancer
from mtl.balancers.aggregator import Aggregator
from tests.helpers import tiny_run_cfg, tiny_run_env
from tests.toy_trainer import flat_params, toy_trainer

TASKS = ["a", "b", "c"]
#: (balancer, options): every source each method supports
RUNS: list[tuple[str, dict[str, Any]]] = [
    ("excess_mtl", {"step_size": 0.5}),
    ("excess_mtl", {"step_size": 0.5, "source": "parameters"}),
    ("graddrop", {}),
    ("graddrop", {"source": "parameters"}),
    ("moco", {"beta": 0.5}),
    ("go4align", {"step_size": 0.1}),
    ("igb", {"warmup_steps": 1, "base_steps": 1}),
]
READERS = ["excess_mtl", "graddrop", "moco"]


@pytest.fixture(autouse=True)
def _tiny_env(monkeypatch: pytest.MonkeyPatch):
    """One torch thread; runs read the fixture data only and skip the plots."""
    yield from tiny_run_env(monkeypatch, plots=False, one_thread=True)


def _stream(n: int, start: int = 0, seed: int = 0, d: int = 6) -> list[BalanceInput]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(start, start + n):
        jac = torch.randn(3, d, generator=g)
        out.append(BalanceInput(tasks=list(TASKS), losses=torch.rand(3, generator=g) + 0.5, step=step,
                                max_steps=100, gramian=(jac @ jac.T).double(), gradients=jac))
    return out


def _run(b: Balancer, stream: list[BalanceInput]) -> list[float]:
    out: list[float] = []
    for x in stream:
        if isinstance(b, Aggregator):
            agg = b.aggregate(x)
            out += agg.combined(x.gradients).tolist() + agg.weights.tolist()
        else:
            out += b.compute(x).tolist()
        b.before_optimizer_step()
        b.after_optimizer_step()
    return out


@pytest.mark.parametrize(("name", "kwargs"), RUNS)
def test_state_dict_round_trip_into_a_fresh_instance(name: str, kwargs: dict[str, Any]) -> None:
    b = build_balancer(name, TASKS, **kwargs)
    _run(b, _stream(5))
    fresh = build_balancer(name, TASKS, **{**kwargs, **({"seed": 9} if name == "graddrop" else {})})
    fresh.load_state_dict(b.state_dict())  # lazily shaped statistics are re-shaped on load
    nxt = _stream(4, start=5, seed=1)
    expected = _run(b, nxt)
    assert _run(fresh, nxt) == pytest.approx(expected, rel=1e-6)
    if name != "igb":  # and the history mattered (igb: a base window of one step, the same as a fresh one's)
        assert _run(build_balancer(name, TASKS, **kwargs), nxt) != pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("name", "kwargs"), RUNS)
def test_a_resumed_run_continues_exactly(tmp_path, name: str, kwargs: dict[str, Any]) -> None:
    """Two steps, a checkpoint, two more in a new trainer == four steps in one."""
    whole = toy_trainer(tmp_path / "whole", balancer=name, balancer_kwargs=kwargs, max_steps=4)
    for _ in range(4):
        assert whole.train_step() is not None
    first = toy_trainer(tmp_path / "first", balancer=name, balancer_kwargs=kwargs, max_steps=4)
    for _ in range(2):
        first.train_step()
    path = first.save_checkpoint(tmp_path / "last.pt")
    resumed = toy_trainer(tmp_path / "resumed", balancer=name, balancer_kwargs=kwargs, max_steps=4)
    resumed.load_checkpoint(path)
    for _ in range(2):
        assert resumed.train_step() is not None
    torch.testing.assert_close(flat_params(resumed.model), flat_params(whole.model), rtol=0, atol=0)
    for key, value in whole.balancer.state_dict().items():
        torch.testing.assert_close(resumed.balancer.state_dict()[key], value, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", ["graddrop", "moco"])
def test_aggregator_non_finite_step_is_the_plain_sum_and_leaves_no_trace(name: str) -> None:
    a, b = build_balancer(name, TASKS), build_balancer(name, TASKS)
    clean = _stream(4)
    bad = _stream(4)[1]
    bad.gradients = bad.gradients.clone()
    bad.gradients[1, 2] = float("nan")
    bad.gramian = bad.gradients.double() @ bad.gradients.double().T  # a NaN row, as the engine's would be
    expected = _run(a, [clean[0], clean[2], clean[3]])
    got = _run(b, [clean[0]])
    with pytest.warns(RuntimeWarning, match="non-finite"):
        agg = b.aggregate(bad)  # the trainer then skips the step: no hooks
    assert agg.weights.tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(agg.combined(bad.gradients), bad.gradients.sum(0), equal_nan=True)
    got += _run(b, [clean[2], clean[3]])
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", READERS)
def test_compute_remembers_its_input_and_hooks_take_no_arguments(name: str) -> None:
    b = build_balancer(name, TASKS)
    x = _stream(1)[0]
    w = b.compute(x)  # for an aggregator: its per-task summary
    assert w.shape == (3,) and bool(torch.isfinite(w).all())
    assert b.last_input is x and set(b.last_weights) == set(TASKS)
    b.before_optimizer_step()
    b.after_optimizer_step()
    with pytest.raises(KeyError, match="not built for"):
        b.compute(BalanceInput(tasks=["zzz", "a", "b"], losses=torch.ones(3), step=0, max_steps=1,
                               gramian=x.gramian, gradients=x.gradients))


@pytest.mark.parametrize(("name", "override"), [
    ("excess_mtl", "balancer.source=parameters"), ("graddrop", "balancer.leak=0.1"), ("moco", "balancer.beta=0.5"),
    ("go4align", "balancer.num_groups=2"), ("igb", "balancer.warmup_steps=0"),
])
def test_mtl_train_path_runs_two_steps(fixture_data_root, tmp_path, name: str, override: str) -> None:
    """``balancer=<name>`` through the config, the build steps and the trainer, as ``mtl-train`` runs it."""
    import json

    from mtl.training.run import run

    cfg = tiny_run_cfg(fixture_data_root, f"balancer={name}", override, "sampler=all_tasks", "data.batch_size=8",
                       "trainer.max_steps=2", "trainer.eval_every=2")
    metrics = run(cfg, tmp_path)
    assert metrics["balancer"]["name"] == name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == 2
    assert set(metrics["balancer"]["last_weights"]) == {"ocnli", "ocemotion", "tnews"}

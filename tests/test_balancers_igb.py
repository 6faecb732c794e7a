"""``igb``: log-loss warm-up, the base window, IGBv1 weights by hand and by autograd, late tasks, training."""

from __future__ import annotations

import math

import pytest
import torch

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp, w_list
from tests.toy_trainer import flat_params, single_thread, toy_trainer

TASKS = ["a", "b"]


@pytest.fixture(autouse=True)
def _single_thread():
    yield from single_thread()


def test_igb_phases_by_hand() -> None:
    b = build_balancer("igb", TASKS, warmup_steps=2, base_steps=2)
    # steps 0, 1: warm-up, log-loss weights, nothing recorded
    assert w_list(b, inp(TASKS, [2.0, 4.0], 0)) == pytest.approx([0.5, 0.25])
    assert w_list(b, inp(TASKS, [100.0, 100.0], 1)) == pytest.approx([0.01, 0.01])
    # steps 2, 3: still log loss; the base is their mean: a = (1 + 3)/2 = 2, b = (4 + 4)/2 = 4
    assert w_list(b, inp(TASKS, [1.0, 4.0], 2)) == pytest.approx([1.0, 0.25])
    assert w_list(b, inp(TASKS, [3.0, 4.0], 3)) == pytest.approx([1 / 3, 0.25])
    assert b.base().tolist() == pytest.approx([2.0, 4.0])
    # step 4: L = (1, 8): L / b = (0.5, 2); v = 2 softmax(0.5, 2); w = v / L
    e = [math.exp(0.5), math.exp(2.0)]
    v = [2 * x / sum(e) for x in e]
    assert w_list(b, inp(TASKS, [1.0, 8.0], 4)) == pytest.approx([v[0] / 1.0, v[1] / 8.0], rel=1e-6)
    assert b.base().tolist() == pytest.approx([2.0, 4.0])  # the base stays fixed


def test_igb_matches_autograd_of_its_objective() -> None:
    b = build_balancer("igb", [*TASKS, "c"], warmup_steps=0, base_steps=1)
    w_list(b, inp([*TASKS, "c"], [1.0, 2.0, 3.0], 0))  # base (1, 2, 3)
    losses = torch.tensor([0.7, 2.5, 1.0], dtype=torch.float64, requires_grad=True)
    base = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    v = 3 * torch.softmax(losses.detach() / base, dim=0)  # stopped, as the official code
    (v * torch.log(losses)).sum().backward()
    assert w_list(b, inp([*TASKS, "c"], losses.detach().tolist(), 1)) == pytest.approx(losses.grad.tolist(), rel=1e-6)


def test_igb_late_task_one_task_steps_and_non_finite() -> None:
    b = build_balancer("igb", ["a", "b", "c"], warmup_steps=0, base_steps=2)
    w_list(b, inp(["a", "b"], [1.0, float("nan")], 0))  # a skipped step's NaN is not recorded
    w_list(b, inp(["a", "b"], [3.0, 2.0], 1))
    assert b.base()[:2].tolist() == pytest.approx([2.0, 2.0]) and math.isnan(float(b.base()[2]))
    # c never reported during the window: its first loss afterwards is its base (ratio 1)
    e = [math.exp(2.0 / 2.0), math.exp(1.0)]
    assert w_list(b, inp(["a", "c"], [2.0, 5.0], 2)) == pytest.approx([2 * e[0] / sum(e) / 2.0,
                                                                          2 * e[1] / sum(e) / 5.0], rel=1e-6)
    assert w_list(b, inp(["b"], [4.0], 3)) == pytest.approx([1 / 4.0])  # one task: K softmax = 1, log loss
    fresh = build_balancer("igb", ["a", "b", "c"], warmup_steps=0, base_steps=2)
    fresh.load_state_dict(b.state_dict())
    x = inp(["a", "b", "c"], [1.5, 2.5, 4.0], 4)
    assert w_list(fresh, x) == pytest.approx(w_list(b, x))


def test_igb_trains_two_steps(tmp_path) -> None:
    tr = toy_trainer(tmp_path, balancer="igb", balancer_kwargs={"warmup_steps": 0, "base_steps": 1}, max_steps=2)
    before = flat_params(tr.model)
    for _ in range(2):
        assert tr.train_step() is not None
    assert not torch.equal(flat_params(tr.model), before)
    assert bool((tr.balancer.base_count == 1).all())
    assert sum(tr.balancer.last_weights[t] * 1.0 for t in "abc") > 0

"""``stch``: log-loss warm-up, the nadir window, smooth Tchebycheff weights by hand, state, late tasks."""

from __future__ import annotations

import math

import pytest
import torch

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp, w_list

TASKS = ["a", "b"]


def _softmax(xs: list[float]) -> list[float]:
    e = [math.exp(x) for x in xs]
    return [x / sum(e) for x in e]


def test_stch_phases_by_hand() -> None:
    b = build_balancer("stch", TASKS, mu=0.5, warmup_steps=2, nadir_steps=2)
    # steps 0, 1: warm-up, log-loss weights, nothing recorded
    assert w_list(b, inp(TASKS, [2.0, 4.0], 0)) == pytest.approx([0.5, 0.25])
    assert w_list(b, inp(TASKS, [100.0, 100.0], 1)) == pytest.approx([0.01, 0.01])
    # steps 2, 3: still log loss; the nadir is their mean: a = (1 + 3)/2 = 2, b = (4 + 4)/2 = 4
    assert w_list(b, inp(TASKS, [1.0, 4.0], 2)) == pytest.approx([1.0, 0.25])
    assert w_list(b, inp(TASKS, [3.0, 4.0], 3)) == pytest.approx([1 / 3, 0.25])
    assert b.nadir().tolist() == pytest.approx([2.0, 4.0])
    # step 4: L = (1, 8): l = log(L / n) = (log 0.5, log 2); w = 2 softmax(l / 0.5) / L
    s = _softmax([math.log(0.5) / 0.5, math.log(2.0) / 0.5])  # (1/17, 16/17)
    assert s == pytest.approx([1 / 17, 16 / 17])
    assert w_list(b, inp(TASKS, [1.0, 8.0], 4)) == pytest.approx([2 * s[0] / 1.0, 2 * s[1] / 8.0], rel=1e-5)
    assert b.nadir().tolist() == pytest.approx([2.0, 4.0])  # the nadir stays fixed


def test_stch_matches_autograd_of_its_objective() -> None:
    b = build_balancer("stch", TASKS + ["c"], mu=2.0, warmup_steps=0, nadir_steps=1)
    w_list(b, inp(TASKS + ["c"], [1.0, 2.0, 3.0], 0))  # nadir (1, 2, 3)
    losses = torch.tensor([0.7, 2.5, 1.0], dtype=torch.float64, requires_grad=True)
    nadir = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    (3 * 2.0 * torch.logsumexp(torch.log(losses / nadir) / 2.0, dim=0)).backward()
    w = w_list(b, inp(TASKS + ["c"], losses.detach().tolist(), 1))
    assert w == pytest.approx(losses.grad.tolist(), rel=1e-5)


def test_stch_small_mu_is_the_worst_task_large_mu_is_log_loss() -> None:
    small = build_balancer("stch", TASKS, mu=0.01, warmup_steps=0, nadir_steps=1)
    large = build_balancer("stch", TASKS, mu=1e6, warmup_steps=0, nadir_steps=1)
    for b in (small, large):
        w_list(b, inp(TASKS, [1.0, 1.0], 0))
    assert w_list(small, inp(TASKS, [1.0, 2.0], 1)) == pytest.approx([0.0, 1.0], abs=1e-12)  # 2 * 1 / L_b
    assert w_list(large, inp(TASKS, [1.0, 2.0], 1)) == pytest.approx([1.0, 0.5], rel=1e-5)


def test_stch_late_task_state_and_non_finite() -> None:
    b = build_balancer("stch", ["a", "b", "c"], warmup_steps=0, nadir_steps=2)
    w_list(b, inp(["a", "b"], [1.0, float("nan")], 0))  # a skipped step's NaN is not recorded
    w_list(b, inp(["a", "b"], [3.0, 2.0], 1))
    assert b.nadir()[:2].tolist() == pytest.approx([2.0, 2.0]) and math.isnan(float(b.nadir()[2]))
    # c never reported during the window: its first loss afterwards is its nadir (l_c = 0)
    w = w_list(b, inp(["a", "c"], [2.0, 5.0], 2))
    s = _softmax([0.0, 0.0])
    assert w == pytest.approx([2 * s[0] / 2.0, 2 * s[1] / 5.0], rel=1e-5)
    fresh = build_balancer("stch", ["a", "b", "c"], warmup_steps=0, nadir_steps=2)
    fresh.load_state_dict(b.state_dict())
    x = inp(["a", "b", "c"], [1.5, 2.5, 4.0], 3)
    assert w_list(fresh, x) == pytest.approx(w_list(b, x))

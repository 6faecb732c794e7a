"""``dwa``: weights from window-mean loss ratios, by hand; one task per step."""

from __future__ import annotations

import math

import pytest

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp, w_list

TASKS = ["a", "b", "c"]


def test_dwa_weights_from_window_means_by_hand() -> None:
    b = build_balancer("dwa", ["a", "b"], temperature=2.0, window=2)
    # window 0: a = 4, 2 (mean 3), b = 2, 2 (2); window 1: a = 2, 2 (2), b = 2, 2 (2)
    # window 2: a = 1, 1 (1), b = 1, 3 (2)
    history = [(4, 2), (2, 2), (2, 2), (2, 2), (1, 1), (1, 3), (9, 9)]
    got = [w_list(b, inp(["a", "b"], [float(la), float(lb)], s)) for s, (la, lb) in enumerate(history)]
    for s in range(4):  # the first two windows: weight 1
        assert got[s] == [1.0, 1.0]
    # steps 4, 5: r = [2/3, 2/2]; w = 2 exp(r/2) / (exp(1/3) + exp(1/2))
    ea, eb = math.exp(1 / 3), math.exp(1 / 2)  # 1.3956124, 1.6487213
    assert got[4] == pytest.approx([2 * ea / (ea + eb), 2 * eb / (ea + eb)], rel=1e-6)
    assert got[4] == pytest.approx([0.9168, 1.0832], abs=1e-4)
    assert got[5] == got[4]
    # step 6: r = [1/2, 2/2]
    ea, eb = math.exp(1 / 4), math.exp(1 / 2)
    assert got[6] == pytest.approx([2 * ea / (ea + eb), 2 * eb / (ea + eb)], rel=1e-6)
    assert sum(got[6]) == pytest.approx(2.0)


def test_dwa_one_task_per_step() -> None:
    b = build_balancer("dwa", TASKS, temperature=2.0, window=1)
    assert w_list(b, inp(["a", "b"], [2.0, 2.0], 0)) == [1.0, 1.0]
    assert w_list(b, inp(["a", "b"], [1.0, 2.0], 1)) == [1.0, 1.0]
    # step 2: a and b have two windows (r = 1/2, 1), c none: a, b share a softmax of size 2
    ea, eb = math.exp(0.25), math.exp(0.5)
    wa, wb = 2 * ea / (ea + eb), 2 * eb / (ea + eb)  # 0.875647, 1.124353
    assert w_list(b, inp(["c"], [5.0], 2)) == [1.0]
    # step 3: only c's window 2 closed (c has one completed window): a unchanged
    assert w_list(b, inp(["a"], [0.7], 3)) == pytest.approx([wa], rel=1e-6)
    assert w_list(b, inp(["c"], [4.0], 3)) == [1.0]  # micro-batch of step 3: c still has one window
    # step 4: window 3 closed: a's means are now (1, 0.7) -> r_a = 0.7; c has two windows (5, 4)
    ea, eb, ec = math.exp(0.35), math.exp(0.5), math.exp(0.4)
    assert w_list(b, inp(["b", "c"], [0.7, 1.0], 4)) == pytest.approx(
        [3 * eb / (ea + eb + ec), 3 * ec / (ea + eb + ec)]
    )
    assert wb == pytest.approx(1.124353, rel=1e-6)

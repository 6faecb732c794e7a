"""``initial_loss``: the first seen loss per task, scale invariance."""

from __future__ import annotations

import pytest

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp, w_list

TASKS = ["a", "b", "c"]


def test_initial_loss_uses_first_seen_loss_per_task() -> None:
    b = build_balancer("initial_loss", TASKS)
    assert w_list(b, inp(["a", "b"], [4.0, 2.0], step=0)) == pytest.approx([0.25, 0.5])
    assert w_list(b, inp(["a", "b"], [1.0, 1.0], step=1)) == pytest.approx([0.25, 0.5])
    # c first appears at step 2 (one task per step): its own first loss, a's is kept
    assert w_list(b, inp(["c"], [8.0], step=2)) == pytest.approx([0.125])
    assert w_list(b, inp(["c", "a"], [0.1, 0.1], step=3)) == pytest.approx([0.125, 0.25])


def test_initial_loss_scale_invariance() -> None:
    history = [[4.0, 2.0], [3.0, 1.5], [1.0, 0.5]]
    plain, scaled = build_balancer("initial_loss", ["a", "b"]), build_balancer("initial_loss", ["a", "b"])
    for step, (la, lb) in enumerate(history):
        w = w_list(plain, inp(["a", "b"], [la, lb], step))
        ws = w_list(scaled, inp(["a", "b"], [10.0 * la, lb], step))
        assert ws[0] * 10.0 * la == pytest.approx(w[0] * la)  # weighted loss (and gradient) unchanged
        assert ws[1] == pytest.approx(w[1])
    assert w[0] * history[-1][0] == pytest.approx(1.0 / 4.0)  # L/L(0) = 1/4

"""``dtp``: weights from the running accuracy, which the balancer keeps itself from ``BalanceInput.counts``.

The running accuracy is fed the way the trainer feeds it: ``compute`` of a step (its input carries the
step's (correct, rows) counts), then ``after_optimizer_step()`` once the update is applied.
"""

from __future__ import annotations

import math

import pytest

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp, w_list

TASKS = ["a", "b", "c"]


def applied_step(b, counts: dict[str, tuple[int, int]], step: int = 0) -> list[float]:
    """One applied optimiser step of the tasks in ``counts``: the weights in force, then the hook."""
    tasks = list(counts)
    w = w_list(b, inp(tasks, [1.0] * len(tasks), step, counts=counts))
    b.after_optimizer_step()
    return w


def dtp_weight(k: float, gamma: float = 1.0, eps: float = 1e-3) -> float:
    k = min(max(k, eps), 1.0 - eps)
    return -((1.0 - k) ** gamma) * math.log(k)


def test_dtp_weights_from_kpis() -> None:
    counts = {"a": (1, 2), "b": (9, 10)}  # one applied step: running accuracies a = 0.5, b = 0.9
    b1 = build_balancer("dtp", TASKS, gamma=1.0)
    applied_step(b1, counts)
    # -(1-k)^g log k: a: 0.5 ln 2 = 0.3465736; b: 0.1 * 0.1053605; c: no KPI -> 1
    assert w_list(b1, inp(TASKS, [1.0] * 3, 1)) == pytest.approx([0.3465736, 0.01053605, 1.0])
    b2 = build_balancer("dtp", TASKS, gamma=2.0)
    applied_step(b2, counts)
    assert w_list(b2, inp(["b", "a"], [1.0] * 2, 1)) == pytest.approx([0.001053605, 0.1732868])
    # clipping to [eps, 1 - eps] with eps = 1e-3: k = 0 -> 0.999 * 6.9077553; k = 1 -> 1e-3 * 0.0010005
    b3 = build_balancer("dtp", TASKS, gamma=1.0)
    applied_step(b3, {"a": (0, 10), "b": (10, 10)})
    edge = w_list(b3, inp(["a", "b"], [1.0] * 2, 1))
    assert edge == pytest.approx([6.9008475, 1.0005003e-6], rel=1e-6)


def test_dtp_running_accuracy_is_the_trainer_ema() -> None:
    """``acc if prev is None else 0.9 * prev + 0.1 * acc``, acc = correct / max(n, 1), updated only after
    applied steps; the weights at step N use the accuracy after steps < N (bit for bit)."""
    b = build_balancer("dtp", TASKS)
    steps = [
        {"a": (3, 4)},
        {"b": (1, 8), "a": (0, 4)},
        {"c": (0, 0)},  # no rows: acc = 0 / max(0, 1) = 0
        {"a": (4, 4), "b": (5, 8), "c": (7, 9)},
        {"b": (2, 8)},
    ]
    ref: dict[str, float] = {}
    for step, counts in enumerate(steps):
        expected_w = [dtp_weight(ref[t]) if t in ref else 1.0 for t in counts]
        assert applied_step(b, counts, step) == pytest.approx(expected_w, rel=1e-6)
        for t, (correct, n) in counts.items():
            acc = correct / max(n, 1)
            prev = ref.get(t)
            ref[t] = acc if prev is None else 0.9 * prev + (1 - 0.9) * acc
        assert b.running_accuracy() == ref  # exact
    assert ref["a"] == 0.9 * (0.9 * 0.75 + 0.1 * 0.0) + (1 - 0.9) * 1.0


def test_dtp_momentum_option() -> None:
    b = build_balancer("dtp", ["a"], momentum=0.5)
    applied_step(b, {"a": (4, 4)}, 0)
    applied_step(b, {"a": (0, 4)}, 1)
    assert b.running_accuracy() == {"a": 0.5}
    assert w_list(b, inp(["a"], [1.0], 2)) == pytest.approx([0.3465736])  # 0.5 ln 2
    with pytest.raises(ValueError, match="momentum"):
        build_balancer("dtp", ["a"], momentum=1.5)


def test_dtp_skipped_step_does_not_count() -> None:
    """A step whose update is skipped (non-finite loss) gets ``compute`` but no hooks: no KPI change."""
    b = build_balancer("dtp", TASKS)
    applied_step(b, {"a": (1, 2)}, 0)
    b.compute(inp(["a"], [float("nan")], 1, counts={"a": (2, 2)}))
    assert b.running_accuracy() == {"a": 0.5}
    assert w_list(b, inp(["a"], [1.0], 2)) == pytest.approx([0.3465736])


def test_dtp_running_accuracy_resumes_from_state_dict() -> None:
    b = build_balancer("dtp", TASKS, gamma=2.0)
    applied_step(b, {"a": (1, 4), "b": (3, 4)}, 0)
    applied_step(b, {"c": (2, 3)}, 1)
    fresh = build_balancer("dtp", TASKS, gamma=2.0)
    fresh.load_state_dict(b.state_dict())
    assert fresh.running_accuracy() == b.running_accuracy()
    nxt = inp(TASKS, [1.0] * 3, 2)
    assert w_list(fresh, nxt) == w_list(b, nxt)
    assert w_list(build_balancer("dtp", TASKS, gamma=2.0), nxt) == [1.0, 1.0, 1.0]

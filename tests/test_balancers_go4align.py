"""``go4align``: exact 1-D k-means, indicators and group weights by hand, the deferred update, training."""

from __future__ import annotations

import math

import pytest
import torch

from mtl.balancers import build_balancer
from mtl.balancers.loss.go4align import kmeans_1d
from tests.balancer_helpers import inp, w_list
from tests.toy_trainer import flat_params, single_thread, toy_trainer

TASKS = ["a", "b", "c"]


@pytest.fixture(autouse=True)
def _single_thread():
    yield from single_thread()


def test_kmeans_1d_by_hand() -> None:
    assert kmeans_1d([10.0, 1.0, 11.0, 2.0, 12.0], 2) == [1, 0, 1, 0, 1]
    assert kmeans_1d([10.0, 1.0, 11.0, 2.0, 12.0], 1) == [0] * 5
    assert kmeans_1d([3.0, 1.0, 2.0], 3) == [2, 0, 1]
    assert kmeans_1d([3.0, 1.0], 5) == [1, 0]  # K > T: every task its own group
    # {0} {4, 5} (SSE 0.5) beats {0, 4} {5} (SSE 8)
    assert kmeans_1d([0.0, 4.0, 5.0], 2) == [0, 1, 1]
    # a case Lloyd from the two smallest points gets wrong: {0, 1, 2} {10} (SSE 2) vs {0, 1} {2, 10} (SSE 32.5)
    assert kmeans_1d([0.0, 1.0, 2.0, 10.0], 2) == [0, 0, 0, 1]


def test_weights_by_hand() -> None:
    eta, losses = 0.1, [1.0, 2.0, 4.0]
    e = [math.exp(-eta * x) for x in losses]
    p = [x / sum(e) for x in e]  # p <- p exp(-eta L) / sum (from uniform)
    r = [sum(losses) / x * q for x, q in zip(losses, p, strict=True)]  # (2.6458, 1.1970, 0.4900)
    # two groups: {b, c} (SSE (1.1970 - 0.4900)^2 / 2 = 0.25) beats {a, b} (SSE (2.6458 - 1.1970)^2 / 2 = 1.05)
    two = build_balancer("go4align", TASKS, num_groups=2, step_size=eta)
    assert w_list(two, inp(TASKS, losses)) == pytest.approx([r[0], (r[1] + r[2]) / 2, (r[1] + r[2]) / 2], rel=1e-6)
    assert two.last_groups == {"a": 1, "b": 0, "c": 0}
    one = build_balancer("go4align", TASKS, num_groups=1, step_size=eta)
    assert w_list(one, inp(TASKS, losses)) == pytest.approx([sum(r) / 3] * 3, rel=1e-6)
    three = build_balancer("go4align", TASKS, num_groups=3, step_size=eta)
    assert w_list(three, inp(TASKS, losses)) == pytest.approx(r, rel=1e-6)


def test_uniform_p_balances_every_weighted_loss_to_the_mean() -> None:
    b = build_balancer("go4align", TASKS, num_groups=3, step_size=0.0)
    losses = [0.5, 2.0, 3.5]
    w = w_list(b, inp(TASKS, losses))
    assert [x * y for x, y in zip(w, losses, strict=True)] == pytest.approx([2.0, 2.0, 2.0])


def test_the_update_of_p_waits_for_the_optimiser_step() -> None:
    b = build_balancer("go4align", TASKS, num_groups=3, step_size=0.5)
    x = inp(TASKS, [1.0, 2.0, 3.0])
    first = w_list(b, x)
    assert w_list(b, x) == pytest.approx(first)  # not committed yet: the same weights
    assert b.probs.tolist() == pytest.approx([1 / 3] * 3)
    b.after_optimizer_step()
    e = [math.exp(-0.5 * v) for v in (1.0, 2.0, 3.0)]
    assert b.probs.tolist() == pytest.approx([v / sum(e) for v in e])
    # the next step multiplies on
    e2 = [v * math.exp(-0.5 * 1.0) for v in e]
    p2 = [v / sum(e2) for v in e2]
    assert w_list(b, inp(TASKS, [1.0, 1.0, 1.0], 1)) == pytest.approx([3 * q for q in p2])
    # a non-finite step: weights 1, nothing pending
    assert w_list(b, inp(TASKS, [1.0, float("nan"), 1.0], 2)) == [1.0, 1.0, 1.0]
    b.after_optimizer_step()
    assert b.probs.tolist() == pytest.approx(p2)


def test_one_task_step_gets_weight_one() -> None:
    b = build_balancer("go4align", TASKS, step_size=0.3)
    assert w_list(b, inp(["b"], [5.0])) == pytest.approx([1.0])
    with pytest.raises(ValueError, match="num_groups"):
        build_balancer("go4align", TASKS, num_groups=0)


def test_go4align_trains_two_steps(tmp_path) -> None:
    tr = toy_trainer(tmp_path, balancer="go4align", balancer_kwargs={"step_size": 0.1}, max_steps=2)
    before = flat_params(tr.model)
    for _ in range(2):
        res = tr.train_step()
        assert res is not None and bool((res.weights > 0).all())
    assert not torch.equal(flat_params(tr.model), before)
    assert tr.balancer.probs.tolist() != pytest.approx([1 / 3] * 3)  # p moved, through the trainer's hooks
    assert {k for k in tr.balancer.log_values() if k.startswith("go4align/group/")} == {
        "go4align/group/a", "go4align/group/b", "go4align/group/c"}

"""``static``: the weights, per-step task subsets, and bad configurations."""

from __future__ import annotations

import pytest
import torch

from mtl.balancers import BalanceInput, build_balancer
from tests.balancer_helpers import inp, w_list

TASKS = ["ocnli", "ocemotion", "tnews"]
ABC = ["a", "b", "c"]


def weights(b, tasks, losses):
    return b.compute(BalanceInput(tasks=tasks, losses=torch.tensor(losses), step=0, max_steps=10)).tolist()


def test_static_weights_follow_task_names_not_positions() -> None:
    b = build_balancer("static", TASKS, weights={"tnews": 0.25, "ocnli": 2.0}, default=0.5)
    assert weights(b, TASKS, [1.0, 1.0, 1.0]) == [2.0, 0.5, 0.25]
    # one task per step (the baseline sampler): only that task's weight
    assert weights(b, ["tnews"], [1.0]) == [0.25]
    assert weights(b, ["ocemotion", "ocnli"], [1.0, 1.0]) == [0.5, 2.0]
    assert b.last_weights == {"ocemotion": 0.5, "ocnli": 2.0}


def test_static_weighted_objective_by_hand() -> None:
    b = build_balancer("static", TASKS, weights={"ocnli": 2.0, "ocemotion": 1.0, "tnews": 0.5})
    losses = torch.tensor([0.9, 1.8, 2.4], requires_grad=True)
    w = b.compute(BalanceInput(TASKS, losses.detach(), 0, 1))
    objective = (w * losses).sum()
    assert objective.item() == pytest.approx(2 * 0.9 + 1.8 + 0.5 * 2.4)
    objective.backward()
    assert losses.grad.tolist() == [2.0, 1.0, 0.5]


def test_static_rejects_unknown_tasks_and_negative_weights() -> None:
    with pytest.raises(ValueError, match="unknown tasks"):
        build_balancer("static", TASKS, weights={"cmnli": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        build_balancer("static", TASKS, weights={"ocnli": -1.0})


def test_static_state_round_trip() -> None:
    b = build_balancer("static", TASKS, weights={"ocnli": 3.0})
    fresh = build_balancer("static", TASKS)
    fresh.load_state_dict(b.state_dict())
    assert weights(fresh, TASKS, [1.0, 1.0, 1.0]) == [3.0, 1.0, 1.0]


def test_static_config_example_from_comment() -> None:
    b = build_balancer("static", ABC, weights={"a": 1.0, "b": 0.5}, default=1.0)
    assert w_list(b, inp(["a", "b", "c"], [1.0, 1.0, 1.0])) == [1.0, 0.5, 1.0]

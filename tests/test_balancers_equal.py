"""``equal``: every weight 1."""

from __future__ import annotations

import torch

from mtl.balancers import BalanceInput, build_balancer

TASKS = ["ocnli", "ocemotion", "tnews"]


def weights(b, tasks, losses):
    return b.compute(BalanceInput(tasks=tasks, losses=torch.tensor(losses), step=0, max_steps=10)).tolist()


def test_equal_is_all_ones() -> None:
    assert weights(build_balancer("equal", TASKS), TASKS, [3.0, 0.1, 7.0]) == [1.0, 1.0, 1.0]

"""``imtl_l``: learnt log-scales with history, the step's regulariser, the closed-form optimum."""

from __future__ import annotations

import math

import pytest
import torch

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp

TASKS = ["a", "b", "c"]


def test_imtl_l_weights_carry_history_and_regularize_only_step_tasks() -> None:
    b = build_balancer("imtl_l", TASKS)
    assert b.regularizer() is None
    losses = torch.tensor([3.0])
    w = b.compute(inp(["b"], losses.tolist()))
    assert w.requires_grad and w.tolist() == [1.0]
    (w * losses).sum().add(b.regularizer()).backward()
    # d/ds_b [exp(s_b) * 3 - s_b] at s_b = 0 is 3 - 1 = 2; a and c are not in the step
    assert b.log_scales.grad.tolist() == pytest.approx([0.0, 2.0, 0.0])
    (group,) = b.optimizer_param_groups()
    assert group["params"] == [b.log_scales] and group["lr"] == 0.01 and group["weight_decay"] == 0.0
    assert "lr" not in build_balancer("imtl_l", TASKS, lr=None).optimizer_param_groups()[0]
    assert b.log_values()["imtl_l/scale/a"] == pytest.approx(1.0)


def test_imtl_l_converges_to_equal_scaled_losses() -> None:
    """For fixed L, min_s exp(s) L - s has exp(s*) = 1 / L: every scaled loss becomes 1 (L = 0.5, 2, 3)."""
    b = build_balancer("imtl_l", TASKS)
    opt = torch.optim.SGD(b.parameters(), lr=0.1)
    losses = torch.tensor([0.5, 2.0, 3.0])
    for step in range(800):
        opt.zero_grad()
        w = b.compute(inp(TASKS, losses.tolist(), step))
        ((w * losses).sum() + b.regularizer()).backward()
        opt.step()
    assert torch.exp(b.log_scales.detach()).tolist() == pytest.approx([2.0, 0.5, 1 / 3], rel=1e-4)
    assert b.log_scales.detach().tolist() == pytest.approx([-math.log(x) for x in [0.5, 2.0, 3.0]], abs=1e-4)

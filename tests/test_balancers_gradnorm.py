"""``gradnorm``: targets and the weights' gradient by hand, the hooks, renormalisation, subsets."""

from __future__ import annotations

import pytest
import torch

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp, w_list

TASKS = ["a", "b", "c"]


def test_gradnorm_targets_and_gradient_by_hand() -> None:
    b = build_balancer("gradnorm", ["a", "b"], alpha=1.5, lr=0.025)
    gram = [[1.0, 0.3], [0.3, 4.0]]  # ||g_a|| = 1, ||g_b|| = 2
    # step 0: L(0) = [2, 1] recorded; loss ratios equal -> target = mean(G^W) = 1.5 for both
    assert w_list(b, inp(["a", "b"], [2.0, 1.0], 0, gram)) == [1.0, 1.0]
    grad, target, loss = b.gradnorm_grad(inp(["a", "b"], [2.0, 1.0], 0, gram))
    assert target.tolist() == pytest.approx([1.5, 1.5])
    assert grad.tolist() == pytest.approx([-1.0, 2.0])  # G^W = [1, 2]: a below target, b above
    assert loss == pytest.approx(1.0)
    # step 1: L = [1, 1] -> Lt = [0.5, 1], r = [2/3, 4/3]
    # target = 1.5 * r^1.5 = [1.5 * 0.5443311, 1.5 * 1.5396007] = [0.8164966, 2.3094011]
    x1 = inp(["a", "b"], [1.0, 1.0], 1, gram)
    assert w_list(b, x1) == [1.0, 1.0]
    grad, target, loss = b.gradnorm_grad(x1)
    assert target.tolist() == pytest.approx([0.8164966, 2.3094011], rel=1e-6)
    assert grad.tolist() == pytest.approx([1.0, -2.0])  # a now above its target, b below
    assert loss == pytest.approx((1.0 - 0.8164966) + (2.3094011 - 2.0), rel=1e-6)

    # the hook accumulates into w.grad (for the input of the last compute, x1), the optimiser steps w at
    # the group's lr, then sum w = T
    b.task_weights.grad = torch.tensor([0.5, 0.5])
    b.before_optimizer_step()
    assert b.task_weights.grad.tolist() == pytest.approx([1.5, -1.5])
    b.task_weights.grad = None
    opt = torch.optim.SGD(b.optimizer_param_groups())
    assert opt.param_groups[0]["lr"] == 0.025
    b.before_optimizer_step()
    opt.step()
    assert b.task_weights.detach().tolist() == pytest.approx([0.975, 1.05])
    b.after_optimizer_step()
    assert b.task_weights.detach().tolist() == pytest.approx([0.975 * 2 / 2.025, 1.05 * 2 / 2.025])
    assert w_list(b, inp(["a", "b"], [1.0, 1.0], 2, gram)) == pytest.approx([0.962963, 1.037037], rel=1e-5)
    assert b.log_values()["gradnorm/loss"] == pytest.approx(0.4929045, rel=1e-5)


def test_gradnorm_renormalisation_clamps_positive() -> None:
    b = build_balancer("gradnorm", TASKS, min_weight=1e-3)
    with torch.no_grad():
        b.task_weights.copy_(torch.tensor([3.0, -1.0, 0.5]))
    b.after_optimizer_step()
    total = 3.0 + 1e-3 + 0.5
    assert b.task_weights.detach().tolist() == pytest.approx([9.0 / total, 3e-3 / total, 1.5 / total])


def test_gradnorm_subset_and_alpha_zero() -> None:
    """alpha = 0: the target is the mean weighted norm; a task-subset Gramian indexes its tasks."""
    b = build_balancer("gradnorm", TASKS, alpha=0.0)
    x = inp(["c", "a"], [5.0, 1.0], 0, [[9.0, 0.0], [0.0, 1.0]])  # ||g_c|| = 3, ||g_a|| = 1
    b.compute(x)
    b.before_optimizer_step()
    assert b.task_weights.grad.tolist() == pytest.approx([-1.0, 0.0, 3.0])  # target 2 for both


def test_gradnorm_hook_needs_a_compute_first() -> None:
    b = build_balancer("gradnorm", ["a", "b"])
    assert b.last_input is None
    with pytest.raises(RuntimeError, match="compute"):
        b.before_optimizer_step()

"""``uncertainty``: learnt log-variances, their own lr group, the closed-form optimum."""

from __future__ import annotations

import math

import pytest
import torch

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp

TASKS = ["a", "b", "c"]


def test_uncertainty_weights_carry_history_and_regularize_only_step_tasks() -> None:
    b = build_balancer("uncertainty", TASKS, lr=0.01)
    assert b.regularizer() is None
    losses = torch.tensor([3.0])
    w = b.compute(inp(["b"], losses.tolist()))
    assert w.requires_grad and w.tolist() == [1.0]
    (w * losses).sum().add(b.regularizer()).backward()
    # d/ds_b [exp(-s_b) * 3 + s_b] at s_b = 0 is -3 + 1 = -2; a and c are not in the step
    assert b.log_vars.grad.tolist() == pytest.approx([0.0, -2.0, 0.0])
    (group,) = b.optimizer_param_groups()
    assert group["params"] == [b.log_vars] and group["lr"] == 0.01 and group["weight_decay"] == 0.0
    assert "lr" not in build_balancer("uncertainty", TASKS, lr=None).optimizer_param_groups()[0]
    assert b.log_values()["uncertainty/sigma/a"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("coef", "expected_w"), [(1.0, [2.0, 0.5, 1.0 / 3.0]), (0.5, [1.0, 0.25, 1.0 / 6.0])]
)
def test_uncertainty_converges_to_closed_form_optimum(coef: float, expected_w: list[float]) -> None:
    """For fixed L, min_s exp(-s) L + c s has exp(-s*) = c / L (L = 0.5, 2, 3)."""
    b = build_balancer("uncertainty", TASKS, regularizer_coef=coef)
    opt = torch.optim.SGD(b.parameters(), lr=0.2)
    losses = torch.tensor([0.5, 2.0, 3.0])
    for step in range(600):
        opt.zero_grad()
        w = b.compute(inp(TASKS, losses.tolist(), step))
        ((w * losses).sum() + b.regularizer()).backward()
        opt.step()
    assert torch.exp(-b.log_vars.detach()).tolist() == pytest.approx(expected_w, rel=1e-4)
    assert b.log_vars.detach().tolist() == pytest.approx(
        [math.log(x / coef) for x in [0.5, 2.0, 3.0]], abs=1e-4
    )


def test_uncertainty_default_lr_is_the_config_default() -> None:
    """One source of defaults: the Python default is the CLI's (``lr: 0.01`` in the config node)."""
    (group,) = build_balancer("uncertainty", TASKS).optimizer_param_groups()
    assert group["lr"] == 0.01

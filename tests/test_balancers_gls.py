"""``gls``: the geometric mean's gradient by hand, scale invariance of the direction, one-task steps."""

from __future__ import annotations

import pytest
import torch

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp, w_list


def test_gls_weights_by_hand() -> None:
    b = build_balancer("gls", ["a", "b", "c"])
    # L = (1, 2, 4): (prod L)^(1/3) = 2, w = 2 / (3 L) = (2/3, 1/3, 1/6); sum w L = 2 (the geometric mean)
    w = w_list(b, inp(["a", "b", "c"], [1.0, 2.0, 4.0]))
    assert w == pytest.approx([2 / 3, 1 / 3, 1 / 6], rel=1e-6)
    assert sum(wi * li for wi, li in zip(w, [1.0, 2.0, 4.0], strict=True)) == pytest.approx(2.0)
    # two tasks L = (1, 9): sqrt(9) = 3, w = 3 / (2 L) = (1.5, 1/6)
    assert w_list(b, inp(["a", "c"], [1.0, 9.0])) == pytest.approx([1.5, 1 / 6], rel=1e-6)
    assert w_list(b, inp(["b"], [5.0])) == pytest.approx([1.0])  # one task: its own loss


def test_gls_matches_autograd_of_the_geometric_mean() -> None:
    losses = torch.tensor([0.3, 1.7, 2.2], requires_grad=True)
    losses.prod().pow(1 / 3).backward()
    w = w_list(build_balancer("gls", ["a", "b", "c"]), inp(["a", "b", "c"], losses.detach().tolist()))
    assert w == pytest.approx(losses.grad.tolist(), rel=1e-5)


def test_gls_direction_ignores_one_losses_scale_and_guards_zero() -> None:
    b = build_balancer("gls", ["a", "b"])
    w1 = torch.tensor(w_list(b, inp(["a", "b"], [1.0, 2.0])))
    w2 = torch.tensor(w_list(b, inp(["a", "b"], [10.0, 2.0])))  # loss a (and its gradient) times 10
    ratio = (w2 * torch.tensor([10.0, 1.0])) / w1  # the weight on each original gradient
    assert float(ratio[0]) == pytest.approx(float(ratio[1]), rel=1e-6)
    assert all(torch.isfinite(torch.tensor(w_list(b, inp(["a", "b"], [0.0, 2.0])))))

"""``log_loss``: inverse-loss weights and a scale-invariant update."""

from __future__ import annotations

import pytest
import torch

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp, w_list

TASKS = ["a", "b", "c"]


def test_log_loss_weights_are_inverse_losses() -> None:
    b = build_balancer("log_loss", TASKS)
    assert w_list(b, inp(TASKS, [2.0, 0.5, 4.0])) == pytest.approx([0.5, 2.0, 0.25])
    assert w_list(b, inp(["b"], [0.25])) == pytest.approx([4.0])  # one task per step
    assert w_list(b, inp(["a"], [0.0]))[0] == pytest.approx(1e8)  # eps-guarded


def test_log_loss_gradient_direction_is_scale_invariant() -> None:
    """sum_i w_i L_i with w = 1/L (detached): scaling L_a by 7 gives the same update."""
    b = build_balancer("log_loss", ["a", "b"])

    def update(scale_a: float) -> torch.Tensor:
        theta = torch.tensor([0.3, -0.7], requires_grad=True)
        la = scale_a * ((theta[0] - 1.0) ** 2 + 0.5)
        lb = (theta[1] + 2.0) ** 2 + 1.0
        losses = torch.stack([la, lb])
        w = b.compute(inp(["a", "b"], losses.detach().tolist()))
        (grad,) = torch.autograd.grad((w * losses).sum(), theta)
        return grad

    g1, g7 = update(1.0), update(7.0)
    # by hand: dLa/dt0 = 2(0.3 - 1) = -1.4, La = 0.49 + 0.5 = 0.99 -> -1.4 / 0.99
    assert g1[0].item() == pytest.approx(-1.4 / 0.99, rel=1e-5)
    assert torch.allclose(g1, g7, rtol=1e-5)

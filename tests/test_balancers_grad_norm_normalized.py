"""``grad_norm_normalized``: unit-norm task gradients from the Gramian's diagonal."""

from __future__ import annotations

import pytest
import torch

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp, w_list


def test_grad_norm_normalized_unit_norm_and_scale_invariance() -> None:
    b = build_balancer("grad_norm_normalized", ["a", "b"])
    jac = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)  # norms 5 and 2
    w = b.compute(inp(["a", "b"], [1.0, 1.0], gramian=jac @ jac.T)).double()
    assert w.tolist() == pytest.approx([0.2, 0.5])
    update = w @ jac
    assert update.tolist() == pytest.approx([0.6, 0.8 + 1.0])  # unit vectors summed
    for c in (0.01, 3.0, 250.0):
        scaled = jac.clone()
        scaled[0] *= c  # task a's loss (so its gradient) times c
        ws = b.compute(inp(["a", "b"], [c, 1.0], gramian=scaled @ scaled.T)).double()
        assert torch.allclose(ws @ scaled, update, rtol=1e-6)
    # a one-task step: its gradient at unit norm
    assert w_list(b, inp(["b"], [1.0], gramian=[[16.0]])) == pytest.approx([0.25])
    with pytest.raises(ValueError, match="Gramian"):
        b.compute(inp(["a"], [1.0]))


def test_grad_norm_normalized_zero_gradient_is_finite() -> None:
    b = build_balancer("grad_norm_normalized", ["a"], eps=1e-4)
    assert w_list(b, inp(["a"], [1.0], gramian=[[0.0]])) == pytest.approx([1e4])

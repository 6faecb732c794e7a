"""``db_mtl``: log-loss gradients rescaled to the largest norm, by hand; scale of one loss; refusals."""

from __future__ import annotations

import pytest
import torch

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp


def _w(b, tasks, losses, jac):
    return b.compute(inp(tasks, losses, gramian=jac @ jac.T)).double()


def test_db_mtl_by_hand() -> None:
    b = build_balancer("db_mtl", ["a", "b"])
    jac = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)  # norms 5, 2
    # L = (0.5, 4): m = ||g|| / L = (10, 0.5); w_t = max m / (m_t L_t) = 10 / (5, 2) = (2, 5)
    w = _w(b, ["a", "b"], [0.5, 4.0], jac)
    torch.testing.assert_close(w, torch.tensor([2.0, 5.0], dtype=torch.float64), rtol=1e-6, atol=0)
    # every balanced gradient w_t g_t has the largest log-loss gradient norm, 10
    norms = torch.linalg.vector_norm(w.unsqueeze(1) * jac, dim=1)
    torch.testing.assert_close(norms, torch.full((2,), 10.0, dtype=torch.float64))


def test_db_mtl_one_losses_scale_changes_only_the_length() -> None:
    b = build_balancer("db_mtl", ["a", "b", "c"])
    jac = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    losses = [0.5, 1.0, 2.0]
    d = _w(b, ["a", "b", "c"], losses, jac) @ jac
    scaled = jac.clone()
    scaled[1] *= 7.0  # task b's loss (and gradient) times 7
    ds = _w(b, ["a", "b", "c"], [0.5, 7.0, 2.0], scaled) @ scaled
    torch.testing.assert_close(ds, d, rtol=1e-5, atol=1e-6)  # h_b = grad log L_b is unchanged


def test_db_mtl_refuses_without_gramian() -> None:
    with pytest.raises(ValueError, match="Gramian"):
        build_balancer("db_mtl", ["a"]).compute(inp(["a"], [1.0]))

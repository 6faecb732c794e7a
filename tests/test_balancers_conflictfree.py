"""``conflictfree`` (ConFIG): 2-task closed form, equal cosines, a task's scale, Jacobian formula, torchjd."""

from __future__ import annotations

import pytest
import torch

from tests.balancer_helpers import make, rand_jac, weights_of

T64 = torch.float64


def config_on_jacobian(j: torch.Tensor) -> torch.Tensor:
    """ConFIG on the Jacobian itself, as the official ``ConFIG_update`` (equal weights, projection length)."""
    norms = torch.linalg.vector_norm(j, dim=1, keepdim=True)
    units = torch.nan_to_num(j / norms, 0.0)
    best = torch.linalg.pinv(units) @ torch.ones(j.shape[0], dtype=j.dtype)
    unit = best / torch.linalg.vector_norm(best)
    return (j @ unit).sum() * unit


def test_conflictfree_two_tasks_closed_form():
    # b = (u1 + u2) / (1 + cos); d = (n1 + n2)/2 (u1 + u2)  =>  w_t = (n1 + n2) / (2 n_t)
    j = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=T64)
    torch.testing.assert_close(weights_of(make("conflictfree", 2), j), torch.tensor([1.5, 0.75], dtype=T64))
    j = rand_jac(2, 5, 3)
    n = torch.linalg.vector_norm(j, dim=1)
    torch.testing.assert_close(weights_of(make("conflictfree", 2), j), n.sum() / (2 * n), rtol=1e-5, atol=0)


@pytest.mark.parametrize("t,seed", [(3, 0), (4, 1), (5, 2)])
def test_conflictfree_equal_cosines_and_projection_length(t, seed):
    j = rand_jac(t, 7, 20 + seed)
    j[1] -= 1.2 * j[0]
    d = j.T @ weights_of(make("conflictfree", t), j)
    cos = (j @ d) / (torch.linalg.vector_norm(j, dim=1) * torch.linalg.vector_norm(d))
    torch.testing.assert_close(cos, cos.mean().expand(t), rtol=1e-5, atol=1e-6)
    assert float(cos.min()) > 0
    unit = d / torch.linalg.vector_norm(d)
    assert float(torch.linalg.vector_norm(d)) == pytest.approx(float((j @ unit).sum()), rel=1e-5)
    torch.testing.assert_close(d, config_on_jacobian(j), rtol=1e-5, atol=1e-6)


def test_conflictfree_direction_ignores_one_tasks_scale():
    j = rand_jac(3, 6, 9)
    d = j.T @ weights_of(make("conflictfree", 3), j)
    js = j.clone()
    js[1] *= 5.0
    ds = js.T @ weights_of(make("conflictfree", 3), js)
    unit = d / torch.linalg.vector_norm(d)
    torch.testing.assert_close(ds / torch.linalg.vector_norm(ds), unit, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ds, config_on_jacobian(js), rtol=1e-5, atol=1e-6)


def test_conflictfree_dependent_zero_and_opposite_gradients():
    j = rand_jac(4, 3, 11)  # four gradients in 3 dimensions: pinv, as the official lstsq
    d = j.T @ weights_of(make("conflictfree", 4), j)
    torch.testing.assert_close(d, config_on_jacobian(j), rtol=1e-4, atol=1e-5)
    z = rand_jac(3, 5, 12)
    z[2] = 0.0
    w = weights_of(make("conflictfree", 3), z)
    assert float(w[2]) == 0.0
    torch.testing.assert_close(z.T @ w, config_on_jacobian(z), rtol=1e-5, atol=1e-6)
    opp = torch.tensor([[1.0, 2.0], [-2.0, -4.0]], dtype=T64)  # u2 = -u1: b = 0, update 0
    torch.testing.assert_close(weights_of(make("conflictfree", 2), opp), torch.zeros(2, dtype=T64))


@pytest.mark.parametrize("seed", range(3))
def test_conflictfree_agrees_with_torchjd(seed):
    agg = pytest.importorskip("torchjd.aggregation")
    j = rand_jac(3, 6, 70 + seed)
    j[2] -= j[0]
    d = j.T @ weights_of(make("conflictfree", 3), j)
    torch.testing.assert_close(d, agg.ConFIG()(j).double(), rtol=1e-5, atol=1e-6)

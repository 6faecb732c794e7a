"""``cagrad``: c = 0, orthogonal gradients by hand, the worst-task optimum in the ball, torchjd agreement."""

from __future__ import annotations

import pytest
import torch

from tests.balancer_helpers import make, rand_jac, weights_of


def test_cagrad_c0_is_mean():
    j = rand_jac(3, 4, 2)
    for rescale in (0, 1, 2):
        w = weights_of(make("cagrad", 3, c=0.0, rescale=rescale), j)
        torch.testing.assert_close(w, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_cagrad_orthogonal_unit_gradients_by_hand():
    j = torch.eye(2, dtype=torch.float64)
    c = 0.5
    # symmetric optimum x = (1/2, 1/2): g_x = g0, lambda = c -> d = (1 + c) g0
    w = weights_of(make("cagrad", 2, c=c, rescale=0), j)
    torch.testing.assert_close(w, torch.full((2,), (1 + c) / 2, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    w1 = weights_of(make("cagrad", 2, c=c, rescale=1), j)
    torch.testing.assert_close(w1, w / (1 + c**2))
    w2 = weights_of(make("cagrad", 2, c=c, rescale=2), j)
    torch.testing.assert_close(w2, w / (1 + c))


@pytest.mark.parametrize("seed", range(3))
def test_cagrad_maximises_worst_improvement_in_ball(seed):
    j = rand_jac(3, 4, 20 + seed)
    j[1] = -0.5 * j[0] + 0.5 * j[1]  # some conflict
    c = 0.5
    d = j.T @ weights_of(make("cagrad", 3, c=c, rescale=0), j)
    g0 = j.mean(0)
    radius = c * float(torch.linalg.vector_norm(g0))
    assert float(torch.linalg.vector_norm(d - g0)) <= radius * (1 + 1e-4)
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(20000, 4, generator=gen, dtype=torch.float64)
    u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True)
    r = torch.rand(20000, 1, generator=gen, dtype=torch.float64) ** 0.25
    cand = g0 + radius * r * u
    best_sampled = float((cand @ j.T).min(dim=1).values.max())
    assert float((j @ d).min()) >= best_sampled - 1e-5 * float(torch.linalg.vector_norm(j, dim=1).max()) ** 2


def test_cagrad_agrees_with_torchjd_if_cvxpy():
    pytest.importorskip("cvxpy")
    pytest.importorskip("clarabel")
    agg = pytest.importorskip("torchjd.aggregation")
    j = rand_jac(3, 5, 24)
    j[1] -= j[0]
    ours = weights_of(make("cagrad", 3, c=0.5, rescale=0), j)  # torchjd does not rescale
    torch.testing.assert_close(ours, agg.CAGradWeighting(c=0.5)(j @ j.T), rtol=1e-3, atol=1e-4)

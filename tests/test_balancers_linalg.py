"""The shared Gramian numerics (:mod:`mtl.balancers.gramian.linalg`): min-norm, Nash, FairGrad, dual cone."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtl.balancers.gramian.linalg import (
    dual_cone_weights,
    fair_solve,
    min_norm_2,
    min_norm_simplex,
    nash_solve,
)
from tests.balancer_helpers import rand_jac


def test_min_norm_2_clipping_cases():
    # <v1, v2> >= |v1|^2: v1 itself is the min-norm point; <v1, v2> >= |v2|^2: v2 is
    assert min_norm_2(1.0, 2.0, 4.0) == (1.0, 1.0)
    assert min_norm_2(4.0, 2.0, 1.0) == (0.0, 1.0)
    # orthogonal (1, 0), (0, 2): gamma = 4 / 5, squared norm 0.8^2 + 0.4^2 = 0.8
    assert min_norm_2(1.0, 0.0, 4.0) == pytest.approx((0.8, 0.8))


@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_min_norm_simplex_exact_kkt(seed):
    """The polished solver meets KKT to round-off where plain Frank-Wolfe stops at ~1e-7."""
    j = rand_jac(5, 8, seed) + 1.5 * rand_jac(1, 8, 99)
    g = j @ j.T
    w = min_norm_simplex(g)
    value, grad, scale = float(w @ g @ w), g @ w, float(torch.diagonal(g).max())
    assert float(w.min()) >= 0 and abs(float(w.sum()) - 1) < 1e-12
    assert float(grad.min()) >= value - 1e-12 * scale
    assert float((grad[w > 1e-12] - value).abs().max()) <= 1e-12 * scale


def test_mgda_frank_wolfe_without_polish_converges():
    j = rand_jac(4, 6, 3)
    g = j @ j.T
    exact = min_norm_simplex(g)
    fw = min_norm_simplex(g, max_iter=5000, tol=1e-9, polish=False)
    assert float(fw @ g @ fw) <= float(exact @ g @ exact) * (1 + 1e-4)


def test_all_pairs_best_init_used():
    # for T=2 the solver is exactly the closed form whatever the ordering
    for a, b in itertools.permutations([[1.0, 0.0], [0.3, 0.7]]):
        j = torch.tensor([a, b], dtype=torch.float64)
        gamma = min(max(float((j[1] - j[0]) @ j[1]) / float((j[0] - j[1]) @ (j[0] - j[1])), 0.0), 1.0)
        torch.testing.assert_close(min_norm_simplex(j @ j.T), torch.tensor([gamma, 1 - gamma], dtype=torch.float64))


def test_nash_solver_direct():
    g = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    a = nash_solve(g)
    torch.testing.assert_close(g @ a, 1 / a, rtol=1e-8, atol=0)


@pytest.mark.parametrize("alpha", [0.2, 0.5, 1.0, 2.0, 10.0])
def test_fair_solve_residual_and_nash_at_alpha_one(alpha):
    j = rand_jac(4, 6, 17)
    j[2] -= 0.9 * j[1]
    g = j @ j.T
    a = fair_solve(g, alpha)
    assert bool((a > 0).all())
    torch.testing.assert_close(g @ a, a ** (-1 / alpha), rtol=1e-8, atol=0)
    if alpha == 1.0:
        torch.testing.assert_close(a, nash_solve(g), rtol=1e-8, atol=0)
    # a poor warm start converges to the same point
    poor = torch.tensor([1e-3, 1e3, 1.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(fair_solve(g, alpha, init=poor), a)


@pytest.mark.parametrize("seed", range(4))
def test_dual_cone_weights_kkt(seed):
    j = rand_jac(4, 3, 30 + seed)  # rank 3 < 4: a singular Gramian
    g = j @ j.T
    u = torch.rand(5, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v = dual_cone_weights(g, u)
    gn = g / torch.trace(g)
    scale = 1.0
    for row, ui in zip(v, u, strict=True):
        grad = gn @ row
        assert bool((row >= ui - 1e-12).all()) and bool((grad >= -1e-9 * scale).all())
        assert float((grad * (row - ui)).abs().max()) < 1e-9  # complementary slackness
    # one vector and a batch agree; an all-zero Gramian leaves u unchanged
    torch.testing.assert_close(dual_cone_weights(g, u[0]), v[0])
    torch.testing.assert_close(dual_cone_weights(torch.zeros(4, 4, dtype=torch.float64), u), u)


def test_dual_cone_weights_fallback_when_nnls_gives_up(monkeypatch):
    import scipy.optimize

    j = rand_jac(4, 3, 1)
    g = j @ j.T
    u = torch.eye(4, dtype=torch.float64) / 4
    ref = dual_cone_weights(g, u)

    def give_up(*args, **kwargs):
        raise RuntimeError("Maximum number of iterations reached.")

    monkeypatch.setattr(scipy.optimize, "nnls", give_up)
    torch.testing.assert_close(dual_cone_weights(g, u), ref, rtol=1e-7, atol=1e-8)

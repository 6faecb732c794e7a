"""The shared Gramian numerics (:mod:`mtl.balancers.gramian.linalg`): min-norm and Nash solvers."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtl.balancers.gramian.linalg import min_norm_2, min_norm_simplex, nash_solve
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

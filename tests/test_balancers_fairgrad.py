"""``fairgrad``: ``G w = w^(-1/alpha)`` by hand (orthogonal, symmetric), Nash-MTL at 1, scaling, torchjd."""

from __future__ import annotations

import pytest
import torch

from tests.balancer_helpers import make, rand_jac, weights_of

T64 = torch.float64


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_orthogonal_closed_form(alpha):
    # G = diag(n^2): n_t^2 w_t = w_t^(-1/alpha)  =>  w_t = n_t^(-2 alpha / (1 + alpha)); applied: T w
    n = torch.tensor([1.0, 2.0, 4.0], dtype=T64)
    w = weights_of(make("fairgrad", 3, alpha=alpha, max_norm=0.0), torch.diag(n))
    torch.testing.assert_close(w, 3 * n ** (-2 * alpha / (1 + alpha)), rtol=1e-5, atol=0)


def test_fairgrad_symmetric_two_tasks_closed_form():
    # G = [[a, b], [b, a]]: w1 = w2 = x with (a + b) x = x^(-1/alpha)  =>  x = (a + b)^(-alpha / (1 + alpha))
    j = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=T64)  # a = 5, b = 4
    for alpha in (0.5, 2.0):
        w = weights_of(make("fairgrad", 2, alpha=alpha, max_norm=0.0), j)
        expected = torch.full((2,), 2 * 9 ** (-alpha / (1 + alpha)), dtype=T64)
        torch.testing.assert_close(w, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("seed", range(2))
def test_fairgrad_solves_its_system(alpha, seed):
    j = rand_jac(4, 6, 60 + seed)
    j[1] -= 0.5 * j[0]
    g = j @ j.T
    w = weights_of(make("fairgrad", 4, alpha=alpha, max_norm=0.0), j) / 4
    assert bool((w > 0).all())
    torch.testing.assert_close(g @ w, w ** (-1 / alpha), rtol=1e-4, atol=0)


def test_fairgrad_alpha_one_is_t_times_nash_mtl():
    j = rand_jac(3, 5, 7)
    fair = weights_of(make("fairgrad", 3, alpha=1.0, max_norm=0.0), j)
    nash = weights_of(make("nash_mtl", 3, max_norm=0.0), j)
    torch.testing.assert_close(fair, 3 * nash, rtol=1e-5, atol=0)


def test_fairgrad_scaling_law_clipping_and_alpha_zero():
    j = rand_jac(3, 5, 8)
    alpha, c = 2.0, 100.0
    w = weights_of(make("fairgrad", 3, alpha=alpha, max_norm=0.0), j)
    # G -> c G  =>  w -> c^(-alpha / (1 + alpha)) w   (J -> sqrt(c) J)
    ws = weights_of(make("fairgrad", 3, alpha=alpha, max_norm=0.0), c**0.5 * j)
    torch.testing.assert_close(ws, c ** (-alpha / (1 + alpha)) * w, rtol=1e-5, atol=0)
    # max_norm clips ||J^T w|| (only when larger)
    norm = float(torch.linalg.vector_norm(j.T @ w))
    clipped = weights_of(make("fairgrad", 3, alpha=alpha, max_norm=0.5 * norm), j)
    torch.testing.assert_close(clipped, 0.5 * w, rtol=1e-5, atol=0)
    unclipped = weights_of(make("fairgrad", 3, alpha=alpha, max_norm=2 * norm), j)
    torch.testing.assert_close(unclipped, w, rtol=1e-6, atol=0)
    # alpha = 0: linear scalarisation
    torch.testing.assert_close(weights_of(make("fairgrad", 3, alpha=0.0), j), torch.ones(3, dtype=T64))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_agrees_with_torchjd(alpha):
    agg = pytest.importorskip("torchjd.aggregation")
    j = rand_jac(3, 6, 61)
    g = j @ j.T
    ours = weights_of(make("fairgrad", 3, alpha=alpha, max_norm=0.0), j) / 3
    ref = agg.FairGradWeighting(alpha=alpha)(g)  # scipy least_squares, official tolerances
    torch.testing.assert_close(ours, ref.double(), rtol=1e-4, atol=1e-6)

"""``upgrad``: projections onto the dual cone by hand (2 and 3 tasks), no conflict, torchjd's UPGrad."""

from __future__ import annotations

import pytest
import torch

from tests.balancer_helpers import make, nnls, rand_jac, weights_of

T64 = torch.float64


def test_upgrad_two_conflicting_gradients_by_hand():
    # g1 = (1, 0), g2 = (-2, 1): G12 = -2 < 0. pi(g1) = g1 - G12/G22 g2 = g1 + 0.4 g2 = (0.2, 0.4),
    # pi(g2) = g2 - G12/G11 g1 = g2 + 2 g1 = (0, 1); w = ((1, 0.4) + (2, 1)) / 2 = (1.5, 0.7)
    j = torch.tensor([[1.0, 0.0], [-2.0, 1.0]], dtype=T64)
    w = weights_of(make("upgrad", 2, reg_eps=0.0), j)
    torch.testing.assert_close(w, torch.tensor([1.5, 0.7], dtype=T64), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(j.T @ w, torch.tensor([0.1, 0.7], dtype=T64), rtol=1e-6, atol=1e-7)
    # torchjd's default regularisation (reg_eps = 1e-4 on G / tr G) moves it by O(1e-4)
    torch.testing.assert_close(weights_of(make("upgrad", 2), j), w, rtol=2e-3, atol=0)


def test_upgrad_three_gradients_by_hand():
    # g3 is orthogonal to g1, g2 (kept as is); g1, g2 conflict as above:
    # w = ((1, 0.4, 0) + (2, 1, 0) + (0, 0, 1)) / 3
    j = torch.tensor([[1.0, 0.0, 0.0], [-2.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=T64)
    w = weights_of(make("upgrad", 3, reg_eps=0.0), j)
    torch.testing.assert_close(w, torch.tensor([1.0, 1.4 / 3, 1 / 3], dtype=T64), rtol=1e-6, atol=1e-7)


def test_upgrad_is_the_mean_without_conflicts():
    j = rand_jac(4, 6, 3).abs()  # non-negative entries: every G_st >= 0
    w = weights_of(make("upgrad", 4), j)  # exact even with the default regularisation
    torch.testing.assert_close(w, torch.full((4,), 0.25, dtype=T64), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_upgrad_never_conflicts(seed):
    j = rand_jac(4, 5, 40 + seed)
    j[1] -= 1.5 * j[0]
    j[3] = -0.8 * j[2] + 0.1 * j[3]
    w = weights_of(make("upgrad", 4, reg_eps=0.0), j)
    scale = float((j * j).sum())
    assert float((j @ (j.T @ w)).min()) >= -1e-6 * scale


@pytest.mark.parametrize("seed", range(3))
def test_upgrad_agrees_with_torchjd(seed):
    agg = pytest.importorskip("torchjd.aggregation")
    j = rand_jac(4, 6, 90 + seed)
    j[1] -= j[0]
    g = j @ j.T
    ours = weights_of(make("upgrad", 4), j)
    try:  # torchjd's default projector (quadprog) when installed, else the scipy NNLS projector
        ref = agg.UPGradWeighting()(g)
    except ImportError:
        ref = agg.UPGradWeighting(projector=nnls())(g)
    torch.testing.assert_close(ours, ref.double(), rtol=1e-5, atol=1e-7)

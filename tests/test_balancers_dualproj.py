"""``dualproj``: the mean projected onto the dual cone, by hand (2 and 3 tasks), no conflict, torchjd."""

from __future__ import annotations

import pytest
import torch

from tests.balancer_helpers import make, nnls, rand_jac, weights_of

T64 = torch.float64


def test_dualproj_two_gradients_by_hand():
    # g1 = (1, 0), g2 = (-2, 1): mean m = (-0.5, 0.5), <m, g1> = -0.5 < 0, <m, g2> = 1.5:
    # project onto <d, g1> = 0: d = m + 0.5 g1 = (0, 0.5) = 1 g1 + 0.5 g2 (and <d, g2> = 0.5 >= 0)
    j = torch.tensor([[1.0, 0.0], [-2.0, 1.0]], dtype=T64)
    w = weights_of(make("dualproj", 2, reg_eps=0.0), j)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5], dtype=T64), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(weights_of(make("dualproj", 2), j), w, rtol=2e-3, atol=0)


def test_dualproj_three_gradients_by_hand():
    # m = (-1, 1, 1)/3: <m, g1> = -1/3, <m, g2> = 1, <m, g3> = 1/3; d = m + g1/3 = (0, 1/3, 1/3)
    # satisfies <d, g2> = <d, g3> = 1/3 >= 0 with multiplier 1/3 >= 0 on g1: w = (2/3, 1/3, 1/3)
    j = torch.tensor([[1.0, 0.0, 0.0], [-2.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=T64)
    w = weights_of(make("dualproj", 3, reg_eps=0.0), j)
    torch.testing.assert_close(w, torch.tensor([2 / 3, 1 / 3, 1 / 3], dtype=T64), rtol=1e-6, atol=1e-7)


def test_dualproj_keeps_a_non_conflicting_mean():
    j = torch.tensor([[1.0, 0.0], [-0.5, 1.0]], dtype=T64)  # m = (0.25, 0.5): <m, g1> = 0.25, <m, g2> = 0.375
    w = weights_of(make("dualproj", 2), j)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5], dtype=T64), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_dualproj_never_conflicts_and_is_closest(seed):
    j = rand_jac(4, 5, 50 + seed)
    j[1] -= 1.5 * j[0]
    w = weights_of(make("dualproj", 4, reg_eps=0.0), j)
    d = j.T @ w
    scale = float((j * j).sum())
    assert float((j @ d).min()) >= -1e-6 * scale
    # KKT of the projection: d - m = J^T lambda with lambda = w - 1/T >= 0, lambda_t <d, g_t> = 0
    lam = w - 0.25
    assert float(lam.min()) >= -1e-6
    assert float((lam * (j @ d)).abs().max()) <= 1e-6 * scale


@pytest.mark.parametrize("seed", range(3))
def test_dualproj_agrees_with_torchjd(seed):
    agg = pytest.importorskip("torchjd.aggregation")
    j = rand_jac(4, 6, 95 + seed)
    j[1] -= j[0]
    g = j @ j.T
    ours = weights_of(make("dualproj", 4), j)
    try:
        ref = agg.DualProjWeighting()(g)
    except ImportError:
        ref = agg.DualProjWeighting(projector=nnls())(g)
    torch.testing.assert_close(ours, ref.double(), rtol=1e-5, atol=1e-7)

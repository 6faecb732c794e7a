"""``imtl`` (IMTL-G): by hand, equal projections on the unit gradients, the singular fallback."""

from __future__ import annotations

import pytest
import torch

from tests.balancer_helpers import make, rand_jac, weights_of


def test_imtl_by_hand():
    j = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    # <d,u1> = a1, <d,u2> = 2 a2, a1 + a2 = 1 -> (2/3, 1/3)
    torch.testing.assert_close(weights_of(make("imtl", 2), j), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))


@pytest.mark.parametrize("t,seed", [(2, 0), (3, 1), (4, 2), (4, 3)])
def test_imtl_equal_projections_and_torchjd(t, seed):
    j = rand_jac(t, 6, 30 + seed)
    w = weights_of(make("imtl", t), j)
    assert abs(float(w.sum()) - 1) < 1e-5
    d = j.T @ w
    proj = j @ d / torch.linalg.vector_norm(j, dim=1)
    torch.testing.assert_close(proj, proj.mean().expand(t), rtol=1e-4, atol=1e-5)
    agg = pytest.importorskip("torchjd.aggregation")
    torch.testing.assert_close(w, agg.IMTLGWeighting()(j @ j.T), rtol=1e-4, atol=1e-5)


def test_imtl_duplicate_falls_back_to_generalised_form():
    j = rand_jac(3, 5, 4)
    j = torch.cat([j, j[:1]])  # g_4 = g_1: D U^T singular
    w = weights_of(make("imtl", 4), j)
    d = j.T @ w
    proj = j @ d / torch.linalg.vector_norm(j, dim=1)
    torch.testing.assert_close(proj, proj.mean().expand(4), rtol=1e-4, atol=1e-5)
    assert abs(float(w.sum()) - 1) < 1e-5

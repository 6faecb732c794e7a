"""``aligned_mtl``: equalised contributions, condition number one, torchjd agreement (up to its 1/T)."""

from __future__ import annotations

import pytest
import torch

from tests.balancer_helpers import make, rand_jac, weights_of


def test_aligned_mtl_orthogonal_equalises_contributions():
    j = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    w = weights_of(make("aligned_mtl", 3), j)
    # G = diag(1, 4, 16): B = sqrt(1) diag(1, 1/2, 1/4), w = B 1
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))
    contrib = torch.linalg.vector_norm(w.unsqueeze(1) * j, dim=1)
    torch.testing.assert_close(contrib, torch.ones(3, dtype=torch.float64))
    w = weights_of(make("aligned_mtl", 3, scale_mode="median"), j)
    torch.testing.assert_close(w, torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(3))
def test_aligned_mtl_condition_one_and_torchjd(seed):
    j = rand_jac(3, 5, 70 + seed)
    g = j @ j.T
    w = weights_of(make("aligned_mtl", 3), j)
    lam, v = torch.linalg.eigh(g)
    b = lam.min().sqrt() * (v / lam.sqrt()) @ v.T  # aligned gradients J^T B
    aligned_gram = b @ g @ b
    torch.testing.assert_close(aligned_gram, lam.min() * torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(w, b.sum(1), rtol=1e-5, atol=1e-6)
    agg = pytest.importorskip("torchjd.aggregation")
    torch.testing.assert_close(w, 3 * agg.AlignedMTLWeighting()(g), rtol=1e-5, atol=1e-6)

"""``mgda`` and ``mgda_ub``: closed forms, KKT conditions, normalisations, agreement with torchjd."""

from __future__ import annotations

import pytest
import torch

from tests.balancer_helpers import make, rand_jac, weights_of


@pytest.mark.parametrize(
    "g1,g2",
    [
        ([1.0, 0.0, 0.0], [0.0, 2.0, 0.0]),
        ([1.0, 0.0, 0.0], [2.0, 0.0, 0.0]),  # g1 is the min-norm point (gamma clipped to 1)
        ([3.0, 1.0, 0.0], [0.5, 0.2, 0.0]),  # g2 is the min-norm point (gamma clipped to 0)
        ([1.0, 2.0, -1.0], [-2.0, 0.5, 1.0]),
    ],
)
def test_mgda_two_gradients_closed_form(g1, g2):
    j = torch.tensor([g1, g2], dtype=torch.float64)
    a, b = j[0], j[1]
    gamma = min(max(float((b - a) @ b) / float((a - b) @ (a - b)), 0.0), 1.0)
    expected = gamma * a + (1 - gamma) * b
    for name in ("mgda", "mgda_ub"):
        w = weights_of(make(name, 2), j)
        torch.testing.assert_close(j.T @ w, expected, rtol=1e-5, atol=1e-6)
        assert w.min() >= 0 and abs(float(w.sum()) - 1) < 1e-6


def test_mgda_hand_three_gradients():
    j = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    w = weights_of(make("mgda", 3), j)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(5))
def test_mgda_kkt_three_gradients(seed):
    j = rand_jac(3, 4, seed)
    j[2] = -0.3 * j[0] + 0.2 * torch.randn(4, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    g = j @ j.T
    w = weights_of(make("mgda", 3), j)
    value = float(w @ g @ w)
    grad = g @ w
    scale = float(torch.diagonal(g).max())
    assert float(w.min()) >= -1e-7 and abs(float(w.sum()) - 1) < 1e-6
    # KKT of min w^T G w on the simplex: (G w)_i >= w^T G w, with equality on the support
    assert float(grad.min()) >= value - 1e-5 * scale
    for i in range(3):
        if w[i] > 1e-5:
            assert abs(float(grad[i]) - value) <= 1e-5 * scale


def test_mgda_normalizations_on_orthogonal_gradients():
    j = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    # raw: w_i ∝ 1 / ||g_i||^2 = (1, 1/9)
    torch.testing.assert_close(weights_of(make("mgda", 2), j), torch.tensor([0.9, 0.1], dtype=torch.float64))
    # l2: unit gradients -> equal weights
    torch.testing.assert_close(
        weights_of(make("mgda", 2, normalization="l2"), j), torch.tensor([0.5, 0.5], dtype=torch.float64)
    )
    # loss: g_i / L_i, norms (1/2, 3/1) -> w ∝ (4, 1/9)
    losses = torch.tensor([2.0, 1.0])
    w = weights_of(make("mgda", 2, normalization="loss"), j, losses=losses)
    torch.testing.assert_close(w, torch.tensor([36 / 37, 1 / 37], dtype=torch.float64))
    # loss+: g_i / (L_i ||g_i||), norms (1/2, 1) -> w ∝ (4, 1)
    w = weights_of(make("mgda", 2, normalization="loss+"), j, losses=losses)
    torch.testing.assert_close(w, torch.tensor([0.8, 0.2], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(3))
def test_mgda_agrees_with_torchjd(seed):
    agg = pytest.importorskip("torchjd.aggregation")
    j = rand_jac(4, 6, seed)
    g = j @ j.T
    ours = weights_of(make("mgda", 4), j)
    ref = agg.MGDAWeighting(epsilon=1e-7, max_iters=20000)(g)
    scale = float(torch.linalg.vector_norm(j, dim=1).max())
    # torchjd's plain Frank-Wolfe converges sublinearly: agreement on d to 2e-3 of the gradient scale
    assert float(torch.linalg.vector_norm(j.T @ (ours - ref))) <= 2e-3 * scale
    assert float(ours @ g @ ours) <= float(ref @ g @ ref) + 1e-6 * scale**2

"""``nash_mtl``: ``G alpha = 1/alpha`` with each solver, closed forms, normalisation, clipping, reuse and state."""

from __future__ import annotations

import pytest
import torch

from tests.balancer_helpers import make, rand_jac, weights_of


@pytest.mark.parametrize("seed", range(3))
def test_nash_solves_g_alpha_equals_inverse_alpha(seed):
    j = rand_jac(3, 6, 50 + seed)
    g = j @ j.T
    bal = make("nash_mtl", 3, max_norm=0.0, normalize_gramian=False)
    w = weights_of(bal, j)
    assert bool((w > 0).all())
    torch.testing.assert_close(g @ w, 1 / w, rtol=1e-4, atol=0)
    scipy_w = weights_of(make("nash_mtl", 3, max_norm=0.0, normalize_gramian=False, solver="scipy"), j)
    torch.testing.assert_close(scipy_w, w, rtol=1e-4, atol=0)


def test_nash_orthogonal_closed_form_and_scaling():
    j = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    w = weights_of(make("nash_mtl", 3, max_norm=0.0, normalize_gramian=False), j)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64), rtol=1e-5, atol=0)
    # the default normalisation G / ||G||_F (||G||_F = sqrt(273)) is rescaled back: the same alpha
    w = weights_of(make("nash_mtl", 3, max_norm=0.0), j)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64), rtol=1e-5, atol=0)
    assert float(torch.linalg.vector_norm(j.T @ w)) == pytest.approx(3**0.5, rel=1e-5)  # sqrt(T) unclipped
    # max_norm clips ||J^T w||
    w = weights_of(make("nash_mtl", 3, max_norm=0.5), j)
    assert float(torch.linalg.vector_norm(j.T @ w)) == pytest.approx(0.5, rel=1e-5)


def test_nash_default_step_is_the_papers_for_small_gradients():
    """G = 0.01 I: G alpha = 1/alpha gives alpha = (10, 10), update (1, 1), clipped to norm 1.

    Solving on G / ||G||_F = I / sqrt(2) without rescaling back gave alpha = 2^(1/4) (1, 1), i.e. the
    update (0.1189, 0.1189): sqrt(||G||_F) = 0.1189 times the paper's (1, 1), and too short to be clipped.
    """
    j = torch.tensor([[0.1, 0.0], [0.0, 0.1]], dtype=torch.float64)
    for norm in (True, False):
        w = weights_of(make("nash_mtl", 2, max_norm=0.0, normalize_gramian=norm), j)
        torch.testing.assert_close(w, torch.tensor([10.0, 10.0], dtype=torch.float64), rtol=1e-6, atol=0)
        w = weights_of(make("nash_mtl", 2, normalize_gramian=norm), j)  # default max_norm = 1
        clipped = torch.full((2,), 0.5**0.5, dtype=torch.float64)
        torch.testing.assert_close(j.T @ w, clipped, rtol=1e-6, atol=0)


@pytest.mark.parametrize("s", [1e-4, 1e3])
def test_nash_update_norm_is_sqrt_t_at_any_scale(s):
    j = s * rand_jac(3, 6, 70)
    w = weights_of(make("nash_mtl", 3, max_norm=0.0), j)
    assert float(torch.linalg.vector_norm(j.T @ w)) == pytest.approx(3**0.5, rel=1e-5)


def test_nash_update_every_and_state():
    a = make("nash_mtl", 3, max_norm=0.0, update_weights_every=2)
    j1, j2 = rand_jac(3, 5, 1), rand_jac(3, 5, 2)
    w1 = weights_of(a, j1)
    torch.testing.assert_close(weights_of(a, j2), w1)  # reused on the in-between step
    b = make("nash_mtl", 3, max_norm=0.0, update_weights_every=2)
    b.load_state_dict(a.state_dict())
    w2 = weights_of(a, j2)  # third call: recomputed
    torch.testing.assert_close(weights_of(b, j2), w2)
    torch.testing.assert_close(w2, weights_of(make("nash_mtl", 3, max_norm=0.0), j2), rtol=1e-5, atol=0)
    assert not torch.allclose(w2, w1, rtol=1e-2)


def test_nash_agrees_with_torchjd_if_cvxpy():
    pytest.importorskip("cvxpy")
    agg = pytest.importorskip("torchjd.aggregation")
    j = rand_jac(3, 6, 60)
    ours = weights_of(make("nash_mtl", 3, max_norm=1.0), j)
    ref = agg.NashMTL(n_tasks=3, max_norm=1.0).weighting(j)
    torch.testing.assert_close(ours, ref.double(), rtol=2e-2, atol=1e-3)  # official SCA stops at 1e-3

"""Every Gramian-level method: degenerate and non-finite Gramians, duplicates, scale and permutation."""

from __future__ import annotations

import pytest
import torch

from mtl.balancers import BalanceInput
from tests.balancer_helpers import inp_for, make, rand_jac, weights_of

GRADIENT_METHODS = [
    "mgda",
    "mgda_ub",
    "pcgrad",
    "cagrad",
    "imtl",
    "gradvac",
    "nash_mtl",
    "aligned_mtl",
    "primary_auxiliary",
    "upgrad",
    "dualproj",
    "fairgrad",
    "conflictfree",
    "excess_mtl",
]
#: weights ~ 1/s when the gradients are scaled by s (G by s^2), with clipping off: the update keeps its norm
INVERSE_SCALE = {"nash_mtl", "fairgrad"}


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_degenerate_gramians(name):
    j = rand_jac(3, 4, 1)
    zero = j.clone()
    zero[1] = 0.0
    dup = torch.cat([j[:2], j[:1]])
    for jac in (zero, dup, torch.zeros(3, 4, dtype=torch.float64)):
        w = weights_of(make(name, 3), jac)
        assert torch.isfinite(w).all(), (name, w)
        assert float(w.abs().max()) < 1e6
    one = make(name, 1).compute(inp_for(torch.tensor([[4.0]]), gradients=torch.tensor([[2.0]])))
    assert one.shape == (1,) and torch.isfinite(one).all() and float(one) > 0
    if name in ("mgda", "mgda_ub", "pcgrad", "imtl", "gradvac", "aligned_mtl", "primary_auxiliary", "upgrad",
                "dualproj", "conflictfree", "excess_mtl"):
        assert float(one) == pytest.approx(1.0)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_duplicated_gradient_bounded_update(name):
    """Duplicating a gradient must not produce a wild update (finite, same scale)."""
    j = rand_jac(2, 4, 3)
    w = weights_of(make(name, 3), torch.cat([j, j[:1]]))
    d = torch.cat([j, j[:1]]).T @ w
    assert float(torch.linalg.vector_norm(d)) < 1e3 * float(torch.linalg.vector_norm(j, dim=1).max())


@pytest.mark.parametrize("name", ["mgda", "imtl"])
def test_duplicated_gradient_same_update(name):
    """MGDA's hull and IMTL's equal-projection conditions do not change when a gradient repeats."""
    j = rand_jac(2, 4, 3)
    jd = torch.cat([j, j[:1]])
    torch.testing.assert_close(
        jd.T @ weights_of(make(name, 3), jd), j.T @ weights_of(make(name, 2), j), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_scale_invariance(name):
    """Weights do not depend on the scale of the gradients.

    Nash-MTL and FairGrad with alpha = 1 (``G w = 1/w``): the weights scale as 1/s, the update keeps its norm.
    """
    j = rand_jac(3, 5, 12)
    j[2] -= 0.7 * j[0]
    kw = {"max_norm": 0.0} if name in INVERSE_SCALE else {}
    ref = weights_of(make(name, 3, **kw), j)
    for s in (1e-5, 1e4):
        expected = ref / s if name in INVERSE_SCALE else ref
        got = weights_of(make(name, 3, **kw), s * j)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_non_finite_gramian_gives_ones(name):
    g = torch.eye(3)
    g[0, 1] = g[1, 0] = float("nan")
    rows = torch.eye(3)
    rows[0, 1] = float("nan")  # gradients whose Gramian is non-finite, for the methods that read them
    with pytest.warns(RuntimeWarning, match="non-finite"):
        w = make(name, 3).compute(inp_for(g, gradients=rows))
    torch.testing.assert_close(w, torch.ones(3))


def test_permutation_equivariance():
    j = rand_jac(3, 5, 8)
    perm = [2, 0, 1]
    names = ("mgda", "cagrad", "imtl", "nash_mtl", "aligned_mtl", "upgrad", "dualproj", "fairgrad",
             "conflictfree", "excess_mtl")
    for name in names:
        w = weights_of(make(name, 3), j)
        wp = weights_of(make(name, 3), j[perm])
        torch.testing.assert_close(wp, w[perm], rtol=1e-4, atol=1e-5)


def test_gramian_needed():
    bal = make("mgda", 2)
    with pytest.raises(ValueError, match="Gramian"):
        bal.compute(BalanceInput(tasks=["a", "b"], losses=torch.ones(2), step=0, max_steps=1))

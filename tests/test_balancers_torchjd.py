"""``torchjd``: the adapter's three modes against torchjd itself, refusals, the NNLS projector, state."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from mtl.balancers import build_balancer
from tests.balancer_helpers import GRAD_TASKS, make, nnls, rand_jac, weights_of


def test_torchjd_upgrad_adapter_matches_direct():
    agg = pytest.importorskip("torchjd.aggregation")
    for seed in range(3):
        j = rand_jac(3, 5, 90 + seed)
        j[1] -= j[0]
        w = weights_of(build_balancer("torchjd", GRAD_TASKS[:3], aggregator="UPGrad"), j)
        try:
            direct = agg.UPGrad()(j)  # quadprog projector when installed
        except ImportError:
            direct = agg.UPGrad(projector=nnls())(j)
        torch.testing.assert_close(j.T @ w, direct, rtol=1e-4, atol=1e-5)
        # UPGrad never conflicts with a task beyond its regularisation
        assert float((j @ (j.T @ w)).min()) >= -1e-3 * float((j * j).sum())


def test_nnls_projector_kkt():
    pytest.importorskip("torchjd")
    j = rand_jac(4, 3, 5)
    g = j @ j.T
    u = torch.eye(4, dtype=torch.float64)
    v = nnls()(u, g)
    gn = g / torch.trace(g) + 1e-4 * torch.eye(4, dtype=torch.float64)
    for row, ui in zip(v, u, strict=True):
        grad = gn @ row
        assert bool((row >= ui - 1e-9).all()) and bool((grad >= -1e-9).all())
        assert float((grad * (row - ui)).abs().max()) < 1e-9  # complementary slackness


def test_torchjd_adapter_modes():
    agg = pytest.importorskip("torchjd.aggregation")
    j = rand_jac(4, 6, 3)
    g = j @ j.T
    mgda = build_balancer("torchjd", GRAD_TASKS[:4], aggregator="mgda")  # case-insensitive
    assert mgda.mode == "gramian"
    torch.testing.assert_close(weights_of(mgda, j), agg.MGDAWeighting()(g), rtol=1e-5, atol=1e-6)
    mean = build_balancer("torchjd", GRAD_TASKS[:4], aggregator="Mean")
    assert mean.mode == "matrix"
    torch.testing.assert_close(weights_of(mean, j), torch.full((4,), 0.25, dtype=torch.float64))
    config = build_balancer("torchjd", GRAD_TASKS[:4], aggregator="ConFIG")
    assert config.mode == "aggregate"
    torch.testing.assert_close(j.T @ weights_of(config, j), agg.ConFIG()(j), rtol=1e-4, atol=1e-5)
    pref = build_balancer("torchjd", GRAD_TASKS[:4], aggregator="AlignedMTL", aggregator_kwargs={"pref_vector": [1, 1, 1, 1]})
    torch.testing.assert_close(weights_of(pref, j), weights_of(make("aligned_mtl", 4), j), rtol=1e-5, atol=1e-6)


def test_torchjd_adapter_refusals_and_errors(monkeypatch):
    pytest.importorskip("torchjd")
    for name in ("GradDrop", "TrimmedMean"):
        with pytest.raises(ValueError, match="not a function of the Gramian"):
            build_balancer("torchjd", GRAD_TASKS[:3], aggregator=name)
    with pytest.raises(KeyError, match="UPGrad"):
        build_balancer("torchjd", GRAD_TASKS[:3], aggregator="NoSuchThing")
    # the equivariance probe catches what the explicit list would not
    from mtl.balancers.gramian import torchjd_adapter

    monkeypatch.setattr(torchjd_adapter, "_UNSUPPORTED", {})
    bal = build_balancer("torchjd", GRAD_TASKS[:3], aggregator="TrimmedMean", aggregator_kwargs={"trim_number": 1})
    with pytest.raises(ValueError, match="rotation-equivariant"):
        weights_of(bal, rand_jac(3, 5, 0))


def test_torchjd_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchjd", None)
    monkeypatch.setitem(sys.modules, "torchjd.aggregation", None)
    with pytest.raises(ImportError, match=r'pip install "mtl\[jd\]"'):
        build_balancer("torchjd", ["a", "b"])


def test_torchjd_stateful_round_trip():
    pytest.importorskip("torchjd")
    a = build_balancer("torchjd", GRAD_TASKS[:3], aggregator="GradVac", aggregator_kwargs={"beta": 0.5})
    for s in range(2):
        weights_of(a, rand_jac(3, 4, s))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = build_balancer("torchjd", GRAD_TASKS[:3], aggregator="GradVac", aggregator_kwargs={"beta": 0.5})
    b.load_state_dict(torch.load(buf, weights_only=True))
    j = rand_jac(3, 4, 7)
    torch.manual_seed(0)
    wa = weights_of(a, j)
    torch.manual_seed(0)
    torch.testing.assert_close(weights_of(b, j), wa)

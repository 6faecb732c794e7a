"""``gradvac``: the first step is PCGrad, the cosine correction by hand, torchjd agreement, state and subsets."""

from __future__ import annotations

import math

import pytest
import torch

from tests.balancer_helpers import make, rand_jac, weights_of


def test_gradvac_fresh_ema_is_pcgrad_and_updates_ema():
    j = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    beta = 0.01
    bal = make("gradvac", 2, beta=beta)
    w = weights_of(bal, j)
    torch.testing.assert_close(j.T @ w, torch.tensor([0.5, 1.5], dtype=torch.float64), rtol=1e-6, atol=1e-6)
    cos = -1 / math.sqrt(2)
    torch.testing.assert_close(
        bal.phi_hat.double(), torch.tensor([[0.0, beta * cos], [beta * cos, 0.0]], dtype=torch.float64)
    )


def test_gradvac_raises_cosine_to_target():
    j = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    bal = make("gradvac", 2, beta=0.0)
    bal.phi_hat.copy_(torch.tensor([[0.0, 0.5], [0.0, 0.0]], dtype=torch.float64))
    w = weights_of(bal, j)
    # g1' = g1 + g2 |g1| (0.5 * 1 - 0) / (|g2| sqrt(0.75)): cos(g1', g2) = 0.5 exactly
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0 + 0.5 / (2 * math.sqrt(0.75))], dtype=torch.float64))
    g1p = j[0] + (float(w[1]) - 1.0) * j[1]
    assert float(g1p @ j[1]) / float(torch.linalg.vector_norm(g1p) * torch.linalg.vector_norm(j[1])) == (
        pytest.approx(0.5, abs=1e-6)
    )


def test_gradvac_agrees_with_torchjd_over_steps():
    agg = pytest.importorskip("torchjd.aggregation")
    ours = make("gradvac", 4, beta=0.3, seed=5)
    ref = agg.GradVacWeighting(beta=0.3)
    torch.manual_seed(5)
    for step in range(4):
        j = rand_jac(4, 5, 40 + step)
        j[1] -= 0.8 * j[0]
        torch.testing.assert_close(weights_of(ours, j), ref(j @ j.T), rtol=1e-5, atol=1e-5)


def test_gradvac_state_round_trip_and_subset():
    a = make("gradvac", 4, beta=0.2, seed=1)
    for s in range(3):
        weights_of(a, rand_jac(4, 5, s))
    b = make("gradvac", 4, beta=0.2, seed=99)
    b.load_state_dict(a.state_dict())
    j = rand_jac(4, 5, 9)
    torch.testing.assert_close(weights_of(a, j), weights_of(b, j))
    torch.testing.assert_close(a.phi_hat, b.phi_hat)
    # a step on a subset of the tasks only touches their pairs
    before = a.phi_hat.clone()
    sub = rand_jac(2, 5, 11)
    weights_of(a, sub, tasks=["b", "d"])
    changed = (a.phi_hat != before).nonzero().tolist()
    assert changed and all(tuple(p) in {(1, 3), (3, 1)} for p in changed)

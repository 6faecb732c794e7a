"""``pcgrad``: projections by hand, explicit-vector reference, torchjd agreement, checkpointed orders."""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor

from tests.balancer_helpers import make, rand_jac, weights_of


def test_pcgrad_two_conflicting_by_hand():
    j = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    # g1.g2 = -1: g1' = g1 + g2/2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1); sum (0.5, 1.5)
    w = weights_of(make("pcgrad", 2), j)
    torch.testing.assert_close(w, torch.tensor([2.0, 1.5], dtype=torch.float64))
    torch.testing.assert_close(j.T @ w, torch.tensor([0.5, 1.5], dtype=torch.float64))
    w = weights_of(make("pcgrad", 2, reduction="mean"), j)
    torch.testing.assert_close(j.T @ w, torch.tensor([0.25, 0.75], dtype=torch.float64))


def test_pcgrad_non_conflicting_unchanged():
    j = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    assert bool(((j @ j.T) >= 0).all())
    torch.testing.assert_close(weights_of(make("pcgrad", 3), j), torch.ones(3, dtype=torch.float64))


def _pcgrad_vectors(j: Tensor, seed: int) -> Tensor:
    """PCGrad on explicit vectors, same order draws (randperm(T) per task, skipping itself)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(j.shape[0]):
        gi = j[i].clone()
        for k in torch.randperm(j.shape[0], generator=gen).tolist():
            if k != i and float(gi @ j[k]) < 0:
                gi = gi - float(gi @ j[k]) / float(j[k] @ j[k]) * j[k]
        out.append(gi)
    return torch.stack(out).sum(0)


@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_matches_explicit_vectors_and_torchjd(seed):
    j = rand_jac(4, 5, 10 + seed)
    bal = make("pcgrad", 4, seed=seed)
    w = weights_of(bal, j)
    torch.testing.assert_close(j.T @ w, _pcgrad_vectors(j, seed), rtol=1e-5, atol=1e-5)
    agg = pytest.importorskip("torchjd.aggregation")
    torch.manual_seed(seed)  # torchjd draws randperm(T) per task from the global generator
    ref = agg.PCGradWeighting()(j @ j.T)
    torch.testing.assert_close(w, ref, rtol=1e-5, atol=1e-5)


def test_pcgrad_state_round_trip():
    j = rand_jac(4, 5, 1)
    a = make("pcgrad", 4, seed=7)
    for _ in range(3):
        weights_of(a, j)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make("pcgrad", 4, seed=123)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(3):
        torch.testing.assert_close(weights_of(a, j), weights_of(b, j))

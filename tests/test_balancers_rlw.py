"""``rlw``: seeded draws summing to T, cached per step, and their distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp, w_list

TASKS = ["a", "b", "c"]


def test_rlw_seeded_sums_to_t_and_cached_per_step() -> None:
    b, same, other = (build_balancer("rlw", TASKS, seed=s) for s in (3, 3, 4))
    ref = torch.Generator().manual_seed(3)
    for step in range(5):
        w = w_list(b, inp(TASKS, [1.0] * 3, step))
        expected = (3 * torch.softmax(torch.randn(3, generator=ref), 0)).tolist()
        assert w == pytest.approx(expected, rel=1e-6)
        assert sum(w) == pytest.approx(3.0)
        assert w_list(same, inp(TASKS, [1.0] * 3, step)) == w
        assert w_list(other, inp(TASKS, [1.0] * 3, step)) != w
        assert w_list(b, inp(["c", "a"], [1.0] * 2, step)) == [w[2], w[0]]  # micro-batch: same draw


def test_rlw_distribution_moments() -> None:
    """T = 2: w_a = 2 sigmoid(z_a - z_b), z_a - z_b ~ N(0, 2). E[w_a] = 1 by symmetry;
    E[w_a^2] = 4 E[sigmoid(X)^2] by numerical integration over the N(0, 2) density."""
    b = build_balancer("rlw", ["a", "b"], seed=0)
    n = 8000
    w = np.array([w_list(b, inp(["a"], [1.0], s))[0] for s in range(n)])  # one task per step
    x = np.linspace(-12, 12, 20001)
    dens = np.exp(-(x**2) / 4) / math.sqrt(4 * math.pi)
    second = 4 * np.trapezoid((1 / (1 + np.exp(-x))) ** 2 * dens, x)  # ~ 1.30
    assert 1.2 < second < 1.45
    sd1, sd2 = w.std() / math.sqrt(n), (w**2).std() / math.sqrt(n)
    assert abs(w.mean() - 1.0) < 5 * sd1
    assert abs((w**2).mean() - second) < 5 * sd2

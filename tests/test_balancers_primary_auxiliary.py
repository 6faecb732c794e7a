"""``primary_auxiliary``: projections by hand, the primary is never hurt, errors name the tasks."""

from __future__ import annotations

import pytest
import torch

from mtl.balancers import build_balancer
from tests.balancer_helpers import make, rand_jac, weights_of


def test_primary_auxiliary_by_hand():
    j = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    # a1 conflicts: projected to (0, 1); a2 kept: d = (1,0) + (0,1) + (1,1) = (2, 2)
    w = weights_of(make("primary_auxiliary", 3, primary="a"), j)
    torch.testing.assert_close(w, torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(j.T @ w, torch.tensor([2.0, 2.0], dtype=torch.float64))
    w = weights_of(make("primary_auxiliary", 3, primary="a", aux_weight=0.5), j)
    torch.testing.assert_close(j.T @ w, torch.tensor([1.5, 1.0], dtype=torch.float64))
    # primary in another row
    w = weights_of(make("primary_auxiliary", 3, primary="b"), j)
    # a=(1,0): <a,p> = -1 -> a - (-1/2) p = (0.5, 0.5); c=(1,1): <c,p>=0 kept; d = p + (0.5,0.5) + (1,1)
    torch.testing.assert_close(j.T @ w, torch.tensor([0.5, 2.5], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(10))
def test_primary_auxiliary_never_hurts_primary(seed):
    j = rand_jac(4, 3, 80 + seed)
    w = weights_of(make("primary_auxiliary", 4, primary="c", aux_weight=2.0), j)
    gp = j[2]
    assert float((j.T @ w) @ gp) >= float(gp @ gp) * (1 - 1e-5)


def test_primary_auxiliary_errors_list_tasks():
    with pytest.raises(ValueError, match=r"\['a', 'b'\]"):
        build_balancer("primary_auxiliary", ["a", "b"])
    with pytest.raises(ValueError, match="unknown primary='z'.*\\['a', 'b'\\]"):
        build_balancer("primary_auxiliary", ["a", "b"], primary="z")

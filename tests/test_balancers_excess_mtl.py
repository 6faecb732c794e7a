"""``excess_mtl``: AdaGrad-preconditioned excess risks and the exponentiated update by hand, invariances, training."""

from __future__ import annotations

import math

import pytest
import torch

from tests.balancer_helpers import make, rand_jac, weights_of
from tests.toy_trainer import flat_params, single_thread, toy_trainer


@pytest.fixture(autouse=True)
def _single_thread():
    yield from single_thread()


def test_two_steps_by_hand() -> None:
    bal = make("excess_mtl", 2, step_size=0.5, eps=1e-12)
    # step 0: S_a = (1, 0), S_b = (0, 4): e_a = 1 / 1 = 1, e_b = 4 / 2 = 2 (the references); weights stay 1
    w0 = weights_of(bal, torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64))
    assert w0.tolist() == pytest.approx([1.0, 1.0])
    assert bal.initial.tolist() == pytest.approx([1.0, 2.0], rel=1e-6)
    # step 1: S_a = (5, 0): e_a = 4 / sqrt(5); S_b = (0, 8): e_b = 4 / sqrt(8); ratios e / e(0)
    r = [4 / math.sqrt(5) / 1.0, 4 / math.sqrt(8) / 2.0]
    lam = [math.exp(0.5 * x) for x in r]
    expected = [2 * x / sum(lam) for x in lam]
    w1 = weights_of(bal, torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64))
    assert w1.tolist() == pytest.approx(expected, rel=1e-5)
    # step 2 multiplies on: lambda <- lambda exp(0.5 e / e(0)); S_a = (5, 1): e_a = 1 / 1 = 1 (the 0-coordinate)
    r2 = [1.0 / 1.0 / 1.0, 0.0]
    lam2 = [e * math.exp(0.5 * x) for e, x in zip(expected, r2, strict=True)]
    w2 = weights_of(bal, torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64))
    assert w2.tolist() == pytest.approx([2 * x / sum(lam2) for x in lam2], rel=1e-5)


def test_scale_of_the_gradients_does_not_matter() -> None:
    jacs = [rand_jac(3, 6, s) for s in range(4)]
    ref = make("excess_mtl", 3)
    scaled = make("excess_mtl", 3)
    for j in jacs:
        w = weights_of(ref, j)
        ws = weights_of(scaled, 1e3 * j)  # e_t and e_t(0) both scale by 1e3: the ratio does not
    torch.testing.assert_close(ws, w, rtol=1e-5, atol=0)
    assert float(w.sum()) == pytest.approx(3.0)


def test_step_size_zero_keeps_weights_one_and_zero_reference_gives_ratio_zero() -> None:
    bal = make("excess_mtl", 2, step_size=0.0)
    for s in range(3):
        assert weights_of(bal, rand_jac(2, 4, s)).tolist() == pytest.approx([1.0, 1.0])
    bal = make("excess_mtl", 2, step_size=1.0)
    weights_of(bal, torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))  # task b's reference is 0
    w = weights_of(bal, torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    e_a = 1 / math.sqrt(2)  # S_a = (2, 0): e_a = 1 / sqrt(2), reference 1
    assert w.tolist() == pytest.approx([2 * math.exp(e_a) / (math.exp(e_a) + 1), 2 / (math.exp(e_a) + 1)], rel=1e-5)


def test_needs_the_gradients_and_skips_non_finite_steps() -> None:
    from tests.balancer_helpers import inp_for

    bal = make("excess_mtl", 2)
    j = rand_jac(2, 3, 0)
    with pytest.raises(ValueError, match="task gradients"):
        bal.compute(inp_for(j @ j.T))
    weights_of(bal, j)
    state = {k: v.clone() for k, v in bal.state_dict().items()}
    bad = j.clone()
    bad[0, 0] = float("inf")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert weights_of(bal, bad).tolist() == [1.0, 1.0]
    for k, v in bal.state_dict().items():
        torch.testing.assert_close(v, state[k], equal_nan=True)


@pytest.mark.parametrize("source", ["representation", "parameters"])
def test_excess_mtl_trains_two_steps(tmp_path, source: str) -> None:
    tr = toy_trainer(tmp_path, balancer="excess_mtl", balancer_kwargs={"source": source, "step_size": 0.5},
                     max_steps=2)
    before = flat_params(tr.model)
    for _ in range(2):
        res = tr.train_step()
        assert res is not None and float(res.weights.sum()) == pytest.approx(3.0, rel=1e-5)
    assert not torch.equal(flat_params(tr.model), before)
    n_shared = sum(p.numel() for p in tr.model.shared_parameters())
    assert tr.balancer.sq_sum.shape == (3, 8 if source == "representation" else n_shared)
    assert bool(tr.balancer.has_initial.all()) and bool((tr.balancer.initial > 0).all())

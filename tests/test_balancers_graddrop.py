"""``graddrop``: the sign-purity mask by hand, its probabilities, leak, both sources, determinism, training."""

from __future__ import annotations

import pytest
import torch

from mtl.balancers.aggregator.graddrop import sign_dropout_coefficients
from tests.balancer_helpers import inp_for, make, rand_jac
from tests.toy_trainer import flat_params, single_thread, toy_trainer


@pytest.fixture(autouse=True)
def _single_thread():
    yield from single_thread()


def _agg(bal, jac: torch.Tensor):
    return bal.aggregate(inp_for(jac @ jac.T, gradients=jac))


def test_mask_by_hand() -> None:
    grads = torch.tensor([[1.0, -2.0, 3.0, 0.0], [3.0, 2.0, -1.0, 0.0]])
    # column 0: both positive, P = 1 > U: the positive ones stay (both)
    # column 1: -2 and 2, P = 1/2; U = 0.3 < P: the positive one stays
    # column 2: 3 and -1, P = 1/2 (1 + 2/4) = 0.75; U = 0.8 > P: the negative one stays
    # column 3: all zero: nothing to keep (P = 1/2)
    u = torch.tensor([0.7, 0.3, 0.8, 0.1])
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(sign_dropout_coefficients(grads, u, 0.0), mask)
    # U = 0.6 in column 1 (> P = 1/2): the negative one stays instead
    u2 = torch.tensor([0.7, 0.6, 0.8, 0.1])
    torch.testing.assert_close(sign_dropout_coefficients(grads, u2, 0.0)[:, 1], torch.tensor([1.0, 0.0]))
    # leak l: C = l + (1 - l) M
    torch.testing.assert_close(sign_dropout_coefficients(grads, u, 0.25), 0.25 + 0.75 * mask)


def test_the_surviving_sign_follows_its_share_of_the_magnitude() -> None:
    # every column (3, -1): P = 0.75, so task a's positive gradient survives in ~75 % of the columns
    n = 20000
    jac = torch.stack([torch.full((n,), 3.0), torch.full((n,), -1.0)]).double()
    agg = _agg(make("graddrop", 2, seed=3), jac)
    c = agg.coefficients
    kept_a = c[0].mean().item()
    assert kept_a == pytest.approx(0.75, abs=0.015)
    torch.testing.assert_close(c[0] + c[1], torch.ones(n))  # exactly one sign survives in every column
    # the reported weights: the share of each task's |g| that passes
    assert agg.weights.tolist() == pytest.approx([kept_a, 1 - kept_a], abs=1e-6)


def test_agreeing_coordinates_always_pass_and_leak_one_is_the_plain_sum() -> None:
    jac = torch.tensor([[1.0, -2.0, 0.5], [3.0, -1.0, 0.0], [0.2, -0.1, 4.0]], dtype=torch.float64)
    for seed in range(5):  # no conflict in any coordinate: everything passes, whatever U
        agg = _agg(make("graddrop", 3, seed=seed), jac)
        expected = torch.ones(3, 3)
        expected[1, 2] = 0.0  # a zero gradient has no sign to keep (it contributes nothing either way)
        torch.testing.assert_close(agg.coefficients, expected)
        torch.testing.assert_close(agg.combined(jac.float()), jac.float().sum(0))
        torch.testing.assert_close(agg.weights, torch.ones(3))
    mixed = rand_jac(3, 50, 1)
    agg = _agg(make("graddrop", 3, leak=1.0), mixed)
    torch.testing.assert_close(agg.combined(mixed.float()), mixed.float().sum(0))


def test_parameters_source_gives_the_update_with_the_same_draws() -> None:
    jac = rand_jac(3, 40, 5).float()
    rep = _agg(make("graddrop", 3, seed=11), jac)
    par = _agg(make("graddrop", 3, seed=11, source="parameters"), jac)
    assert par.coefficients is None and rep.update is None
    torch.testing.assert_close(par.update, (rep.coefficients * jac).sum(0))
    torch.testing.assert_close(par.weights, rep.weights)
    # the parameters path never forms C (sums of the positive and negative parts): same update, with a leak,
    # with all-zero and sign-agreeing columns, over many columns
    wide = rand_jac(3, 5000, 9).float()
    wide[:, :10] = 0.0
    wide[:, 10:20] = wide[:, 10:20].abs()
    for leak in (0.0, 0.3):
        rep = _agg(make("graddrop", 3, seed=7, leak=leak), wide)
        par = _agg(make("graddrop", 3, seed=7, leak=leak, source="parameters"), wide)
        torch.testing.assert_close(par.update, (rep.coefficients * wide).sum(0))
        torch.testing.assert_close(par.weights, rep.weights)
        torch.testing.assert_close(par.update[:10], torch.zeros(10))
        torch.testing.assert_close(par.update[10:20], wide[:, 10:20].sum(0))


def test_parameters_source_in_chunks_matches_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    jac = rand_jac(3, 40, 6).float()
    whole = _agg(make("graddrop", 3, seed=2, source="parameters"), jac)
    bal = make("graddrop", 3, seed=2, source="parameters")
    monkeypatch.setattr(bal, "CHUNK", 7)  # 6 chunks, the draws continue from one chunk to the next
    chunked = _agg(bal, jac)
    torch.testing.assert_close(chunked.update, whole.update)
    torch.testing.assert_close(chunked.weights, whole.weights)


def test_permutation_equivariance_and_seeds() -> None:
    jac = rand_jac(3, 30, 8).float()
    perm = [2, 0, 1]
    a = _agg(make("graddrop", 3, seed=4), jac)
    b = _agg(make("graddrop", 3, seed=4), jac[perm])
    torch.testing.assert_close(b.coefficients, a.coefficients[perm])  # one U per coordinate, not per task
    again = _agg(make("graddrop", 3, seed=4), jac)
    other = _agg(make("graddrop", 3, seed=5), jac)
    torch.testing.assert_close(again.coefficients, a.coefficients)
    assert not torch.equal(other.coefficients, a.coefficients)
    bal = make("graddrop", 3, seed=4)
    first, second = _agg(bal, jac), _agg(bal, jac)
    assert not torch.equal(first.coefficients, second.coefficients)  # a new U every step


def test_refuses_bad_leak_and_missing_gradients() -> None:
    with pytest.raises(ValueError, match="leak"):
        make("graddrop", 2, leak=1.5)
    jac = rand_jac(2, 3, 0)
    with pytest.raises(ValueError, match="task gradients"):
        make("graddrop", 2).aggregate(inp_for(jac @ jac.T))


@pytest.mark.parametrize("source", ["representation", "parameters"])
def test_graddrop_trains_two_steps(tmp_path, source: str) -> None:
    tr = toy_trainer(tmp_path, balancer="graddrop", balancer_kwargs={"source": source}, max_steps=2)
    before = flat_params(tr.model)
    for _ in range(2):
        res = tr.train_step()
        assert res is not None and bool(torch.isfinite(res.weights).all())
        assert all(0.0 <= w <= 1.0 for w in res.weights.tolist())
    assert bool(torch.isfinite(flat_params(tr.model)).all())
    assert not torch.equal(flat_params(tr.model), before)
    assert set(tr.balancer.log_values()) == {"weight/a", "weight/b", "weight/c"}

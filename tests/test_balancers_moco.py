"""``moco``: tracking and the simplex step by hand over two steps, rho, decays, normalisation, training."""

from __future__ import annotations

import pytest
import torch

from mtl.balancers import BalanceInput
from mtl.balancers.aggregator.moco import project_simplex
from tests.balancer_helpers import make
from tests.toy_trainer import flat_params, single_thread, toy_trainer


@pytest.fixture(autouse=True)
def _single_thread():
    yield from single_thread()


def _inp(jac: torch.Tensor, tasks: list[str] | None = None, losses: list[float] | None = None) -> BalanceInput:
    n = jac.shape[0]
    return BalanceInput(tasks=tasks or ["a", "b", "c"][:n], losses=torch.tensor(losses or [1.0] * n), step=0,
                        max_steps=10, gramian=(jac @ jac.T).double(), gradients=jac.float())


def _proj2(a: float, b: float) -> tuple[float, float]:
    """Projection of (a, b) onto the 2-simplex when both stay positive: shift both by the same amount."""
    shift = (1.0 - a - b) / 2
    return a + shift, b + shift


def test_two_steps_by_hand() -> None:
    bal = make("moco", 2, beta=0.5, gamma=0.1)
    jac = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # step 0: y = 0 + 0.5 (g - 0) = (0.5, 0), (0, 1); Y Y^T = diag(0.25, 1); lambda = (1/2, 1/2)
    lam = _proj2(0.5 - 0.1 * 0.25 * 0.5, 0.5 - 0.1 * 1.0 * 0.5)  # (0.51875, 0.48125)
    assert lam == pytest.approx((0.51875, 0.48125))
    agg = bal.aggregate(_inp(jac))
    torch.testing.assert_close(agg.update, torch.tensor([2 * lam[0] * 0.5, 2 * lam[1] * 1.0]))
    torch.testing.assert_close(agg.weights, torch.tensor([2 * lam[0], 2 * lam[1]]))
    # step 1: y = y + 0.5 (g - y) = (0.75, 0), (0, 1.5); Y Y^T = diag(0.5625, 2.25)
    lam = _proj2(lam[0] - 0.1 * 0.5625 * lam[0], lam[1] - 0.1 * 2.25 * lam[1])
    agg = bal.aggregate(_inp(jac))
    torch.testing.assert_close(agg.update, torch.tensor([2 * lam[0] * 0.75, 2 * lam[1] * 1.5]))
    assert float(bal.steps) == 2
    torch.testing.assert_close(bal.tracked, torch.tensor([[0.75, 0.0], [0.0, 1.5]]))


def test_rho_and_step_decays() -> None:
    jac = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # rho = 1 adds lambda to the step: (0.25 + 1, 1 + 1) * 0.5
    bal = make("moco", 2, beta=0.5, gamma=0.1, rho=1.0)
    lam = _proj2(0.5 - 0.1 * 1.25 * 0.5, 0.5 - 0.1 * 2.0 * 0.5)
    torch.testing.assert_close(bal.aggregate(_inp(jac)).weights, torch.tensor([2 * lam[0], 2 * lam[1]]))
    # beta_sigma = 1: beta_k = beta / (k + 1), the second step tracks with 0.25: y = 0.5 g + 0.25 (g - 0.5 g)
    bal = make("moco", 2, beta=0.5, beta_sigma=1.0, gamma=0.0)
    bal.aggregate(_inp(jac))
    bal.aggregate(_inp(jac))
    torch.testing.assert_close(bal.tracked, 0.625 * jac)
    torch.testing.assert_close(bal.lam, torch.tensor([0.5, 0.5], dtype=torch.float64))  # gamma = 0: no step


def test_simplex_projection_by_hand() -> None:
    t = torch.tensor
    torch.testing.assert_close(project_simplex(t([0.6, 0.5, 0.1], dtype=torch.float64)),
                               t([0.6 - 0.2 / 3, 0.5 - 0.2 / 3, 0.1 - 0.2 / 3], dtype=torch.float64))
    torch.testing.assert_close(project_simplex(t([1.5, 0.2, -0.5], dtype=torch.float64)),
                               t([1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(project_simplex(t([0.2, 0.8], dtype=torch.float64)), t([0.2, 0.8], dtype=torch.float64))


def test_a_large_conflict_moves_the_weight_to_the_smaller_gradient() -> None:
    # MGDA's min-norm direction favours the small gradient; with beta = 1 (no tracking) and a large gamma
    # lambda goes to the vertex of the smaller one: y = g, Y Y^T = diag(1, 100), step (0.5, 50) * gamma
    bal = make("moco", 2, beta=1.0, gamma=1.0)
    agg = bal.aggregate(_inp(torch.tensor([[1.0, 0.0], [0.0, 10.0]])))
    torch.testing.assert_close(agg.weights, torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(agg.update, torch.tensor([2.0, 0.0]))


def test_normalize_tracks_loss_scaled_unit_gradients_and_task_order() -> None:
    jac = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # norms 5 and 2
    bal = make("moco", 2, beta=1.0, gamma=0.0, normalize=True)
    bal.aggregate(_inp(jac, losses=[2.0, 0.5]))
    torch.testing.assert_close(bal.tracked, torch.tensor([[1.2, 1.6], [0.0, 0.5]]))
    # the step's rows in another order: the state stays in task order, the weights follow the step's order
    a, b = make("moco", 2, beta=0.5), make("moco", 2, beta=0.5)
    ref = a.aggregate(_inp(jac))
    swapped = b.aggregate(_inp(jac[[1, 0]], tasks=["b", "a"]))
    torch.testing.assert_close(swapped.update, ref.update)
    torch.testing.assert_close(swapped.weights, ref.weights[[1, 0]])
    torch.testing.assert_close(b.tracked, a.tracked)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="source=parameters"):
        make("moco", 2, source="representation")
    with pytest.raises(ValueError, match="beta"):
        make("moco", 2, beta=0.0)
    with pytest.raises(ValueError, match="every task"):
        make("moco", 3).aggregate(_inp(torch.eye(2)))


def test_changed_gradient_size_restarts_tracking() -> None:
    bal = make("moco", 2)
    bal.aggregate(_inp(torch.eye(2)))
    with pytest.warns(RuntimeWarning, match="restart"):
        bal.aggregate(_inp(torch.ones(2, 3)))
    assert bal.tracked.shape == (2, 3)


def test_moco_trains_two_steps(tmp_path) -> None:
    tr = toy_trainer(tmp_path, balancer="moco", max_steps=2)
    before = flat_params(tr.model)
    for _ in range(2):
        res = tr.train_step()
        assert res is not None and float(res.weights.sum()) == pytest.approx(3.0, rel=1e-5)
    assert bool(torch.isfinite(flat_params(tr.model)).all())
    assert not torch.equal(flat_params(tr.model), before)
    assert int(tr.balancer.steps) == 2 and tr.balancer.tracked.shape[0] == 3


def test_representation_source_is_refused_before_any_data_is_read() -> None:
    from mtl.config import compose_train
    from mtl.training.validate import ConfigError, validate_config

    cfg = compose_train(["balancer=moco", "balancer.source=representation", "sampler=all_tasks"])
    with pytest.raises(ConfigError, match="balancer.source=representation: balancer 'moco' runs on parameters only"):
        validate_config(cfg)
    validate_config(compose_train(["balancer=moco", "sampler=all_tasks"]))  # the default source is fine

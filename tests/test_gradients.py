"""The gradient engine: each mode's update equals the weighted sum of task gradients, computed independently."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mtl.balancers import BalanceInput, Balancer, build_balancer, register_balancer
from mtl.models.multitask import MultiTaskModel
from mtl.training.gradients import GradientEngine
from tests.helpers import ToyEncoder, random_batch

TASKS = {"a": 3, "b": 2, "c": 4}


def make_model(pooling: str = "mean") -> MultiTaskModel:
    torch.manual_seed(0)
    m = MultiTaskModel(ToyEncoder(), TASKS, pooling=pooling, dropout=0.0)
    return m


def batches() -> dict[str, dict[str, torch.Tensor]]:
    return {t: random_batch(5, 6, n, seed=i) for i, (t, n) in enumerate(TASKS.items())}


def task_grads(model: MultiTaskModel, b) -> dict[str, list[torch.Tensor]]:
    """Reference: each task's gradient on the shared parameters by plain autograd."""
    out = {}
    for t, batch in b.items():
        loss = F.cross_entropy(model(t, batch), batch["labels"])
        out[t] = torch.autograd.grad(loss, model.shared_parameters())
    return out


def flat(gs) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in gs])


@register_balancer("_test_fixed_gramian")
class FixedGramianWeights(Balancer):
    """A gradient method with known weights, recording the Gramian it was given."""

    needs_gramian = True

    def __init__(self, task_names, weights=(0.5, 2.0, 1.0), **kw):
        super().__init__(task_names, **kw)
        self.fixed = torch.tensor(weights)
        self.seen: torch.Tensor | None = None

    def weights(self, inp: BalanceInput) -> torch.Tensor:
        self.seen = inp.gramian.clone()
        return self.fixed.clone()


def test_loss_mode_matches_weighted_sum_of_task_gradients() -> None:
    model, b = make_model(), batches()
    ref = task_grads(model, b)
    bal = build_balancer("static", list(TASKS), weights={"a": 0.5, "b": 2.0, "c": 1.0})
    GradientEngine(model, bal).step(b, 0, 10, {})
    expected = 0.5 * flat(ref["a"]) + 2.0 * flat(ref["b"]) + 1.0 * flat(ref["c"])
    got = flat([p.grad for p in model.shared_parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_parameter_mode_gramian_and_update() -> None:
    model, b = make_model(), batches()
    ref = task_grads(model, b)
    J = torch.stack([flat(ref[t]) for t in TASKS])
    bal = FixedGramianWeights(list(TASKS), source="parameters")
    res = GradientEngine(model, bal).step(b, 0, 10, {})
    torch.testing.assert_close(bal.seen, (J @ J.T).double(), rtol=1e-5, atol=1e-7)
    expected = torch.tensor([0.5, 2.0, 1.0]) @ J
    torch.testing.assert_close(flat([p.grad for p in model.shared_parameters()]), expected, rtol=1e-5, atol=1e-6)
    # heads keep their own task's unweighted gradient
    for t, batch in b.items():
        ref_model = make_model()
        loss = F.cross_entropy(ref_model(t, batch), batch["labels"])
        hg = torch.autograd.grad(loss, ref_model.head_parameters(t))
        for p, g in zip(model.head_parameters(t), hg, strict=True):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
    assert set(res.cosines()) == {"cos/a~b", "cos/a~c", "cos/b~c"}


def test_representation_mode_gramian_is_batch_summed_rep_gradient() -> None:
    model, b = make_model(), batches()
    bal = FixedGramianWeights(list(TASKS), source="representation")
    ref_model = copy.deepcopy(model)
    GradientEngine(model, bal).step(b, 0, 10, {})
    # reference: d L_t / d z_t by autograd, summed over rows; update = sum_t w_t * (dz_t/dtheta)^T dL_t/dz_t
    vecs, total = [], None
    for w, (t, batch) in zip([0.5, 2.0, 1.0], b.items(), strict=True):
        z = ref_model.encode(batch)
        loss = F.cross_entropy(ref_model.head(t, z), batch["labels"])
        gz = torch.autograd.grad(loss, z, retain_graph=True)[0]
        vecs.append(gz.sum(0))
        g = torch.autograd.grad(z, ref_model.shared_parameters(), grad_outputs=w * gz)
        total = flat(g) if total is None else total + flat(g)
    V = torch.stack(vecs)
    torch.testing.assert_close(bal.seen, (V @ V.T).double(), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(flat([p.grad for p in model.shared_parameters()]), total, rtol=1e-5, atol=1e-7)


def test_equal_weights_give_the_same_update_in_all_three_modes() -> None:
    b = batches()
    grads = {}
    for mode in ("loss", "representation", "parameters"):
        model = make_model()
        if mode == "loss":
            bal = build_balancer("equal", list(TASKS))
        else:
            bal = FixedGramianWeights(list(TASKS), weights=(1.0, 1.0, 1.0), source=mode)
        GradientEngine(model, bal).step(b, 0, 10, {})
        grads[mode] = flat([p.grad for p in model.parameters()])
    torch.testing.assert_close(grads["representation"], grads["loss"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads["parameters"], grads["loss"], rtol=1e-5, atol=1e-7)


def test_loss_scale_is_removed_before_the_gramian() -> None:
    """With an fp16-style loss scale the balancer must still see the true Gramian."""
    b = batches()
    seen = {}
    for scale in (1.0, 1024.0):
        model = make_model()
        bal = FixedGramianWeights(list(TASKS), source="parameters")
        GradientEngine(model, bal, loss_scale=lambda x, s=scale: x * s, scale_value=lambda s=scale: s).step(b, 0, 10, {})
        seen[scale] = bal.seen
    torch.testing.assert_close(seen[1024.0], seen[1.0], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_model_shapes_per_task(pooling: str) -> None:
    model = make_model(pooling)
    for i, (t, n) in enumerate(TASKS.items()):
        out = model(t, random_batch(7, 5, n, seed=i))
        assert out.shape == (7, n)

"""The gradient engine: each mode's update equals the weighted sum of task gradients, computed independently."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mtl.balancers import BalanceInput, Balancer, build_balancer, register_balancer
from mtl.balancers.aggregator import Aggregation, Aggregator
from mtl.models.multitask import MultiTaskModel
from mtl.training.engine import GradientEngine, _store_flat_grads, gramian_of, split_batch
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
    GradientEngine(model, bal).step(b, 0, 10)
    expected = 0.5 * flat(ref["a"]) + 2.0 * flat(ref["b"]) + 1.0 * flat(ref["c"])
    got = flat([p.grad for p in model.shared_parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_parameter_mode_gramian_and_update() -> None:
    model, b = make_model(), batches()
    ref = task_grads(model, b)
    J = torch.stack([flat(ref[t]) for t in TASKS])
    bal = FixedGramianWeights(list(TASKS), source="parameters")
    res = GradientEngine(model, bal).step(b, 0, 10)
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
    GradientEngine(model, bal).step(b, 0, 10)
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
        GradientEngine(model, bal).step(b, 0, 10)
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
        GradientEngine(model, bal, loss_scale=lambda x, s=scale: x * s, scale_value=lambda s=scale: s).step(b, 0, 10)
        seen[scale] = bal.seen
    torch.testing.assert_close(seen[1024.0], seen[1.0], rtol=1e-5, atol=1e-8)


def test_parameter_mode_steps_with_changing_tasks_match_independent_gradients() -> None:
    """One engine (its Jacobian buffer kept between steps) over steps whose task set, order, chunking and
    trainable parameters change gives what per-task autograd and the balancer's weights give, step by step;
    nothing a step returned or left in ``.grad`` is changed by a later step."""
    model = make_model()
    ref = copy.deepcopy(model)
    bal = build_balancer("pcgrad", list(TASKS), source="parameters")
    ref_bal = build_balancer("pcgrad", list(TASKS), source="parameters")  # same seed: same random orders
    engine = GradientEngine(model, bal)
    full = batches()
    # (tasks in order, micro-batches per task, freeze lin.bias?)
    plan = [(["a", "b", "c"], 1, False), (["c", "a"], 1, False), (["b", "c", "a"], 2, False),
            (["b"], 3, True), (["a", "c", "b"], 1, False)]
    kept = []  # (tensor the step handed out, its value right then)
    buffers = []  # the engine's Jacobian buffer after each step
    lr = 0.1
    for step, (tasks, k, freeze) in enumerate(plan):
        for m in (model, ref):
            m.encoder.lin.bias.requires_grad_(not freeze)
        feed = {t: full[t] if k == 1 else split_batch(full[t], k) for t in tasks}
        res = engine.step(feed, step, len(plan))
        buffers.append(engine._jac_buffer)

        # reference: full-batch per-task gradients by plain autograd, the balancer on their Gramian
        shared = ref.shared_parameters()
        rows, head_grads, losses = [], {}, []
        for t in tasks:
            loss = F.cross_entropy(ref(t, full[t]), full[t]["labels"])
            g = torch.autograd.grad(loss, shared + ref.head_parameters(t))
            rows.append(flat(g[: len(shared)]))
            head_grads[t] = g[len(shared) :]
            losses.append(loss.detach())
        J = torch.stack(rows)
        G = (J @ J.T).double()
        w = ref_bal.compute(BalanceInput(tasks=tasks, losses=torch.stack(losses), step=step,
                                         max_steps=len(plan), gramian=G))
        torch.testing.assert_close(res.gramian, G, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(res.weights, w.float(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(flat([p.grad for p in model.shared_parameters()]), w.float() @ J,
                                   rtol=1e-5, atol=1e-6)
        for t in tasks:
            for p, g in zip(model.head_parameters(t), head_grads[t], strict=True):
                torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)

        kept += [(res.gramian, res.gramian.clone()), (res.weights, res.weights.clone())]
        kept += [(p.grad, p.grad.clone()) for p in model.parameters() if p.grad is not None]
        with torch.no_grad():  # plain SGD, then the gradients are dropped as the trainer does
            expected = dict(zip(shared, (w.float() @ J).split([p.numel() for p in shared]), strict=True))
            for t in tasks:
                expected.update(zip(ref.head_parameters(t), head_grads[t], strict=True))
            for p, q in zip(model.parameters(), ref.parameters(), strict=True):
                if q in expected:
                    q -= lr * expected[q].view_as(q)
                if p.grad is not None:
                    p -= lr * p.grad
                    p.grad = None
        torch.testing.assert_close(flat(model.parameters()), flat(ref.parameters()), rtol=1e-5, atol=1e-6)
    for tensor, value in kept:
        assert torch.equal(tensor, value)
    assert buffers[1] is buffers[0] and buffers[2] is buffers[0]  # fewer tasks, micro-batches: reused
    assert buffers[3] is not buffers[2]  # a frozen parameter: a buffer of the new size


def test_gramian_keeps_nearly_parallel_gradients_apart() -> None:
    # Three gradients over 4M parameters that differ by 1% noise: what MGDA/CAGrad decide on is
    # ||g0 - g1||^2 = G00 + G11 - 2 G01, about 1e-4 of G00. A single float32 product of this length
    # misses it by ~5%; the Gramian must hold it to well under 1% (float64 reference).
    torch.manual_seed(0)
    n = 4_000_000 + 123  # not a multiple of the chunk size
    base = torch.randn(n)
    rows = torch.stack([base + 1e-2 * torch.randn(n) for _ in range(3)])
    ref = rows.double() @ rows.double().T
    got = gramian_of(rows)
    assert got.dtype == torch.float64 and got.device.type == "cpu"
    assert float(((got - ref).abs() / ref.abs().max()).max()) < 2e-6
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        d_ref = ref[i, i] + ref[j, j] - 2 * ref[i, j]
        d_got = got[i, i] + got[j, j] - 2 * got[i, j]
        assert abs(float(d_got / d_ref) - 1) < 0.01
    small = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert torch.equal(gramian_of(small), torch.tensor([[14.0, 32.0], [32.0, 77.0]], dtype=torch.float64))


def test_jacobian_row_is_overwritten_by_the_first_micro_batch() -> None:
    """The reused row holds the previous step's values: the first chunk overwrites every slice, a parameter
    the task does not use included (zeros); later chunks add."""
    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(3))]
    row = torch.full((7,), float("nan"))
    g = torch.arange(4.0).reshape(2, 2)
    _store_flat_grads(row, params, [g, None], first=True)
    torch.testing.assert_close(row, torch.tensor([0.0, 1, 2, 3, 0, 0, 0]))
    _store_flat_grads(row, params, [None, torch.ones(3, dtype=torch.bfloat16)], first=False)
    torch.testing.assert_close(row, torch.tensor([0.0, 1, 2, 3, 1, 1, 1]))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_model_shapes_per_task(pooling: str) -> None:
    model = make_model(pooling)
    for i, (t, n) in enumerate(TASKS.items()):
        out = model(t, random_batch(7, 5, n, seed=i))
        assert out.shape == (7, n)


# ----------------------------------------------------------------------------- gradients and aggregators


@register_balancer("_test_fixed_coefficients")
class FixedCoefficients(Aggregator):
    """An aggregator with known per-coordinate weights ``C[t, k] = 0.5 + t + (k % 2)``, recording its input."""

    def __init__(self, task_names, as_update: bool = False, **kw):
        super().__init__(task_names, **kw)
        self.as_update = as_update
        self.seen: torch.Tensor | None = None

    @staticmethod
    def coefficients_for(t: int, d: int) -> torch.Tensor:
        return 0.5 + torch.arange(t).unsqueeze(1) + (torch.arange(d) % 2).unsqueeze(0).float()

    def aggregation(self, inp: BalanceInput) -> Aggregation:
        self.seen = inp.gradients.clone()
        c = self.coefficients_for(*inp.gradients.shape).to(inp.gradients)
        if self.as_update:
            return Aggregation(torch.ones(len(inp.tasks)), update=(c * inp.gradients).sum(0) * 1.0)
        return Aggregation(torch.arange(len(inp.tasks)).float(), coefficients=c)


@register_balancer("_test_reads_gradients")
class ReadsGradients(FixedGramianWeights):
    """A weighting that reads the task gradients (records them)."""

    needs_gradients = True

    def weights(self, inp: BalanceInput) -> torch.Tensor:
        self.seen_gradients = inp.gradients.clone()
        return super().weights(inp)


def test_representation_aggregator_weights_every_coordinate_of_each_tasks_representation_gradient() -> None:
    model, b = make_model(), batches()
    bal = FixedCoefficients(list(TASKS), source="representation")
    ref_model = copy.deepcopy(model)
    res = GradientEngine(model, bal).step(b, 0, 10)
    # reference: the task's dL/dz (every row) times its row of C, back through the encoder, summed over tasks
    vecs, total = [], None
    for t, (task, batch) in enumerate(b.items()):
        z = ref_model.encode(batch)
        loss = F.cross_entropy(ref_model.head(task, z), batch["labels"])
        gz = torch.autograd.grad(loss, z, retain_graph=True)[0]
        vecs.append(gz.sum(0))
        c = FixedCoefficients.coefficients_for(len(TASKS), gz.shape[1])[t]
        g = torch.autograd.grad(z, ref_model.shared_parameters(), grad_outputs=gz * c)
        total = flat(g) if total is None else total + flat(g)
    torch.testing.assert_close(bal.seen, torch.stack(vecs), rtol=1e-5, atol=1e-7)  # the Gramian's vectors
    torch.testing.assert_close(flat([p.grad for p in model.shared_parameters()]), total, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(res.weights, torch.tensor([0.0, 1.0, 2.0]))  # the aggregator's summary


def test_representation_aggregator_with_micro_batches_equals_the_full_batch() -> None:
    grads = {}
    for k in (1, 3):
        model = make_model()
        GradientEngine(model, FixedCoefficients(list(TASKS), source="representation"), accum_steps=k).step(
            batches(), 0, 10)
        grads[k] = flat([p.grad for p in model.parameters()])
    torch.testing.assert_close(grads[3], grads[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("as_update", [False, True])
def test_parameter_aggregator_update_replaces_the_weighted_sum(as_update: bool) -> None:
    model, b = make_model(), batches()
    ref = task_grads(model, b)
    J = torch.stack([flat(ref[t]) for t in TASKS])
    c = FixedCoefficients.coefficients_for(*J.shape)
    for scale in (1.0, 1024.0):  # a loss scale: the aggregator sees true gradients, .grad stays scaled
        m = make_model()
        bal = FixedCoefficients(list(TASKS), as_update=as_update, source="parameters")
        GradientEngine(m, bal, loss_scale=lambda x, s=scale: x * s, scale_value=lambda s=scale: s).step(b, 0, 10)
        torch.testing.assert_close(bal.seen, J, rtol=1e-5, atol=1e-7)
        got = flat([p.grad for p in m.shared_parameters()]) / scale
        torch.testing.assert_close(got, (c * J).sum(0), rtol=1e-5, atol=1e-6)
        for t, batch in b.items():  # heads keep their own task's gradient (scaled like the loss)
            loss = F.cross_entropy(model(t, batch), batch["labels"])
            hg = torch.autograd.grad(loss, model.head_parameters(t))
            for p, g in zip(m.head_parameters(t), hg, strict=True):
                torch.testing.assert_close(p.grad / scale, g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("source", ["representation", "parameters"])
def test_a_weighting_that_reads_gradients_gets_them(source: str) -> None:
    model, b = make_model(), batches()
    bal = ReadsGradients(list(TASKS), source=source)
    GradientEngine(model, bal).step(b, 0, 10)
    g = bal.seen_gradients
    assert g.dtype == torch.float32 and g.shape[0] == 3
    torch.testing.assert_close((g.double() @ g.double().T), bal.seen, rtol=1e-5, atol=1e-8)  # its Gramian
    plain = FixedGramianWeights(list(TASKS), source=source)
    assert not plain.needs_gradients

"""Training tricks (issue: further pretraining and training techniques): FGM/PGD, R-Drop, multi-sample
dropout, EMA/SWA, layer-wise lr decay, Adafactor — each against a hand computation, then in the loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mtl.models.multitask import MultiTaskModel
from mtl.training.averaging import WeightAverage, ema_decay_at
from mtl.training.optim import build_optimizer, layer_scales
from mtl.training.tricks import Tricks, symmetric_kl, task_loss_from, task_reps
from tests.helpers import ToyEncoder, random_batch
from tests.toy_trainer import single_thread, toy_trainer


@pytest.fixture(autouse=True)
def _one_thread():
    yield from single_thread()


def toy_model(dropout: float = 0.0, samples: int = 1) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(ToyEncoder(vocab=50, hidden=8), {"a": 3}, pooling="mean", dropout=dropout,
                          dropout_samples=samples)


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    b = random_batch(4, 6, 3, seed=seed)
    b["attention_mask"][0, 4:] = 0  # one padded row
    return b


def by_hand_rep(model: MultiTaskModel, b: dict[str, torch.Tensor], e: torch.Tensor) -> torch.Tensor:
    """The toy encoder from given word embeddings ``e``, mean-pooled."""
    h = torch.tanh(model.encoder.lin(e))
    m = b["attention_mask"].unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


def by_hand_grad(model: MultiTaskModel, b: dict[str, torch.Tensor], e: torch.Tensor) -> torch.Tensor:
    e = e.detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(model.head("a", by_hand_rep(model, b, e)), b["labels"])
    (g,) = torch.autograd.grad(loss, e)
    return g


def unit(g: torch.Tensor) -> torch.Tensor:
    return g / g.flatten(1).norm(dim=1).view(-1, 1, 1)


# ---------------------------------------------------------------------------------------------------- FGM / PGD
def test_fgm_perturbs_by_eps_times_the_unit_gradient_and_restores() -> None:
    model, b = toy_model().eval(), batch()
    weight = model.encoder.emb.weight.detach().clone()
    z_clean, z_adv = task_reps(model, "a", b, Tricks(adversarial="fgm", adv_epsilon=0.5))
    e = model.encoder.emb(b["input_ids"]).detach()
    r = 0.5 * unit(by_hand_grad(model, b, e))
    assert torch.allclose(z_clean, by_hand_rep(model, b, e), atol=1e-6)
    assert torch.allclose(z_adv, by_hand_rep(model, b, e + r), atol=1e-6)
    assert r.flatten(1).norm(dim=1).tolist() == pytest.approx([0.5] * 4)
    # restored exactly: no hook left, the embedding matrix untouched, a plain pass is the clean pass
    assert not model.encoder.emb._forward_hooks
    assert torch.equal(model.encoder.emb.weight, weight)
    assert torch.equal(model.encode(b), z_clean.detach())
    # the loss is L(clean) + L(adversarial)
    loss, correct = task_loss_from(model, "a", [z_clean, z_adv], b, Tricks(adversarial="fgm"))
    ce = nn.functional.cross_entropy
    assert loss.item() == pytest.approx((ce(model.head("a", z_clean), b["labels"])
                                         + ce(model.head("a", z_adv), b["labels"])).item(), rel=1e-6)
    assert int(correct) == int((model.head("a", z_clean).argmax(-1) == b["labels"]).sum())


def test_pgd_two_projected_steps_by_hand() -> None:
    model, b = toy_model().eval(), batch(1)
    eps, alpha = 0.4, 0.3
    _, z_adv = task_reps(model, "a", b, Tricks(adversarial="pgd", adv_epsilon=eps, adv_alpha=alpha, adv_steps=2))
    e = model.encoder.emb(b["input_ids"]).detach()

    def project(r: torch.Tensor) -> torch.Tensor:
        n = r.flatten(1).norm(dim=1).view(-1, 1, 1)
        return r * torch.clamp(eps / n, max=1.0)

    r1 = project(alpha * unit(by_hand_grad(model, b, e)))  # 0.3 < 0.4: not clipped
    r2 = project(r1 + alpha * unit(by_hand_grad(model, b, e + r1)))  # clipped onto the 0.4 ball
    assert r2.flatten(1).norm(dim=1).max().item() <= eps + 1e-6
    assert torch.allclose(z_adv, by_hand_rep(model, b, e + r2), atol=1e-6)
    # one PGD step of size eps is FGM
    _, z_fgm = task_reps(model, "a", b, Tricks(adversarial="fgm", adv_epsilon=eps))
    _, z_pgd1 = task_reps(model, "a", b, Tricks(adversarial="pgd", adv_epsilon=eps, adv_alpha=eps, adv_steps=1))
    assert torch.allclose(z_fgm, z_pgd1, atol=1e-7)


def test_adversarial_reaches_frozen_embeddings() -> None:
    model, b = toy_model().eval(), batch(2)
    model.encoder.emb.weight.requires_grad_(False)
    z_clean, z_adv = task_reps(model, "a", b, Tricks(adversarial="fgm"))
    assert not torch.allclose(z_clean, z_adv)
    assert model.encoder.emb.weight.grad is None


# ---------------------------------------------------------------------------------------------------- R-Drop
def test_rdrop_loss_by_hand() -> None:
    model, b = toy_model().eval(), batch(3)
    z1, z2 = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), torch.randn(
        4, 8, generator=torch.Generator().manual_seed(2))
    loss, _ = task_loss_from(model, "a", [z1, z2], b, Tricks(rdrop_alpha=4.0))
    l1, l2 = (model.head("a", z).detach().double().numpy() for z in (z1, z2))
    y = b["labels"].numpy()

    def log_softmax(x: np.ndarray) -> np.ndarray:
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    p1, p2 = log_softmax(l1), log_softmax(l2)
    ce1, ce2 = -p1[np.arange(4), y].mean(), -p2[np.arange(4), y].mean()
    kl12 = (np.exp(p1) * (p1 - p2)).sum(1).mean()
    kl21 = (np.exp(p2) * (p2 - p1)).sum(1).mean()
    assert loss.item() == pytest.approx(0.5 * (ce1 + ce2) + 4.0 / 4 * (kl12 + kl21), rel=1e-5)
    assert symmetric_kl(torch.tensor(l1), torch.tensor(l1)).item() == pytest.approx(0.0, abs=1e-12)
    # multi-label: Bernoulli KLs per label, summed over labels, averaged over rows
    sa, sb = 1 / (1 + np.exp(-l1)), 1 / (1 + np.exp(-l2))
    bern = (sa * np.log(sa / sb) + (1 - sa) * np.log((1 - sa) / (1 - sb))
            + sb * np.log(sb / sa) + (1 - sb) * np.log((1 - sb) / (1 - sa))).sum(1).mean()
    assert symmetric_kl(torch.tensor(l1), torch.tensor(l2), multi_label=True).item() == pytest.approx(bern, rel=1e-6)
    # two passes, with different dropout masks in training
    model.train()
    model.encoder.register_forward_hook(lambda m, a, out: out)  # a no-op: task_reps makes two encoder calls
    calls = []
    model.encoder.register_forward_pre_hook(lambda m, a: calls.append(1))
    assert len(task_reps(model, "a", b, Tricks(rdrop_alpha=1.0))) == 2 and len(calls) == 2


def test_multi_sample_dropout_averages_k_losses() -> None:
    model, b = toy_model(dropout=0.5, samples=3).train(), batch(4)
    z = model.encode(b).detach()
    torch.manual_seed(7)
    loss, _ = task_loss_from(model, "a", [z], b)
    loss = loss.detach()
    torch.manual_seed(7)
    by_hand = [nn.functional.cross_entropy(model.head("a", z), b["labels"]) for _ in range(3)]
    assert loss.item() == pytest.approx(float(sum(x.item() for x in by_hand) / 3), rel=1e-6)
    model.eval()  # at evaluation: one pass, no dropout
    loss_eval, _ = task_loss_from(model, "a", [z], b)
    assert loss_eval.item() == pytest.approx(nn.functional.cross_entropy(model.head("a", z), b["labels"]).item())
    with pytest.raises(ValueError, match="dropout_samples=0"):
        toy_model(samples=0)


def test_tricks_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="choose null, fgm or pgd"):
        Tricks(adversarial="freelb")
    with pytest.raises(ValueError, match="not supported"):
        Tricks(adversarial="fgm", rdrop_alpha=1.0)
    assert Tricks().passes == 1 and Tricks(rdrop_alpha=0.5).passes == 2 and Tricks(adversarial="pgd").passes == 2


# ---------------------------------------------------------------------------------------------------- EMA / SWA
def test_ema_matches_a_hand_computation() -> None:
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    avg = WeightAverage([p], ema_decay=0.9)
    s = np.array([1.0, -2.0])
    values = [[2.0, 0.0], [4.0, 1.0], [0.0, 3.0]]
    for t, v in enumerate(values, start=1):
        with torch.no_grad():
            p.copy_(torch.tensor(v))
        avg.update(t)
        d = min(0.9, (1 + t) / (10 + t))  # 2/11, 3/12, 4/13
        s = d * s + (1 - d) * np.array(v)
    assert ema_decay_at(0.9, 1) == pytest.approx(2 / 11) and ema_decay_at(0.9, 1000) == 0.9
    assert avg.shadow[0].tolist() == pytest.approx(s.tolist(), rel=1e-6)
    with avg.swapped():
        assert p.tolist() == pytest.approx(s.tolist(), rel=1e-6)
    assert p.tolist() == [0.0, 3.0]  # restored exactly
    again = WeightAverage([p], ema_decay=0.9)
    again.load_state_dict(avg.state_dict())
    assert again.updates == 3 and torch.equal(again.shadow[0], avg.shadow[0])
    with pytest.raises(ValueError, match="does not fit"):
        WeightAverage([p], swa_start=1).load_state_dict(avg.state_dict())


def test_swa_is_the_mean_of_the_iterates_from_its_start() -> None:
    p = nn.Parameter(torch.tensor([0.0]))
    frozen = nn.Parameter(torch.tensor([5.0]), requires_grad=False)
    avg = WeightAverage([p, frozen], swa_start=3)
    assert len(avg.params) == 1  # frozen weights are not averaged
    for step, v in enumerate([10.0, 20.0, 1.0, 2.0, 6.0], start=1):
        with torch.no_grad():
            p.fill_(v)
        if step == 2:
            with avg.swapped():  # nothing averaged yet: the raw weights are used
                assert p.item() == 20.0
        avg.update(step)
    assert avg.updates == 3 and avg.shadow[0].item() == pytest.approx(3.0)  # mean of 1, 2, 6


def test_ema_run_evaluates_and_saves_the_average(tmp_path: Path) -> None:
    tr = toy_trainer(tmp_path, max_steps=6, eval_every=6, ema_decay=0.5, save_best=True)
    tr.fit()
    assert tr.averager is not None and tr.averager.updates == 6 and tr.state.best_step == 6
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)["model"]
    names = [n for n, q in tr.model.named_parameters() if q.requires_grad]
    shadow = dict(zip(names, tr.averager.shadow, strict=True))
    assert all(torch.equal(best[n], shadow[n]) for n in names)  # best.pt holds the averaged weights
    # the evaluation scored the averaged weights: scoring them again gives the same dev scores
    with tr.averaged():
        again = tr.evaluate()
    assert again.scores == tr.state.best_eval.scores
    # training continued from the raw weights, which differ from the average
    assert any(not torch.equal(q, shadow[n]) for n, q in tr.model.named_parameters() if q.requires_grad)
    state = tr.state_dict()
    assert state["averager"]["kind"] == "ema" and state["averager"]["updates"] == 6


def test_ema_resume_is_exact(tmp_path: Path) -> None:
    full = toy_trainer(tmp_path / "full", max_steps=6, eval_every=6, ema_decay=0.8)
    full.fit()
    half = toy_trainer(tmp_path / "half", max_steps=6, eval_every=6, ema_decay=0.8)
    for _ in range(3):
        half.train_step()
    path = half.save_checkpoint(tmp_path / "half" / "mid.pt")
    resumed = toy_trainer(tmp_path / "resumed", max_steps=6, eval_every=6, ema_decay=0.8)
    resumed.load_checkpoint(path)
    resumed.fit()
    for a, b in zip(full.averager.shadow, resumed.averager.shadow, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------- LLRD, Adafactor
def test_layer_decay_groups_have_the_expected_rates() -> None:
    from mtl.balancers import build_balancer
    from mtl.models.encoder import tiny_random_encoder

    enc, _ = tiny_random_encoder(num_layers=3)
    model = MultiTaskModel(enc, {"a": 3}, pooling="mean")
    scales = layer_scales(model.encoder, 0.5)
    assert scales["encoder.layer.0.attention.self.query.weight"] == 0.5**3
    assert scales["encoder.layer.2.output.dense.weight"] == 0.5
    assert scales["embeddings.word_embeddings.weight"] == 0.5**4
    opt = build_optimizer(model, build_balancer("equal", ["a"]), lr=1e-3, head_lr=1e-2, layer_decay=0.5)
    rates = {}
    for g in opt.param_groups:
        for q in g["params"]:
            rates[id(q)] = g["lr"]
    named = dict(model.named_parameters())
    assert rates[id(named["encoder.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(1e-3 * 0.125)
    assert rates[id(named["encoder.encoder.layer.0.attention.self.query.bias"])] == pytest.approx(1e-3 * 0.125)
    assert rates[id(named["encoder.embeddings.word_embeddings.weight"])] == pytest.approx(1e-3 * 0.0625)
    assert rates[id(named["heads.a.net.weight"])] == 1e-2
    no_decay = [g for g in opt.param_groups if g["name"].startswith("encoder_no_decay")]
    assert all(g["weight_decay"] == 0.0 for g in no_decay) and no_decay
    with pytest.raises(ValueError, match="no 'layer.<i>.'"):
        layer_scales(ToyEncoder(), 0.9)
    with pytest.raises(ValueError, match="must lie in"):
        build_optimizer(model, build_balancer("equal", ["a"]), lr=1e-3, layer_decay=1.5)


def test_adafactor_trains(tmp_path: Path) -> None:
    from transformers.optimization import Adafactor

    tr = toy_trainer(tmp_path, max_steps=4, eval_every=4, optimizer="adafactor")
    before = [q.detach().clone() for q in tr.model.parameters()]
    tr.fit()
    assert isinstance(tr.optimizer, Adafactor)
    assert any(not torch.equal(a, q) for a, q in zip(before, tr.model.parameters(), strict=True))


# ---------------------------------------------------------------------------------------------------- in the loop
@pytest.mark.parametrize("balancer", ["equal", "pcgrad", "mgda", "imtl"])
@pytest.mark.parametrize("trick", [{"adversarial": "fgm"}, {"adversarial": "pgd", "adv_steps": 2},
                                   {"rdrop_alpha": 1.0}])
def test_tricks_compose_with_every_gradient_mode(tmp_path: Path, balancer: str, trick: dict) -> None:
    tr = toy_trainer(tmp_path, balancer=balancer, max_steps=2, eval_every=2, dropout=0.1, **trick)
    state = tr.fit()
    assert state.step == 2 and all(math.isfinite(x) for row in state.history for k, x in row.items()
                                   if k.endswith("macro_f1"))

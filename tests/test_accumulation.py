"""Gradient accumulation: k micro-batches give the same gradients and the same step as one full batch."""

from __future__ import annotations

import copy

import pytest
import torch

from mtl.balancers import build_balancer
from mtl.models.multitask import MultiTaskModel
from mtl.training.engine import GradientEngine, split_batch, trim_padding
from tests.helpers import ToyEncoder
from tests.toy_trainer import flat_params, single_thread, toy_trainer


@pytest.fixture(autouse=True)
def _single_thread():
    yield from single_thread()

TASKS = {"a": 3, "b": 2, "c": 4}


def padded_batch(n: int, num_labels: int, seed: int, vocab: int = 50) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths (so micro-batches get trimmed differently)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (n,), generator=g)
    lengths[0] = 9
    ids = torch.zeros(n, 9, dtype=torch.long)
    mask = torch.zeros(n, 9, dtype=torch.long)
    for i, k in enumerate(lengths.tolist()):
        ids[i, :k] = torch.randint(1, vocab, (k,), generator=g)
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, num_labels, (n,), generator=g)}


def batches(n: int = 10) -> dict[str, dict[str, torch.Tensor]]:
    return {t: padded_batch(n + i, k, seed=i) for i, (t, k) in enumerate(TASKS.items())}


def make_model() -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(ToyEncoder(), TASKS, pooling="mean", dropout=0.0)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_split_batch_covers_every_row_and_trims_padding() -> None:
    b = padded_batch(10, 3, seed=0)
    parts = split_batch(b, 3)
    assert [len(p["labels"]) for p in parts] == [4, 3, 3]
    torch.testing.assert_close(torch.cat([p["labels"] for p in parts]), b["labels"])
    for p in parts:  # each chunk is cut to its own longest row
        assert p["input_ids"].shape[1] == int(p["attention_mask"].sum(1).max())
    assert len(split_batch(b, 50)) == 10  # never an empty chunk
    left = {k: v.flip(1) if v.dim() == 2 else v for k, v in b.items()}  # left padding is trimmed too
    small = trim_padding({k: v[5:] for k, v in left.items()})
    assert small["attention_mask"][:, 0].any() and small["attention_mask"].all(0)[-1]


def run_engine(balancer_name: str, k: int | list, **bal_kwargs):
    model = make_model()
    bal = build_balancer(balancer_name, list(TASKS), **bal_kwargs)
    b = batches()
    if isinstance(k, list):  # explicit micro-batches
        feed = {t: split_batch(x, k[0]) for t, x in b.items()}
        engine = GradientEngine(model, bal)
    else:
        feed = b
        engine = GradientEngine(model, bal, accum_steps=k)
    res = engine.step(feed, 0, 10)
    return model, bal, res


@pytest.mark.parametrize(
    ("balancer", "kwargs"),
    [
        ("log_loss", {}),  # loss mode, weights computed from the full-batch losses
        ("uncertainty", {}),  # loss mode, learnable balancer parameters
        ("mgda", {"source": "parameters"}),  # Gramian of full-parameter gradients
        ("mgda", {"source": "representation"}),  # Gramian of representation gradients
        ("pcgrad", {"source": "representation"}),
    ],
)
def test_k_micro_batches_equal_one_full_batch(balancer: str, kwargs: dict) -> None:
    ref_model, ref_bal, ref = run_engine(balancer, 1, **kwargs)
    for k in (3, [4]):
        model, bal, res = run_engine(balancer, k, **kwargs)
        torch.testing.assert_close(res.losses, ref.losses, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(res.weights, ref.weights, rtol=1e-5, atol=1e-7)
        if ref.gramian is not None:
            torch.testing.assert_close(res.gramian, ref.gramian, rtol=1e-5, atol=1e-9)
        assert res.counts == ref.counts
        g, g_ref = grads(model), grads(ref_model)
        assert g.keys() == g_ref.keys()
        for name in g_ref:
            torch.testing.assert_close(g[name], g_ref[name], rtol=1e-5, atol=1e-7, msg=name)
        for p, q in zip(bal.parameters(), ref_bal.parameters(), strict=True):  # e.g. uncertainty's log-variances
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


def test_one_task_per_step_accumulation_scales_in_place() -> None:
    """With one task in the step nothing is stashed: the accumulated gradient times the weight."""
    model = make_model()
    ref_model = copy.deepcopy(model)
    b = {"b": batches()["b"]}
    GradientEngine(model, build_balancer("log_loss", list(TASKS)), accum_steps=4).step(b, 0, 10)
    GradientEngine(ref_model, build_balancer("log_loss", list(TASKS))).step(b, 0, 10)
    for name, g in grads(ref_model).items():
        torch.testing.assert_close(grads(model)[name], g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("balancer", "sampler"), [("uncertainty", "all_tasks"), ("mgda_ub", "all_tasks"),
                                                    ("dwa", "proportional")])
def test_trainer_steps_with_accumulation_match_full_batches(tmp_path, balancer: str, sampler: str) -> None:
    """Whole optimiser steps (clipping, AdamW, scheduler, balancer state) through the Trainer."""
    params = {}
    for k in (1, 4):
        tr = toy_trainer(tmp_path / f"k{k}", balancer=balancer, sampler=sampler, grad_accum_steps=k,
                         max_steps=4, grad_clip=0.5)
        for _ in range(4):
            tr.train_step()
        params[k] = flat_params(tr.model)
        assert tr.state.samples_seen > 0
    torch.testing.assert_close(params[4], params[1], rtol=1e-5, atol=1e-6)


def test_grad_accum_steps_must_be_positive(tmp_path) -> None:
    with pytest.raises(ValueError, match="grad_accum_steps"):
        toy_trainer(tmp_path, grad_accum_steps=0)

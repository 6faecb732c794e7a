"""``famo``: the logit update by hand, the official loop with torch's Adam, one task per step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl.balancers import build_balancer
from tests.balancer_helpers import inp, w_list

TASKS = ["a", "b", "c"]
LN2 = math.log(2.0)


def test_famo_logit_update_one_step_by_hand() -> None:
    b = build_balancer("famo", TASKS, lr=0.025, gamma=1e-3)
    # step 0: xi = 0, z = 1/3; w_i = (1/L_i) / sum_j 1/L_j with L = [1, 2, 4] -> [4, 2, 1] / 7
    assert w_list(b, inp(TASKS, [1.0, 2.0, 4.0], 0)) == pytest.approx([4 / 7, 2 / 7, 1 / 7], rel=1e-6)
    assert b.logits.tolist() == [0.0, 0.0, 0.0]
    # J_z^T delta at z = 1/3: (z_k (delta_k - z . delta)); delta = [ln2, 0, ln2], z . delta = 2 ln2 / 3
    delta = torch.tensor([LN2, 0.0, LN2])
    assert b.logit_grad(delta).tolist() == pytest.approx([LN2 / 9, -2 * LN2 / 9, LN2 / 9], rel=1e-6)
    # step 1: L = [0.5, 2, 2] -> delta = log L(0) - log L(1) = [ln2, 0, ln2]; the Adam step at t = 1
    # moves by lr * m_hat / (sqrt(v_hat) + eps) = lr * sign(g) (weight decay * xi = 0): descent
    w1 = w_list(b, inp(TASKS, [0.5, 2.0, 2.0], 1))
    assert b.logits.tolist() == pytest.approx([-0.025, 0.025, -0.025], rel=1e-6)
    u = [math.exp(-0.025) / 0.5, math.exp(0.025) / 2.0, math.exp(-0.025) / 2.0]
    assert w1 == pytest.approx([x / sum(u) for x in u], rel=1e-6)
    assert w1 == pytest.approx([0.661017, 0.173728, 0.165256], abs=1e-5)
    assert sum(w1) == pytest.approx(1.0)
    # a second call within step 1 (gradient accumulation) does not update xi again
    w_list(b, inp(TASKS, [0.4, 2.0, 2.0], 1))
    assert b.logits.tolist() == pytest.approx([-0.025, 0.025, -0.025], rel=1e-6)


def test_famo_matches_official_loop_with_torch_adam() -> None:
    """The official update (softmax logits, autograd.grad, torch Adam with weight decay) over steps."""
    rng = np.random.default_rng(0)
    hist = np.exp(rng.normal(size=(12, 3))).astype(np.float32)
    b = build_balancer("famo", TASKS, lr=0.05, gamma=0.01)
    w_ref = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([w_ref], lr=0.05, weight_decay=0.01)
    prev = None
    for step, row in enumerate(hist):
        curr = torch.tensor(row)
        if prev is not None:  # official update(curr_loss)
            delta = (prev + 1e-8).log() - (curr + 1e-8).log()
            (d,) = torch.autograd.grad(F.softmax(w_ref, -1), w_ref, grad_outputs=delta)
            opt.zero_grad()
            w_ref.grad = d
            opt.step()
        z = F.softmax(w_ref, -1).detach()  # official get_weighted_loss: grad of (log D * z / c)
        expected = (z / (curr + 1e-8)) / (z / (curr + 1e-8)).sum()
        got = b.compute(inp(TASKS, row.tolist(), step))
        assert torch.allclose(got, expected, rtol=1e-5), step
        prev = curr
    assert torch.allclose(b.logits, w_ref.detach(), rtol=1e-5, atol=1e-7)


def test_famo_one_task_per_step() -> None:
    b = build_balancer("famo", TASKS, lr=0.025)
    assert w_list(b, inp(["a"], [1.0], 0)) == pytest.approx([1.0])  # only known loss
    # b first seen: no update; c = 1 / (1/1 + 1/2) with z equal -> w_b = (1/2) / 1.5
    assert w_list(b, inp(["b"], [2.0], 1)) == pytest.approx([1 / 3])
    assert b.logits.tolist() == [0.0, 0.0, 0.0]
    # a again: delta = [ln2, 0, 0] -> J^T delta = [2 ln2/9, -ln2/9, -ln2/9] -> xi = [-.025, .025, .025]
    w = w_list(b, inp(["a"], [0.5], 2))
    assert b.logits.tolist() == pytest.approx([-0.025, 0.025, 0.025], rel=1e-6)
    ua, ub = math.exp(-0.025) / 0.5, math.exp(0.025) / 2.0  # c is not known yet
    assert w == pytest.approx([ua / (ua + ub)], rel=1e-6)
    assert b.optimizer_param_groups() == []  # xi is not the trainer's to step

"""Gradient-level balancers (Gramian -> weights): hand-worked values, properties, torchjd agreement.

Every check builds an explicit small Jacobian ``J`` (rows = task gradients), hands the balancer
``G = J J^T`` and inspects the update ``d = J^T w``. Weights come back as float32, so
agreement tolerances are ~1e-5 relative unless an iterative reference solver needs more.
"""

from __future__ import annotations

import io
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from mtl.balancers import BALANCERS, BalanceInput, build_balancer
from mtl.balancers.gramian import min_norm_2, min_norm_simplex, nash_solve

GRADIENT_METHODS = [
    "mgda",
    "mgda_ub",
    "pcgrad",
    "cagrad",
    "imtl",
    "gradvac",
    "nash_mtl",
    "aligned_mtl",
    "primary_auxiliary",
]
TASKS = ["a", "b", "c", "d", "e"]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "balancer"


def make(name: str, n: int, **kwargs) -> torch.nn.Module:
    if name == "primary_auxiliary":
        kwargs.setdefault("primary", TASKS[0])
    return build_balancer(name, TASKS[:n], **kwargs)


def inp_for(gram: Tensor, tasks: list[str] | None = None, losses: Tensor | None = None) -> BalanceInput:
    n = gram.shape[0]
    tasks = tasks or TASKS[:n]
    return BalanceInput(
        tasks=tasks,
        losses=torch.ones(n) if losses is None else losses,
        step=0,
        max_steps=100,
        gramian=gram,
    )


def weights_of(bal, jac: Tensor, **kw) -> Tensor:
    w = bal.compute(inp_for(jac @ jac.T, **kw))
    assert w.dtype == torch.float32 and w.shape == (jac.shape[0],)
    return w.double()


def rand_jac(t: int, n: int, seed: int) -> Tensor:
    return torch.randn(t, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def nnls():
    from mtl.balancers.torchjd_adapter import nnls_projector

    return nnls_projector()


# ============================================================================ registry / configs


def test_registry_names_and_flags():
    for name in [*GRADIENT_METHODS, "torchjd"]:
        assert name in BALANCERS
        cls = BALANCERS.get(name)
        assert cls.needs_gramian, name
    assert make("mgda", 2).source == "parameters"
    assert make("mgda_ub", 2).source == "representation"
    assert make("pcgrad", 2).source == "representation"
    assert make("mgda", 2, source="representation").source == "representation"


@pytest.mark.parametrize("name", [*GRADIENT_METHODS, "torchjd"])
def test_config_files_build(name):
    from omegaconf import OmegaConf

    path = CONFIG_DIR / f"{name}.yaml"
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# configs/balancer/{name}.yaml")
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert cfg.pop("name") == name
    if name == "primary_auxiliary":
        assert cfg["primary"] is None
        cfg["primary"] = "b"
    bal = build_balancer(name, ["a", "b", "c"], **cfg)
    w = bal.compute(inp_for(rand_jac(3, 5, 0) @ rand_jac(3, 5, 0).T))
    assert torch.isfinite(w).all()


# ============================================================================ MGDA


@pytest.mark.parametrize(
    "g1,g2",
    [
        ([1.0, 0.0, 0.0], [0.0, 2.0, 0.0]),
        ([1.0, 0.0, 0.0], [2.0, 0.0, 0.0]),  # g1 is the min-norm point (gamma clipped to 1)
        ([3.0, 1.0, 0.0], [0.5, 0.2, 0.0]),  # g2 is the min-norm point (gamma clipped to 0)
        ([1.0, 2.0, -1.0], [-2.0, 0.5, 1.0]),
    ],
)
def test_mgda_two_gradients_closed_form(g1, g2):
    j = torch.tensor([g1, g2], dtype=torch.float64)
    a, b = j[0], j[1]
    gamma = min(max(float((b - a) @ b) / float((a - b) @ (a - b)), 0.0), 1.0)
    expected = gamma * a + (1 - gamma) * b
    for name in ("mgda", "mgda_ub"):
        w = weights_of(make(name, 2), j)
        torch.testing.assert_close(j.T @ w, expected, rtol=1e-5, atol=1e-6)
        assert w.min() >= 0 and abs(float(w.sum()) - 1) < 1e-6


def test_mgda_hand_three_gradients():
    j = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    w = weights_of(make("mgda", 3), j)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(5))
def test_mgda_kkt_three_gradients(seed):
    j = rand_jac(3, 4, seed)
    j[2] = -0.3 * j[0] + 0.2 * torch.randn(4, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    g = j @ j.T
    w = weights_of(make("mgda", 3), j)
    value = float(w @ g @ w)
    grad = g @ w
    scale = float(torch.diagonal(g).max())
    assert float(w.min()) >= -1e-7 and abs(float(w.sum()) - 1) < 1e-6
    # KKT of min w^T G w on the simplex: (G w)_i >= w^T G w, with equality on the support
    assert float(grad.min()) >= value - 1e-5 * scale
    for i in range(3):
        if w[i] > 1e-5:
            assert abs(float(grad[i]) - value) <= 1e-5 * scale


def test_mgda_frank_wolfe_without_polish_converges():
    j = rand_jac(4, 6, 3)
    g = j @ j.T
    exact = min_norm_simplex(g)
    fw = min_norm_simplex(g, max_iter=5000, tol=1e-9, polish=False)
    assert float(fw @ g @ fw) <= float(exact @ g @ exact) * (1 + 1e-4)


def test_min_norm_2_clipping_cases():
    # <v1, v2> >= |v1|^2: v1 itself is the min-norm point; <v1, v2> >= |v2|^2: v2 is
    assert min_norm_2(1.0, 2.0, 4.0) == (1.0, 1.0)
    assert min_norm_2(4.0, 2.0, 1.0) == (0.0, 1.0)
    # orthogonal (1, 0), (0, 2): gamma = 4 / 5, squared norm 0.8^2 + 0.4^2 = 0.8
    assert min_norm_2(1.0, 0.0, 4.0) == pytest.approx((0.8, 0.8))


@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_min_norm_simplex_exact_kkt(seed):
    """The polished solver meets KKT to round-off where plain Frank-Wolfe stops at ~1e-7."""
    j = rand_jac(5, 8, seed) + 1.5 * rand_jac(1, 8, 99)
    g = j @ j.T
    w = min_norm_simplex(g)
    value, grad, scale = float(w @ g @ w), g @ w, float(torch.diagonal(g).max())
    assert float(w.min()) >= 0 and abs(float(w.sum()) - 1) < 1e-12
    assert float(grad.min()) >= value - 1e-12 * scale
    assert float((grad[w > 1e-12] - value).abs().max()) <= 1e-12 * scale


def test_mgda_normalizations_on_orthogonal_gradients():
    j = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    # raw: w_i ∝ 1 / ||g_i||^2 = (1, 1/9)
    torch.testing.assert_close(weights_of(make("mgda", 2), j), torch.tensor([0.9, 0.1], dtype=torch.float64))
    # l2: unit gradients -> equal weights
    torch.testing.assert_close(
        weights_of(make("mgda", 2, normalization="l2"), j), torch.tensor([0.5, 0.5], dtype=torch.float64)
    )
    # loss: g_i / L_i, norms (1/2, 3/1) -> w ∝ (4, 1/9)
    losses = torch.tensor([2.0, 1.0])
    w = weights_of(make("mgda", 2, normalization="loss"), j, losses=losses)
    torch.testing.assert_close(w, torch.tensor([36 / 37, 1 / 37], dtype=torch.float64))
    # loss+: g_i / (L_i ||g_i||), norms (1/2, 1) -> w ∝ (4, 1)
    w = weights_of(make("mgda", 2, normalization="loss+"), j, losses=losses)
    torch.testing.assert_close(w, torch.tensor([0.8, 0.2], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(3))
def test_mgda_agrees_with_torchjd(seed):
    agg = pytest.importorskip("torchjd.aggregation")
    j = rand_jac(4, 6, seed)
    g = j @ j.T
    ours = weights_of(make("mgda", 4), j)
    ref = agg.MGDAWeighting(epsilon=1e-7, max_iters=20000)(g)
    scale = float(torch.linalg.vector_norm(j, dim=1).max())
    # torchjd's plain Frank-Wolfe converges sublinearly: agreement on d to 2e-3 of the gradient scale
    assert float(torch.linalg.vector_norm(j.T @ (ours - ref))) <= 2e-3 * scale
    assert float(ours @ g @ ours) <= float(ref @ g @ ref) + 1e-6 * scale**2


# ============================================================================ PCGrad


def test_pcgrad_two_conflicting_by_hand():
    j = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    # g1.g2 = -1: g1' = g1 + g2/2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1); sum (0.5, 1.5)
    w = weights_of(make("pcgrad", 2), j)
    torch.testing.assert_close(w, torch.tensor([2.0, 1.5], dtype=torch.float64))
    torch.testing.assert_close(j.T @ w, torch.tensor([0.5, 1.5], dtype=torch.float64))
    w = weights_of(make("pcgrad", 2, reduction="mean"), j)
    torch.testing.assert_close(j.T @ w, torch.tensor([0.25, 0.75], dtype=torch.float64))


def test_pcgrad_non_conflicting_unchanged():
    j = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    assert bool(((j @ j.T) >= 0).all())
    torch.testing.assert_close(weights_of(make("pcgrad", 3), j), torch.ones(3, dtype=torch.float64))


def _pcgrad_vectors(j: Tensor, seed: int) -> Tensor:
    """PCGrad on explicit vectors, same order draws (randperm(T) per task, skipping itself)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(j.shape[0]):
        gi = j[i].clone()
        for k in torch.randperm(j.shape[0], generator=gen).tolist():
            if k != i and float(gi @ j[k]) < 0:
                gi = gi - float(gi @ j[k]) / float(j[k] @ j[k]) * j[k]
        out.append(gi)
    return torch.stack(out).sum(0)


@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_matches_explicit_vectors_and_torchjd(seed):
    j = rand_jac(4, 5, 10 + seed)
    bal = make("pcgrad", 4, seed=seed)
    w = weights_of(bal, j)
    torch.testing.assert_close(j.T @ w, _pcgrad_vectors(j, seed), rtol=1e-5, atol=1e-5)
    agg = pytest.importorskip("torchjd.aggregation")
    torch.manual_seed(seed)  # torchjd draws randperm(T) per task from the global generator
    ref = agg.PCGradWeighting()(j @ j.T)
    torch.testing.assert_close(w, ref, rtol=1e-5, atol=1e-5)


def test_pcgrad_state_round_trip():
    j = rand_jac(4, 5, 1)
    a = make("pcgrad", 4, seed=7)
    for _ in range(3):
        weights_of(a, j)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make("pcgrad", 4, seed=123)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(3):
        torch.testing.assert_close(weights_of(a, j), weights_of(b, j))


# ============================================================================ CAGrad


def test_cagrad_c0_is_mean():
    j = rand_jac(3, 4, 2)
    for rescale in (0, 1, 2):
        w = weights_of(make("cagrad", 3, c=0.0, rescale=rescale), j)
        torch.testing.assert_close(w, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_cagrad_orthogonal_unit_gradients_by_hand():
    j = torch.eye(2, dtype=torch.float64)
    c = 0.5
    # symmetric optimum x = (1/2, 1/2): g_x = g0, lambda = c -> d = (1 + c) g0
    w = weights_of(make("cagrad", 2, c=c, rescale=0), j)
    torch.testing.assert_close(w, torch.full((2,), (1 + c) / 2, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    w1 = weights_of(make("cagrad", 2, c=c, rescale=1), j)
    torch.testing.assert_close(w1, w / (1 + c**2))
    w2 = weights_of(make("cagrad", 2, c=c, rescale=2), j)
    torch.testing.assert_close(w2, w / (1 + c))


@pytest.mark.parametrize("seed", range(3))
def test_cagrad_maximises_worst_improvement_in_ball(seed):
    j = rand_jac(3, 4, 20 + seed)
    j[1] = -0.5 * j[0] + 0.5 * j[1]  # some conflict
    c = 0.5
    d = j.T @ weights_of(make("cagrad", 3, c=c, rescale=0), j)
    g0 = j.mean(0)
    radius = c * float(torch.linalg.vector_norm(g0))
    assert float(torch.linalg.vector_norm(d - g0)) <= radius * (1 + 1e-4)
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(20000, 4, generator=gen, dtype=torch.float64)
    u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True)
    r = torch.rand(20000, 1, generator=gen, dtype=torch.float64) ** 0.25
    cand = g0 + radius * r * u
    best_sampled = float((cand @ j.T).min(dim=1).values.max())
    assert float((j @ d).min()) >= best_sampled - 1e-5 * float(torch.linalg.vector_norm(j, dim=1).max()) ** 2


def test_cagrad_agrees_with_torchjd_if_cvxpy():
    pytest.importorskip("cvxpy")
    pytest.importorskip("clarabel")
    agg = pytest.importorskip("torchjd.aggregation")
    j = rand_jac(3, 5, 24)
    j[1] -= j[0]
    ours = weights_of(make("cagrad", 3, c=0.5, rescale=0), j)  # torchjd does not rescale
    torch.testing.assert_close(ours, agg.CAGradWeighting(c=0.5)(j @ j.T), rtol=1e-3, atol=1e-4)


# ============================================================================ IMTL-G


def test_imtl_by_hand():
    j = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    # <d,u1> = a1, <d,u2> = 2 a2, a1 + a2 = 1 -> (2/3, 1/3)
    torch.testing.assert_close(weights_of(make("imtl", 2), j), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))


@pytest.mark.parametrize("t,seed", [(2, 0), (3, 1), (4, 2), (4, 3)])
def test_imtl_equal_projections_and_torchjd(t, seed):
    j = rand_jac(t, 6, 30 + seed)
    w = weights_of(make("imtl", t), j)
    assert abs(float(w.sum()) - 1) < 1e-5
    d = j.T @ w
    proj = j @ d / torch.linalg.vector_norm(j, dim=1)
    torch.testing.assert_close(proj, proj.mean().expand(t), rtol=1e-4, atol=1e-5)
    agg = pytest.importorskip("torchjd.aggregation")
    torch.testing.assert_close(w, agg.IMTLGWeighting()(j @ j.T), rtol=1e-4, atol=1e-5)


def test_imtl_duplicate_falls_back_to_generalised_form():
    j = rand_jac(3, 5, 4)
    j = torch.cat([j, j[:1]])  # g_4 = g_1: D U^T singular
    w = weights_of(make("imtl", 4), j)
    d = j.T @ w
    proj = j @ d / torch.linalg.vector_norm(j, dim=1)
    torch.testing.assert_close(proj, proj.mean().expand(4), rtol=1e-4, atol=1e-5)
    assert abs(float(w.sum()) - 1) < 1e-5


# ============================================================================ GradVac


def test_gradvac_fresh_ema_is_pcgrad_and_updates_ema():
    j = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    beta = 0.01
    bal = make("gradvac", 2, beta=beta)
    w = weights_of(bal, j)
    torch.testing.assert_close(j.T @ w, torch.tensor([0.5, 1.5], dtype=torch.float64), rtol=1e-6, atol=1e-6)
    cos = -1 / math.sqrt(2)
    torch.testing.assert_close(
        bal.phi_hat.double(), torch.tensor([[0.0, beta * cos], [beta * cos, 0.0]], dtype=torch.float64)
    )


def test_gradvac_raises_cosine_to_target():
    j = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    bal = make("gradvac", 2, beta=0.0)
    bal.phi_hat.copy_(torch.tensor([[0.0, 0.5], [0.0, 0.0]], dtype=torch.float64))
    w = weights_of(bal, j)
    # g1' = g1 + g2 |g1| (0.5 * 1 - 0) / (|g2| sqrt(0.75)): cos(g1', g2) = 0.5 exactly
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0 + 0.5 / (2 * math.sqrt(0.75))], dtype=torch.float64))
    g1p = j[0] + (float(w[1]) - 1.0) * j[1]
    assert float(g1p @ j[1]) / float(torch.linalg.vector_norm(g1p) * torch.linalg.vector_norm(j[1])) == (
        pytest.approx(0.5, abs=1e-6)
    )


def test_gradvac_agrees_with_torchjd_over_steps():
    agg = pytest.importorskip("torchjd.aggregation")
    ours = make("gradvac", 4, beta=0.3, seed=5)
    ref = agg.GradVacWeighting(beta=0.3)
    torch.manual_seed(5)
    for step in range(4):
        j = rand_jac(4, 5, 40 + step)
        j[1] -= 0.8 * j[0]
        torch.testing.assert_close(weights_of(ours, j), ref(j @ j.T), rtol=1e-5, atol=1e-5)


def test_gradvac_state_round_trip_and_subset():
    a = make("gradvac", 4, beta=0.2, seed=1)
    for s in range(3):
        weights_of(a, rand_jac(4, 5, s))
    b = make("gradvac", 4, beta=0.2, seed=99)
    b.load_state_dict(a.state_dict())
    j = rand_jac(4, 5, 9)
    torch.testing.assert_close(weights_of(a, j), weights_of(b, j))
    torch.testing.assert_close(a.phi_hat, b.phi_hat)
    # a step on a subset of the tasks only touches their pairs
    before = a.phi_hat.clone()
    sub = rand_jac(2, 5, 11)
    weights_of(a, sub, tasks=["b", "d"])
    changed = (a.phi_hat != before).nonzero().tolist()
    assert changed and all(tuple(p) in {(1, 3), (3, 1)} for p in changed)


# ============================================================================ Nash-MTL


@pytest.mark.parametrize("seed", range(3))
def test_nash_solves_g_alpha_equals_inverse_alpha(seed):
    j = rand_jac(3, 6, 50 + seed)
    g = j @ j.T
    bal = make("nash_mtl", 3, max_norm=0.0, normalize_gramian=False)
    w = weights_of(bal, j)
    assert bool((w > 0).all())
    torch.testing.assert_close(g @ w, 1 / w, rtol=1e-4, atol=0)
    scipy_w = weights_of(make("nash_mtl", 3, max_norm=0.0, normalize_gramian=False, solver="scipy"), j)
    torch.testing.assert_close(scipy_w, w, rtol=1e-4, atol=0)


def test_nash_orthogonal_closed_form_and_scaling():
    j = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    w = weights_of(make("nash_mtl", 3, max_norm=0.0, normalize_gramian=False), j)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64), rtol=1e-5, atol=0)
    # official normalisation G / ||G||_F: alpha scales by ||G||_F^(1/2) = 273^(1/4)
    w = weights_of(make("nash_mtl", 3, max_norm=0.0), j)
    torch.testing.assert_close(w, 273**0.25 * torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64), rtol=1e-5, atol=0)
    # max_norm clips ||J^T w||
    w = weights_of(make("nash_mtl", 3, max_norm=0.5), j)
    assert float(torch.linalg.vector_norm(j.T @ w)) == pytest.approx(0.5, rel=1e-5)


def test_nash_update_every_and_state():
    a = make("nash_mtl", 3, max_norm=0.0, update_weights_every=2)
    j1, j2 = rand_jac(3, 5, 1), rand_jac(3, 5, 2)
    w1 = weights_of(a, j1)
    torch.testing.assert_close(weights_of(a, j2), w1)  # reused on the in-between step
    b = make("nash_mtl", 3, max_norm=0.0, update_weights_every=2)
    b.load_state_dict(a.state_dict())
    w2 = weights_of(a, j2)  # third call: recomputed
    torch.testing.assert_close(weights_of(b, j2), w2)
    torch.testing.assert_close(w2, weights_of(make("nash_mtl", 3, max_norm=0.0), j2), rtol=1e-5, atol=0)
    assert not torch.allclose(w2, w1, rtol=1e-2)


def test_nash_solver_direct():
    g = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    a = nash_solve(g)
    torch.testing.assert_close(g @ a, 1 / a, rtol=1e-8, atol=0)


def test_nash_agrees_with_torchjd_if_cvxpy():
    pytest.importorskip("cvxpy")
    agg = pytest.importorskip("torchjd.aggregation")
    j = rand_jac(3, 6, 60)
    ours = weights_of(make("nash_mtl", 3, max_norm=1.0), j)
    ref = agg.NashMTL(n_tasks=3, max_norm=1.0).weighting(j)
    torch.testing.assert_close(ours, ref.double(), rtol=2e-2, atol=1e-3)  # official SCA stops at 1e-3


# ============================================================================ Aligned-MTL


def test_aligned_mtl_orthogonal_equalises_contributions():
    j = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    w = weights_of(make("aligned_mtl", 3), j)
    # G = diag(1, 4, 16): B = sqrt(1) diag(1, 1/2, 1/4), w = B 1
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))
    contrib = torch.linalg.vector_norm(w.unsqueeze(1) * j, dim=1)
    torch.testing.assert_close(contrib, torch.ones(3, dtype=torch.float64))
    w = weights_of(make("aligned_mtl", 3, scale_mode="median"), j)
    torch.testing.assert_close(w, torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(3))
def test_aligned_mtl_condition_one_and_torchjd(seed):
    j = rand_jac(3, 5, 70 + seed)
    g = j @ j.T
    w = weights_of(make("aligned_mtl", 3), j)
    lam, v = torch.linalg.eigh(g)
    b = lam.min().sqrt() * (v / lam.sqrt()) @ v.T  # aligned gradients J^T B
    aligned_gram = b @ g @ b
    torch.testing.assert_close(aligned_gram, lam.min() * torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(w, b.sum(1), rtol=1e-5, atol=1e-6)
    agg = pytest.importorskip("torchjd.aggregation")
    torch.testing.assert_close(w, 3 * agg.AlignedMTLWeighting()(g), rtol=1e-5, atol=1e-6)


# ============================================================================ primary / auxiliary


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


# ============================================================================ torchjd adapter


def test_torchjd_upgrad_adapter_matches_direct():
    agg = pytest.importorskip("torchjd.aggregation")
    for seed in range(3):
        j = rand_jac(3, 5, 90 + seed)
        j[1] -= j[0]
        w = weights_of(build_balancer("torchjd", TASKS[:3], aggregator="UPGrad"), j)
        try:
            direct = agg.UPGrad()(j)  # quadprog projector when installed
        except ImportError:
            direct = agg.UPGrad(projector=nnls())(j)
        torch.testing.assert_close(j.T @ w, direct, rtol=1e-4, atol=1e-5)
        # UPGrad never conflicts with a task beyond its regularisation
        assert float((j @ (j.T @ w)).min()) >= -1e-3 * float((j * j).sum())


def test_nnls_projector_kkt():
    pytest.importorskip("torchjd")
    j = rand_jac(4, 3, 5)
    g = j @ j.T
    u = torch.eye(4, dtype=torch.float64)
    v = nnls()(u, g)
    gn = g / torch.trace(g) + 1e-4 * torch.eye(4, dtype=torch.float64)
    for row, ui in zip(v, u, strict=True):
        grad = gn @ row
        assert bool((row >= ui - 1e-9).all()) and bool((grad >= -1e-9).all())
        assert float((grad * (row - ui)).abs().max()) < 1e-9  # complementary slackness


def test_torchjd_adapter_modes():
    agg = pytest.importorskip("torchjd.aggregation")
    j = rand_jac(4, 6, 3)
    g = j @ j.T
    mgda = build_balancer("torchjd", TASKS[:4], aggregator="mgda")  # case-insensitive
    assert mgda.mode == "gramian"
    torch.testing.assert_close(weights_of(mgda, j), agg.MGDAWeighting()(g), rtol=1e-5, atol=1e-6)
    mean = build_balancer("torchjd", TASKS[:4], aggregator="Mean")
    assert mean.mode == "matrix"
    torch.testing.assert_close(weights_of(mean, j), torch.full((4,), 0.25, dtype=torch.float64))
    config = build_balancer("torchjd", TASKS[:4], aggregator="ConFIG")
    assert config.mode == "aggregate"
    torch.testing.assert_close(j.T @ weights_of(config, j), agg.ConFIG()(j), rtol=1e-4, atol=1e-5)
    pref = build_balancer("torchjd", TASKS[:4], aggregator="AlignedMTL", aggregator_kwargs={"pref_vector": [1, 1, 1, 1]})
    torch.testing.assert_close(weights_of(pref, j), weights_of(make("aligned_mtl", 4), j), rtol=1e-5, atol=1e-6)


def test_torchjd_adapter_refusals_and_errors(monkeypatch):
    pytest.importorskip("torchjd")
    for name in ("GradDrop", "TrimmedMean"):
        with pytest.raises(ValueError, match="not a function of the Gramian"):
            build_balancer("torchjd", TASKS[:3], aggregator=name)
    with pytest.raises(KeyError, match="UPGrad"):
        build_balancer("torchjd", TASKS[:3], aggregator="NoSuchThing")
    # the equivariance probe catches what the explicit list would not
    from mtl.balancers import torchjd_adapter

    monkeypatch.setattr(torchjd_adapter, "_UNSUPPORTED", {})
    bal = build_balancer("torchjd", TASKS[:3], aggregator="TrimmedMean", aggregator_kwargs={"trim_number": 1})
    with pytest.raises(ValueError, match="rotation-equivariant"):
        weights_of(bal, rand_jac(3, 5, 0))


def test_torchjd_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchjd", None)
    monkeypatch.setitem(sys.modules, "torchjd.aggregation", None)
    with pytest.raises(ImportError, match=r'pip install "mtl\[jd\]"'):
        build_balancer("torchjd", ["a", "b"])


def test_torchjd_stateful_round_trip():
    pytest.importorskip("torchjd")
    a = build_balancer("torchjd", TASKS[:3], aggregator="GradVac", aggregator_kwargs={"beta": 0.5})
    for s in range(2):
        weights_of(a, rand_jac(3, 4, s))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = build_balancer("torchjd", TASKS[:3], aggregator="GradVac", aggregator_kwargs={"beta": 0.5})
    b.load_state_dict(torch.load(buf, weights_only=True))
    j = rand_jac(3, 4, 7)
    torch.manual_seed(0)
    wa = weights_of(a, j)
    torch.manual_seed(0)
    torch.testing.assert_close(weights_of(b, j), wa)


# ============================================================================ robustness


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_degenerate_gramians(name):
    j = rand_jac(3, 4, 1)
    zero = j.clone()
    zero[1] = 0.0
    dup = torch.cat([j[:2], j[:1]])
    for jac in (zero, dup, torch.zeros(3, 4, dtype=torch.float64)):
        w = weights_of(make(name, 3), jac)
        assert torch.isfinite(w).all(), (name, w)
        assert float(w.abs().max()) < 1e6
    one = make(name, 1).compute(inp_for(torch.tensor([[4.0]])))
    assert one.shape == (1,) and torch.isfinite(one).all() and float(one) > 0
    if name in ("mgda", "mgda_ub", "pcgrad", "imtl", "gradvac", "aligned_mtl", "primary_auxiliary"):
        assert float(one) == pytest.approx(1.0)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_duplicated_gradient_bounded_update(name):
    """Duplicating a gradient must not produce a wild update (finite, same scale)."""
    j = rand_jac(2, 4, 3)
    w = weights_of(make(name, 3), torch.cat([j, j[:1]]))
    d = torch.cat([j, j[:1]]).T @ w
    assert float(torch.linalg.vector_norm(d)) < 1e3 * float(torch.linalg.vector_norm(j, dim=1).max())


@pytest.mark.parametrize("name", ["mgda", "imtl"])
def test_duplicated_gradient_same_update(name):
    """MGDA's hull and IMTL's equal-projection conditions do not change when a gradient repeats."""
    j = rand_jac(2, 4, 3)
    jd = torch.cat([j, j[:1]])
    torch.testing.assert_close(
        jd.T @ weights_of(make(name, 3), jd), j.T @ weights_of(make(name, 2), j), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_scale_invariance(name):
    """Weights do not depend on the scale of the gradients (Nash-MTL: with its official normalisation)."""
    j = rand_jac(3, 5, 12)
    j[2] -= 0.7 * j[0]
    kw = {"max_norm": 0.0} if name == "nash_mtl" else {}
    ref = weights_of(make(name, 3, **kw), j)
    for s in (1e-5, 1e4):
        torch.testing.assert_close(weights_of(make(name, 3, **kw), s * j), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_non_finite_gramian_gives_ones(name):
    g = torch.eye(3)
    g[0, 1] = g[1, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        w = make(name, 3).compute(inp_for(g))
    torch.testing.assert_close(w, torch.ones(3))


def test_permutation_equivariance():
    j = rand_jac(3, 5, 8)
    perm = [2, 0, 1]
    for name in ("mgda", "cagrad", "imtl", "nash_mtl", "aligned_mtl"):
        w = weights_of(make(name, 3), j)
        wp = weights_of(make(name, 3), j[perm])
        torch.testing.assert_close(wp, w[perm], rtol=1e-4, atol=1e-5)


def test_gramian_needed():
    bal = make("mgda", 2)
    with pytest.raises(ValueError, match="Gramian"):
        bal.compute(BalanceInput(tasks=["a", "b"], losses=torch.ones(2), step=0, max_steps=1))


def test_all_pairs_best_init_used():
    # for T=2 the solver is exactly the closed form whatever the ordering
    for a, b in itertools.permutations([[1.0, 0.0], [0.3, 0.7]]):
        j = torch.tensor([a, b], dtype=torch.float64)
        gamma = min(max(float((j[1] - j[0]) @ j[1]) / float((j[0] - j[1]) @ (j[0] - j[1])), 0.0), 1.0)
        torch.testing.assert_close(min_norm_simplex(j @ j.T), torch.tensor([gamma, 1 - gamma], dtype=torch.float64))

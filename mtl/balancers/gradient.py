"""Gradient-level balancers, all written as "Gramian -> weights".

Each method here produces an update that is a linear combination ``d = sum_t w_t g_t`` of the
task gradients, with coefficients computable from the inner products ``G = J J^T`` alone
(the insight behind torchjd's Weighting/Aggregator split). The trainer hands over ``G`` (on
the shared representation by default, MGDA-UB style, or on all shared parameters) and applies
``sum_t w_t L_t``, whose gradient on the shared part is ``d``.

Registered names: ``mgda``, ``mgda_ub``, ``pcgrad``, ``cagrad``, ``imtl``, ``gradvac``,
``nash_mtl``, ``aligned_mtl``, ``primary_auxiliary`` (``torchjd`` lives in
:mod:`mtl.balancers.torchjd_adapter`).

Common behaviour (:class:`GramianBalancer`):

- the numerics run in float64 on the CPU; weights come back as float32 on the Gramian's device;
- a Gramian with inf/NaN entries gives all weights 1 (plain sum, so an AMP ``GradScaler``
  sees the overflow and skips the step) and leaves any internal state untouched;
- (numerically) zero gradients never cause a division by zero: each method documents what
  it gives them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, Balancer, GradientSource, register_balancer
from mtl.balancers.gramian import (
    gradient_norms,
    min_norm_simplex,
    nash_solve,
    nonzero_mask,
    prepare_gramian,
    quad,
)

__all__ = [
    "GramianBalancer",
    "MGDA",
    "MGDAUB",
    "PCGrad",
    "CAGrad",
    "IMTLG",
    "GradVac",
    "NashMTL",
    "AlignedMTL",
    "PrimaryAuxiliary",
]


class GramianBalancer(Balancer):
    """Base for methods that map the Gramian of task gradients to weights.

    Subclasses implement :meth:`gramian_weights` on a float64 CPU Gramian (rows in the order of
    ``inp.tasks``) and return float64 weights.
    """

    needs_gramian = True

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def weights(self, inp: BalanceInput) -> Tensor:
        if inp.gramian is None:
            raise ValueError(f"balancer {self.registry_name!r} needs the Gramian of task gradients")
        if inp.gramian.shape != (len(inp.tasks), len(inp.tasks)):
            raise ValueError(
                f"balancer {self.registry_name!r} got a Gramian of shape {tuple(inp.gramian.shape)} "
                f"for {len(inp.tasks)} tasks"
            )
        device = inp.gramian.device
        g = prepare_gramian(inp.gramian)
        if g is None:
            warnings.warn(
                f"balancer {self.registry_name!r}: non-finite Gramian, using weights 1 for this step",
                RuntimeWarning,
                stacklevel=2,
            )
            return torch.ones(len(inp.tasks), dtype=torch.float32, device=device)
        w = self.gramian_weights(g, inp)
        if not bool(torch.isfinite(w).all()):
            raise FloatingPointError(f"balancer {self.registry_name!r} produced non-finite weights {w.tolist()}")
        return w.to(device=device, dtype=torch.float32)


class _SeededMixin:
    """A private ``torch.Generator`` for random task orders, checkpointed via ``extra_state``."""

    _gen: torch.Generator

    def _init_generator(self, seed: int) -> None:
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(int(seed))

    def get_extra_state(self) -> dict[str, Any]:
        return {"rng_state": self._gen.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state and "rng_state" in state:
            self._gen.set_state(state["rng_state"])


# =============================================================================== MGDA

MGDANormalization = Literal["none", "l2", "loss", "loss+"]


@register_balancer("mgda")
class MGDA(GramianBalancer):
    """MGDA: the min-norm point of the convex hull of the task gradients (Sener & Koltun 2018).

    ``w = argmin_{w in simplex} w^T G~ w`` by Frank-Wolfe with the closed-form two-gradient line
    search (:func:`~mtl.balancers.gramian.min_norm_simplex`), where ``G~ = D^-1 G D^-1`` are the
    inner products of the normalised gradients ``g_t / n_t`` of the official code's
    ``gradient_normalizers``: ``none`` (``n_t = 1``), ``l2`` (``||g_t||``), ``loss``
    (``L_t``), ``loss+`` (``L_t ||g_t||``). As in the official training loop, the weights
    found for the normalised gradients are applied to the raw losses.
    """

    default_source: GradientSource = "parameters"

    def __init__(
        self,
        task_names: Sequence[str],
        normalization: MGDANormalization = "none",
        max_iter: int = 250,
        tol: float = 1e-5,
        polish: bool = True,
        source: GradientSource | None = None,
    ) -> None:
        super().__init__(task_names, source=source)
        if normalization not in ("none", "l2", "loss", "loss+"):
            raise ValueError(f"mgda normalization must be none|l2|loss|loss+, got {normalization!r}")
        if max_iter < 1 or tol <= 0:
            raise ValueError("mgda needs max_iter >= 1 and tol > 0")
        self.normalization = normalization
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.polish = bool(polish)

    def _normalizers(self, gramian: Tensor, losses: Tensor) -> Tensor:
        norms = gradient_norms(gramian)
        loss = losses.detach().to("cpu", torch.float64).abs()
        if self.normalization == "l2":
            n = norms
        elif self.normalization == "loss":
            n = loss
        elif self.normalization == "loss+":
            n = loss * norms
        else:
            n = torch.ones_like(norms)
        return torch.where(n > 1e-12, n, torch.ones_like(n))

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        if self.normalization != "none":
            n = self._normalizers(gramian, inp.losses)
            gramian = gramian / (n.unsqueeze(0) * n.unsqueeze(1))
        return min_norm_simplex(gramian, max_iter=self.max_iter, tol=self.tol, polish=self.polish)


@register_balancer("mgda_ub")
class MGDAUB(MGDA):
    """MGDA-UB (Sener & Koltun 2018, Sec. 3.3): MGDA on the shared representation's gradients."""

    default_source: GradientSource = "representation"


# =============================================================================== PCGrad


@register_balancer("pcgrad")
class PCGrad(_SeededMixin, GramianBalancer):
    """PCGrad, gradient surgery (Yu et al. 2020, Alg. 1).

    For every task ``i`` (own random order of the other tasks ``j``, drawn from a seeded
    generator as ``randperm(T)`` skipping ``i``, the order semantics of torchjd's PCGrad): if
    ``<g_i^PC, g_j> < 0`` then ``g_i^PC <- g_i^PC - <g_i^PC, g_j> / ||g_j||^2 g_j`` (projection
    against the *original* ``g_j``). Keeping ``g_i^PC = sum_k C[i, k] g_k``, the inner product is
    ``(C[i] G)_j`` and the projection is ``C[i, j] -= (C[i] G)_j / G_jj``. The update is
    ``sum_i g_i^PC`` (``reduction=sum``, the paper) or its mean, so ``w = 1^T C`` (or ``/ T``).
    Zero gradients are never projected against.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        seed: int = 0,
        reduction: Literal["sum", "mean"] = "sum",
        source: GradientSource | None = None,
    ) -> None:
        super().__init__(task_names, source=source)
        if reduction not in ("sum", "mean"):
            raise ValueError(f"pcgrad reduction must be sum|mean, got {reduction!r}")
        self.reduction = reduction
        self._init_generator(seed)

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        ok = nonzero_mask(gramian)
        coef = torch.eye(t, dtype=gramian.dtype)
        for i in range(t):
            order = torch.randperm(t, generator=self._gen).tolist()
            for j in order:
                if j == i or not bool(ok[j]):
                    continue
                inner = float(coef[i] @ gramian[:, j])
                if inner < 0.0:
                    coef[i, j] -= inner / float(gramian[j, j])
        w = coef.sum(dim=0)
        return w / t if self.reduction == "mean" else w


# =============================================================================== CAGrad


@register_balancer("cagrad")
class CAGrad(GramianBalancer):
    """CAGrad, conflict-averse gradient descent (Liu et al. 2021, Alg. 1 / official code).

    With ``g0`` the mean gradient (``||g0||^2 = 1^T G 1 / T^2``), ``x = argmin_{x in simplex}
    x^T G 1/T + c ||g0|| sqrt(x^T G x)`` (SLSQP on the simplex, as the official code, with the
    analytic gradient), ``g_x = J^T x`` and ``lambda = c ||g0|| / ||g_x||``, the update is
    ``d = g0 + lambda g_x``, i.e. ``w = 1/T + lambda x``. ``rescale``: 0 keeps ``d``, 1 divides
    by ``1 + c^2`` (official default), 2 by ``1 + c``. ``c = 0`` is plain gradient descent on
    the mean loss (``w = 1/T``). The problem is solved on ``G / mean(diag G)`` (the weights do
    not depend on the scale of ``G``), so the official code's ``1e-8`` safeguards stay relative.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        c: float = 0.5,
        rescale: int = 1,
        max_iter: int = 200,
        source: GradientSource | None = None,
    ) -> None:
        super().__init__(task_names, source=source)
        if c < 0:
            raise ValueError(f"cagrad c must be >= 0, got {c}")
        if rescale not in (0, 1, 2):
            raise ValueError(f"cagrad rescale must be 0, 1 or 2, got {rescale}")
        self.c = float(c)
        self.rescale = int(rescale)
        self.max_iter = int(max_iter)

    def _solve(self, a: np.ndarray, cc: float) -> np.ndarray:
        from scipy.optimize import minimize

        t = a.shape[0]
        b = np.full(t, 1.0 / t)
        ab = a @ b

        def fun(x: np.ndarray) -> float:
            return float(x @ ab + cc * math.sqrt(max(float(x @ a @ x), 0.0) + 1e-8))

        def jac(x: np.ndarray) -> np.ndarray:
            return ab + cc * (a @ x) / math.sqrt(max(float(x @ a @ x), 0.0) + 1e-8)

        res = minimize(
            fun,
            b.copy(),
            jac=jac,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * t,
            constraints=({"type": "eq", "fun": lambda x: 1.0 - x.sum(), "jac": lambda x: -np.ones_like(x)},),
            options={"maxiter": self.max_iter, "ftol": 1e-12},
        )
        x = np.clip(np.asarray(res.x, dtype=np.float64), 0.0, None)
        s = x.sum()
        return x / s if s > 0 else b

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        mean = torch.full((t,), 1.0 / t, dtype=gramian.dtype)
        scale = float(torch.diagonal(gramian).mean())
        if scale > 0.0:  # the weights are scale-free; this keeps the 1e-8 safeguards relative
            gramian = gramian / scale
        g0_norm = math.sqrt(quad(gramian, mean))
        cc = self.c * g0_norm
        if cc <= 0.0:
            w = mean
        else:
            x = torch.from_numpy(self._solve(gramian.numpy(), cc))
            gx_norm = math.sqrt(quad(gramian, x))
            w = mean + (cc / (gx_norm + 1e-8)) * x
        if self.rescale == 1:
            w = w / (1.0 + self.c**2)
        elif self.rescale == 2:
            w = w / (1.0 + self.c)
        return w


# =============================================================================== IMTL-G


@register_balancer("imtl")
class IMTLG(GramianBalancer):
    """IMTL-G, impartial gradient balancing (Liu et al. 2021, Eq. 9).

    With ``u_t = g_t / ||g_t||``, ``D = [g_1 - g_t]_{t>=2}``, ``U = [u_1 - u_t]_{t>=2}``:
    ``alpha_{2..T} = g_1 U^T (D U^T)^-1`` and ``alpha_1 = 1 - sum alpha_{2..T}``; every entry is
    an inner product taken from ``G`` (``<g_a, u_b> = G_ab / ||g_b||``). The update
    ``d = sum alpha_t g_t`` has equal projections ``<d, u_t>`` on all unit gradients. When
    ``D U^T`` is singular (duplicated or zero gradients) we use the equivalent generalisation
    of torchjd's IMTLG, ``alpha ∝ pinv(G) ||g||`` normalised to sum 1 (uniform if that sum
    vanishes); zero gradients then get weight 0.
    """

    def __init__(
        self, task_names: Sequence[str], rcond: float = 1e-10, source: GradientSource | None = None
    ) -> None:
        super().__init__(task_names, source=source)
        self.rcond = float(rcond)

    def _closed_form(self, gramian: Tensor) -> Tensor | None:
        norms = gradient_norms(gramian)
        if not bool(nonzero_mask(gramian).all()):
            return None
        inv = 1.0 / norms
        gu = gramian * inv.unsqueeze(0)  # gu[a, b] = <g_a, u_b>
        rhs = gu[0, 0] - gu[0, 1:]  # g_1 (u_1 - u_t)
        # M[s, t] = <g_1 - g_s, u_1 - u_t>
        m = gu[0, 0] - gu[0, 1:].unsqueeze(0) - gu[1:, 0].unsqueeze(1) + gu[1:, 1:]
        sv = torch.linalg.svdvals(m)
        if float(sv.min()) <= self.rcond * float(sv.max()):
            return None
        rest = torch.linalg.solve(m.T, rhs)
        alpha = torch.cat([(1.0 - rest.sum()).reshape(1), rest])
        return alpha if bool(torch.isfinite(alpha).all()) else None

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        if t == 1:
            return torch.ones(1, dtype=gramian.dtype)
        alpha = self._closed_form(gramian)
        if alpha is not None:
            return alpha
        v = torch.linalg.pinv(gramian, hermitian=True) @ gradient_norms(gramian)
        s = float(v.sum())
        if abs(s) < 1e-12 * max(float(v.abs().sum()), 1e-300) or not math.isfinite(s):
            return torch.full((t,), 1.0 / t, dtype=gramian.dtype)
        return v / s


# =============================================================================== GradVac


@register_balancer("gradvac")
class GradVac(_SeededMixin, GramianBalancer):
    """Gradient Vaccine (Wang et al. 2021, Alg. 1), whole-model granularity.

    For every task ``i`` and the other tasks ``j`` in random order (``randperm(T - 1)`` of the
    others, torchjd's order semantics), with ``phi = cos(g_i^GV, g_j)`` and the EMA target
    ``phi_hat_ij``: if ``phi < phi_hat_ij``,
    ``g_i^GV += g_j ||g_i^GV|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) /
    (||g_j|| sqrt(1 - phi_hat^2))``; then ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi``.
    ``g_i^GV = sum_k C[i, k] g_k`` is tracked through ``G``; ``w = 1^T C``. ``phi_hat`` starts
    at 0 (so the first step is PCGrad) and is a per-ordered-pair buffer over ``task_names``.
    Pairs involving a zero gradient are skipped (no correction, no EMA update). ``G`` is first
    divided by its largest diagonal entry, so ``eps`` acts at a fixed relative level.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        beta: float = 0.01,
        eps: float = 1e-8,
        seed: int = 0,
        source: GradientSource | None = None,
    ) -> None:
        super().__init__(task_names, source=source)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"gradvac beta must be in [0, 1], got {beta}")
        self.beta = float(beta)
        self.eps = float(eps)
        n = len(self.task_names)
        self.register_buffer("phi_hat", torch.zeros(n, n, dtype=torch.float64))
        self._init_generator(seed)

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        scale = float(torch.diagonal(gramian).max())
        if scale > 0.0:  # cosines and norm ratios are scale-free; keeps ``eps`` relative
            gramian = gramian / scale
        idx = self.index(inp.tasks)
        phi_hat = self.phi_hat.detach().to("cpu", torch.float64)[idx][:, idx].clone()
        ok = nonzero_mask(gramian)
        norms = gradient_norms(gramian)
        coef = torch.eye(t, dtype=gramian.dtype)
        eps = self.eps
        for i in range(t):
            others = [j for j in range(t) if j != i]
            perm = torch.randperm(t - 1, generator=self._gen).tolist()
            for j in (others[p] for p in perm):
                if not (bool(ok[i]) and bool(ok[j])):
                    continue
                cg = coef[i] @ gramian
                norm_i = math.sqrt(max(float(cg @ coef[i]), 0.0))
                norm_j = float(norms[j])
                phi = float(cg[j]) / (norm_i * norm_j + eps)
                target = float(phi_hat[i, j])
                if phi < target:
                    s_phi = math.sqrt(max(1.0 - phi * phi, 0.0))
                    s_hat = math.sqrt(max(1.0 - target * target, 0.0))
                    coef[i, j] += norm_i * (target * s_phi - phi * s_hat) / (norm_j * s_hat + eps)
                phi_hat[i, j] = (1.0 - self.beta) * target + self.beta * phi
        full = self.phi_hat.detach().to("cpu", torch.float64).clone()
        full[idx.unsqueeze(1), idx.unsqueeze(0)] = phi_hat
        self.phi_hat.copy_(full.to(self.phi_hat.device, self.phi_hat.dtype))
        return coef.sum(dim=0)


# =============================================================================== Nash-MTL

NashSolver = Literal["auto", "newton", "scipy", "cvxpy"]


@register_balancer("nash_mtl")
class NashMTL(GramianBalancer):
    """Nash-MTL, multi-task learning as a bargaining game (Navon et al. 2022, Alg. 1).

    ``alpha > 0`` solves ``G~ alpha = 1 / alpha`` where ``G~ = G / ||G||_F`` when
    ``normalize_gramian`` (the official code's normalisation; the weights are then
    dimensionless and ``alpha = sqrt(||G||_F) alpha*`` with ``G alpha* = 1/alpha*``) or
    ``G~ = G`` otherwise. ``max_norm > 0`` then scales ``alpha`` down so that
    ``||J^T alpha|| = sqrt(alpha^T G alpha) <= max_norm`` (the official code clips the shared
    gradient's norm; torchjd clips ``||J^T alpha||`` the same way). ``update_weights_every = k``
    recomputes the weights every ``k``-th call and reuses them in between.

    Solvers: ``newton`` (default, also ``auto``): damped Newton on the convex potential
    ``1/2 a^T G a - sum log a`` (:func:`~mtl.balancers.gramian.nash_solve`), exact to round-off
    with no extra dependency; ``scipy``: L-BFGS-B on the same potential; ``cvxpy``: the official
    sequential convex approximation (``optim_niter`` iterations, ECOS/default solver), only when
    cvxpy is installed. ``auto`` never picks cvxpy so results do not depend on what happens to
    be installed. Zero gradients get weight 0 (their ``alpha`` would be infinite).
    """

    def __init__(
        self,
        task_names: Sequence[str],
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
        normalize_gramian: bool = True,
        solver: NashSolver = "auto",
        source: GradientSource | None = None,
    ) -> None:
        super().__init__(task_names, source=source)
        if solver not in ("auto", "newton", "scipy", "cvxpy"):
            raise ValueError(f"nash_mtl solver must be auto|newton|scipy|cvxpy, got {solver!r}")
        if solver == "cvxpy":
            try:
                import cvxpy  # noqa: F401
            except ImportError as exc:
                raise ImportError("nash_mtl solver=cvxpy needs cvxpy: pip install cvxpy (or use solver=newton)") from exc
        if max_norm < 0 or update_weights_every < 1 or optim_niter < 1:
            raise ValueError("nash_mtl needs max_norm >= 0, update_weights_every >= 1, optim_niter >= 1")
        self.max_norm = float(max_norm)
        self.update_weights_every = int(update_weights_every)
        self.optim_niter = int(optim_niter)
        self.normalize_gramian = bool(normalize_gramian)
        self.solver = "newton" if solver == "auto" else solver
        n = len(self.task_names)
        self.register_buffer("prev_alpha", torch.ones(n, dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def _solve(self, g: Tensor, init: Tensor) -> Tensor:
        if self.solver == "newton":
            return nash_solve(g, init=init)
        if self.solver == "scipy":
            return _nash_scipy(g, init)
        return _nash_cvxpy(g, init, self.optim_niter)

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        idx = self.index(inp.tasks)
        prev = self.prev_alpha.detach().to("cpu", torch.float64)[idx]
        if int(self.calls) % self.update_weights_every == 0:
            ok = nonzero_mask(gramian)
            alpha = torch.zeros(t, dtype=gramian.dtype)
            if bool(ok.any()):
                sub = gramian[ok][:, ok]
                if self.normalize_gramian:
                    sub = sub / torch.linalg.matrix_norm(sub)
                init = prev[ok].clamp(min=1e-12)
                alpha[ok] = self._solve(sub, init)
            else:
                alpha = torch.ones(t, dtype=gramian.dtype)
            store = self.prev_alpha.detach().to("cpu", torch.float64).clone()
            store[idx] = torch.where(alpha > 0, alpha, prev)
            self.prev_alpha.copy_(store.to(self.prev_alpha.device, self.prev_alpha.dtype))
        else:
            alpha = prev.clone()
        self.calls += 1
        if self.max_norm > 0:
            norm = math.sqrt(quad(gramian, alpha))
            if norm > self.max_norm:
                alpha = alpha * (self.max_norm / norm)
        return alpha


def _nash_scipy(g: Tensor, init: Tensor) -> Tensor:
    """``G a = 1/a`` by L-BFGS-B on ``1/2 a^T G a - sum log a`` (bounded away from 0)."""
    from scipy.optimize import minimize

    a_mat = g.numpy()
    t = a_mat.shape[0]
    a_mat = a_mat + 1e-10 * float(np.trace(a_mat)) / t * np.eye(t)
    x0 = init.numpy().copy()
    x0 *= math.sqrt(t / max(float(x0 @ a_mat @ x0), 1e-300))

    def fun(a: np.ndarray) -> tuple[float, np.ndarray]:
        ga = a_mat @ a
        return float(0.5 * a @ ga - np.log(a).sum()), ga - 1.0 / a

    res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=[(1e-12, None)] * t,
                   options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12})
    return torch.from_numpy(np.asarray(res.x, dtype=np.float64))


def _nash_cvxpy(g: Tensor, init: Tensor, niter: int) -> Tensor:  # pragma: no cover - needs cvxpy
    """The official sequential convex approximation (Navon et al. 2022, official ``nash-mtl``)."""
    import cvxpy as cp

    gtg = g.numpy()
    t = gtg.shape[0]
    alpha_t = init.numpy().copy()
    alpha = cp.Variable(shape=(t,), nonneg=True)
    prev = cp.Parameter(shape=(t,), value=alpha_t)
    g_param = cp.Parameter(shape=(t, t), value=gtg)
    g_prev = g_param @ prev
    phi_tag = 1 / prev + (1 / g_prev) @ g_param
    phi_alpha = phi_tag @ (alpha - prev)
    g_alpha = g_param @ alpha
    constraints = [-cp.log(alpha[i]) - cp.log(g_alpha[i]) <= 0 for i in range(t)]
    prob = cp.Problem(cp.Minimize(cp.sum(g_alpha) + phi_alpha), constraints)
    for _ in range(niter):
        alpha.value = alpha_t
        prev.value = alpha_t
        try:
            prob.solve(warm_start=True)
        except (cp.error.SolverError, ValueError):
            break
        if alpha.value is None:
            break
        new = np.asarray(alpha.value, dtype=np.float64)
        done = np.linalg.norm(gtg @ alpha_t - 1 / (alpha_t + 1e-10)) < 1e-3 or np.linalg.norm(new - alpha_t) < 1e-6
        alpha_t = np.clip(new, 1e-12, None)
        if done:
            break
    return torch.from_numpy(alpha_t)


# =============================================================================== Aligned-MTL

ScaleMode = Literal["min", "median", "rmse"]


@register_balancer("aligned_mtl")
class AlignedMTL(GramianBalancer):
    """Aligned-MTL, independent component alignment (Senushkin et al. 2023, Alg. 1).

    Eigendecomposition ``G = V diag(lambda) V^T`` restricted to the eigenvalues above
    ``max(lambda) T eps_float32`` (the official rank cut). The balance transformation
    ``B = sqrt(s) V diag(lambda)^-1/2 V^T`` maps the gradients to ``J^T B``, whose Gramian is
    ``s`` times the identity on the gradients' span (condition number 1; ``s`` = smallest
    eigenvalue for ``scale_mode=min``, the median for ``median``, the mean for ``rmse``). As in
    the official code and LibMTL the aligned gradients are summed, ``w = B p`` with the
    preference ``p = 1`` (torchjd uses ``p = 1/T``, i.e. ``1/T`` of these weights). All-zero
    gradients give ``w = p``.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        scale_mode: ScaleMode = "min",
        pref: Sequence[float] | None = None,
        source: GradientSource | None = None,
    ) -> None:
        super().__init__(task_names, source=source)
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"aligned_mtl scale_mode must be min|median|rmse, got {scale_mode!r}")
        self.scale_mode = scale_mode
        self.pref = None if pref is None else [float(p) for p in pref]
        if self.pref is not None and len(self.pref) != len(self.task_names):
            raise ValueError(f"aligned_mtl pref needs one value per task {self.task_names}")

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        if self.pref is None:
            p = torch.ones(t, dtype=gramian.dtype)
        else:
            p = torch.tensor(self.pref, dtype=gramian.dtype)[self.index(inp.tasks)]
        lam, vec = torch.linalg.eigh(gramian)
        tol = float(lam.max()) * t * torch.finfo(torch.float32).eps
        keep = lam > tol
        if not bool(keep.any()):
            return p
        lam, vec = lam[keep], vec[:, keep]
        if self.scale_mode == "min":
            scale = lam.min()
        elif self.scale_mode == "median":
            scale = torch.median(lam)
        else:
            scale = lam.mean()
        b = scale.sqrt() * (vec / lam.sqrt().unsqueeze(0)) @ vec.T
        return b @ p


# =============================================================================== primary/auxiliary


@register_balancer("primary_auxiliary")
class PrimaryAuxiliary(GramianBalancer):
    """Primary task with auxiliaries that may only help (projection as in PCGrad, Yu et al. 2020).

    The primary gradient ``g_p`` enters with weight 1; each auxiliary ``g_a`` with weight
    ``aux_weight`` after removing its conflicting component: if ``<g_a, g_p> < 0``,
    ``g_a <- g_a - <g_a, g_p> / ||g_p||^2 g_p``. Hence
    ``w_a = aux_weight``, ``w_p = 1 - aux_weight sum_a min(0, G_ap) / G_pp`` and
    ``<d, g_p> = ||g_p||^2 + aux_weight sum_a max(0, G_ap) >= ||g_p||^2``.
    A zero primary gradient leaves the auxiliaries unprojected; a step without the primary
    task gives every auxiliary ``aux_weight``.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        primary: str | None = None,
        aux_weight: float = 1.0,
        source: GradientSource | None = None,
    ) -> None:
        super().__init__(task_names, source=source)
        if primary is None or primary not in self.task_names:
            what = "needs" if primary is None else f"got unknown primary={primary!r}; it needs"
            raise ValueError(
                f"primary_auxiliary balancer {what} `primary=<task>` naming one of the tasks {self.task_names}"
            )
        if aux_weight < 0:
            raise ValueError(f"primary_auxiliary aux_weight must be >= 0, got {aux_weight}")
        self.primary = primary
        self.aux_weight = float(aux_weight)

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        w = torch.full((t,), self.aux_weight, dtype=gramian.dtype)
        if self.primary not in inp.tasks:
            return w
        p = inp.tasks.index(self.primary)
        w[p] = 1.0
        gpp = float(gramian[p, p])
        if gpp <= 0.0 or not bool(nonzero_mask(gramian)[p]):
            return w
        for a in range(t):
            if a != p and float(gramian[a, p]) < 0.0:
                w[p] -= self.aux_weight * float(gramian[a, p]) / gpp
        return w

"""``nash_mtl``: Nash-MTL, multi-task learning as a bargaining game: the Nash bargaining solution.

Paper: A. Navon, A. Shamsian, I. Achituve, H. Maron, K. Kawaguchi, G. Chechik & E. Fetaya, "Multi-Task
Learning as a Bargaining Game", ICML 2022. https://arxiv.org/abs/2202.01017 (official code:
https://github.com/AvivNavon/nash-mtl)

Formula (Eq. 2 / Alg. 1)::

    alpha > 0 with  G alpha = 1 / alpha
    alpha <- alpha * min(1, max_norm / ||J^T alpha||),    ||J^T alpha|| = sqrt(alpha^T G alpha)
    w = alpha

Before clipping the update always has ``||J^T alpha||^2 = alpha^T G alpha = sum_t alpha_t (1/alpha_t) = T``
(norm ``sqrt(T)``), whatever the scale of the gradients; the weights scale as ``1/||g||``. With
``normalize_gramian`` the system is solved on ``G~ = G / ||G||_F`` (better conditioned) and the solution
``alpha~`` of ``G~ alpha~ = 1/alpha~`` is rescaled back exactly, ``alpha = alpha~ / sqrt(||G||_F)``: the
official code's normalisation, whose constraint ``alpha_t ||G||_F (G~ alpha)_t >= 1`` cancels it the
same way, so both settings give the paper's ``alpha``.

Knobs:
    ``max_norm`` (1.0): clip ``||sum_t w_t g_t||`` to this (0 disables); official default.
    ``update_weights_every`` (1): recompute the weights every k-th step, reuse them in between.
    ``optim_niter`` (20): iterations of the cvxpy sequential convex approximation (``solver=cvxpy``).
    ``normalize_gramian`` (True): solve on ``G / ||G||_F`` and rescale the solution back (conditioning only:
    the weights are the same as with False, up to round-off).
    ``solver`` ("auto"): auto (= newton) | newton | scipy | cvxpy (needs cvxpy installed).
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code:

* Default solver ``newton``: damped Newton on the convex potential ``1/2 a^T G a - sum log a``
  (:func:`~mtl.balancers.gramian.linalg.nash_solve`), exact to round-off with no extra dependency,
  instead of the official sequential convex approximation (cvxpy), which stays available as
  ``solver=cvxpy``; ``scipy``: L-BFGS-B on the same potential. ``auto`` never picks cvxpy, so results
  do not depend on what happens to be installed.
* A ridge ``1e-10 * mean(diag G)`` keeps a solution when zero lies in the convex hull of the gradients.
* Zero gradients get weight 0 (their ``alpha`` would be infinite).
* ``max_norm`` clips ``||J^T alpha||`` computed from the Gramian (the official code clips the shared
  gradient's norm; torchjd clips ``||J^T alpha||`` the same way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer
from mtl.balancers.gramian.linalg import nash_solve, nonzero_mask, quad

NashSolver = Literal["auto", "newton", "scipy", "cvxpy"]


@register_balancer("nash_mtl")
class NashMTL(GramianBalancer):
    """Nash-MTL, multi-task learning as a bargaining game (Navon et al. 2022, Alg. 1).

    ``alpha > 0`` solves ``G alpha = 1 / alpha`` (so ``||J^T alpha|| = sqrt(T)`` before clipping).
    With ``normalize_gramian`` the system is solved on ``G / ||G||_F`` for conditioning and the
    solution divided by ``sqrt(||G||_F)``, which gives the same ``alpha`` (as the official code,
    whose constraint cancels its normalisation). ``max_norm > 0`` then scales ``alpha`` down so that
    ``||J^T alpha|| = sqrt(alpha^T G alpha) <= max_norm`` (the official code clips the shared
    gradient's norm; torchjd clips ``||J^T alpha||`` the same way). ``update_weights_every = k``
    recomputes the weights every ``k``-th call and reuses them in between.

    Solvers: ``newton`` (default, also ``auto``): damped Newton on the convex potential
    ``1/2 a^T G a - sum log a`` (:func:`~mtl.balancers.gramian.linalg.nash_solve`), exact to round-off
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
        source: GradientSource | None = "representation",
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
                scale = float(torch.linalg.matrix_norm(sub)) if self.normalize_gramian else 1.0
                init = prev[ok].clamp(min=1e-12) * math.sqrt(scale)  # warm start on the solver's scale
                # G~ a~ = 1/a~ with G~ = G / s  <=>  G a = 1/a with a = a~ / sqrt(s): rescale back exactly
                alpha[ok] = self._solve(sub / scale, init) / math.sqrt(scale)
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

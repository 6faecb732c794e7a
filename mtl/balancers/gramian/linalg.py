"""Shared numerics for the Gramian-level balancers: solvers, factorisations, gradient norms.

Everything here works on the ``T x T`` Gramian ``G = J J^T`` of the task gradients only
(``G[i, j] = <g_i, g_j>``), in float64 on the CPU: ``T`` is small, so exact small dense
algebra is cheaper than moving data around. A weight vector ``w`` stands for the update
``d = J^T w = sum_t w_t g_t``; its squared norm is ``w^T G w`` and ``<d, g_t> = (G w)_t``.

Contents:

- :func:`gradient_norms`, :func:`nonzero_mask`, :func:`quad`: ``||g_t||``, non-zero gradients, ``w^T G w``.
- :func:`prepare_gramian`: float64/CPU/symmetric copy, ``None`` when not finite.
- :func:`min_norm_2`: the closed-form two-gradient line search of Sener & Koltun (2018).
- :func:`min_norm_simplex`: Frank-Wolfe for ``min_{a in simplex} a^T G a`` (MGDA), with an
  exact active-set polish.
- :func:`nash_solve`: the positive solution of ``G a = 1 / a`` (Nash-MTL, Navon et al. 2022)
  by damped Newton on the self-concordant convex potential ``1/2 a^T G a - sum log a``.
- :func:`fair_solve`: the positive solution of ``G a = a^(-1/alpha)`` (FairGrad, Ban & Ji 2024; ``alpha = 1``
  is Nash-MTL's system) by damped Newton with backtracking on ``1/2 a^T G a - sum phi_alpha(a)``.
- :func:`dual_cone_weights`: weights of the projections of ``J^T u`` onto the dual cone of the rows of
  ``J`` (UPGrad, DualProj; Quinton & Rey 2024), ``min_v v^T G v s.t. v >= u``, by exact NNLS.
- :func:`gramian_factor`: a surrogate Jacobian ``L`` with ``L L^T = G``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Relative threshold below which a squared gradient norm counts as zero.
ZERO_REL = 1e-12
_TINY = 1e-300


def prepare_gramian(gramian: Tensor) -> Tensor | None:
    """Detached float64 CPU symmetric copy of ``gramian``; ``None`` if it has inf/NaN entries.

    Gradient balancers fall back to plain summation (all weights 1) on a non-finite Gramian,
    so the non-finite gradients reach the optimiser step unchanged and an AMP ``GradScaler``
    skips the step as it would without a balancer.
    """
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(f"the Gramian must be a square matrix, got shape {tuple(gramian.shape)}")
    g = gramian.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(g).all()):
        return None
    return 0.5 * (g + g.T)


def gradient_norms(gramian: Tensor) -> Tensor:
    """``||g_t||`` from the diagonal (negative round-off clamped to 0)."""
    return torch.diagonal(gramian).clamp(min=0.0).sqrt()


def nonzero_mask(gramian: Tensor, rel: float = ZERO_REL) -> Tensor:
    """Tasks whose gradient is not (numerically) zero: ``||g_t||^2 > rel * max_s ||g_s||^2``."""
    diag = torch.diagonal(gramian).clamp(min=0.0)
    scale = float(diag.max()) if diag.numel() else 0.0
    if scale <= 0.0:
        return torch.zeros_like(diag, dtype=torch.bool)
    return diag > rel * scale


def quad(gramian: Tensor, w: Tensor) -> float:
    """``||J^T w||^2 = w^T G w`` (clamped at 0)."""
    return max(float(w @ gramian @ w), 0.0)


# --------------------------------------------------------------------------- MGDA


def min_norm_2(v11: float, v12: float, v22: float) -> tuple[float, float]:
    """Min-norm point of the segment ``[v1, v2]``: ``gamma`` (weight on ``v1``) and its squared norm.

    ``min_gamma ||gamma v1 + (1 - gamma) v2||^2`` gives
    ``gamma = clip((v22 - v12) / (v11 + v22 - 2 v12), 0, 1)`` (Sener & Koltun 2018, Alg. 1).
    The official code clips to ``[0.001, 0.999]``; we use the exact ``[0, 1]``.
    """
    if v12 >= v11:
        return 1.0, v11
    if v12 >= v22:
        return 0.0, v22
    denom = v11 + v22 - 2.0 * v12
    if denom <= 0.0:  # only reachable through round-off: the two points coincide
        return 1.0, v11
    gamma = (v22 - v12) / denom
    gamma = min(max(gamma, 0.0), 1.0)
    cost = v22 + gamma * (v12 - v22)
    return gamma, cost


def _best_pair(gramian: Tensor) -> Tensor:
    """Initial point of the official solver: the best of all pairwise min-norm points."""
    t = gramian.shape[0]
    best_cost = math.inf
    best = torch.zeros(t, dtype=gramian.dtype)
    for i in range(t):
        for j in range(i, t):
            gamma, cost = min_norm_2(float(gramian[i, i]), float(gramian[i, j]), float(gramian[j, j]))
            if cost < best_cost:
                best_cost = cost
                best = torch.zeros(t, dtype=gramian.dtype)
                best[i] += gamma
                best[j] += 1.0 - gamma
    return best


def _solve_on_support(gramian: Tensor, support: list[int]) -> Tensor:
    """Minimiser of ``x^T G_SS x`` subject to ``sum x = 1`` (KKT system; min-norm solution)."""
    k = len(support)
    g = gramian[support][:, support]
    kkt = torch.zeros(k + 1, k + 1, dtype=gramian.dtype)
    kkt[:k, :k] = g
    kkt[:k, k] = 1.0
    kkt[k, :k] = 1.0
    rhs = torch.zeros(k + 1, dtype=gramian.dtype)
    rhs[k] = 1.0
    sol = torch.linalg.pinv(kkt, hermitian=True) @ rhs
    return sol[:k]


def _polish(gramian: Tensor, alpha: Tensor, tol: float) -> Tensor | None:
    """Exact active-set refinement of a Frank-Wolfe point (Wolfe's min-norm-point iteration).

    Starting from the support of ``alpha``, solve the equality-constrained problem on the
    support, drop the most negative coordinate while any is negative, add the most violating
    coordinate while a KKT condition ``(G a)_i >= a^T G a`` fails. Returns ``None`` if that
    does not settle (the caller keeps the Frank-Wolfe point).
    """
    t = gramian.shape[0]
    scale = max(float(torch.diagonal(gramian).max()), _TINY)
    support = [i for i in range(t) if float(alpha[i]) > 1e-9]
    if not support:
        support = [int(torch.argmax(alpha))]
    for _ in range(4 * t + 4):
        x = _solve_on_support(gramian, support)
        if float(x.min()) < -1e-12:
            support.pop(int(torch.argmin(x)))
            if not support:
                return None
            continue
        full = torch.zeros(t, dtype=gramian.dtype)
        full[support] = x.clamp(min=0.0)
        s = float(full.sum())
        if s <= 0.0:
            return None
        full = full / s
        grad = gramian @ full
        value = float(full @ grad)
        outside = [i for i in range(t) if i not in support]
        if outside:
            j = min(outside, key=lambda i: float(grad[i]))
            if float(grad[j]) < value - tol * scale:
                support.append(j)
                continue
        return full
    return None


def min_norm_simplex(gramian: Tensor, max_iter: int = 250, tol: float = 1e-5, polish: bool = True) -> Tensor:
    """``argmin_{a >= 0, sum a = 1} a^T G a``: the MGDA weights (Sener & Koltun 2018, Alg. 2).

    Frank-Wolfe as in the official ``MinNormSolver.find_min_norm_element_FW``: start at the
    best pairwise min-norm point, then repeatedly move towards the vertex ``e_t`` with
    ``t = argmin (G a)_t`` using the exact two-point line search :func:`min_norm_2`; stop when
    the step changes ``a`` by less than ``tol`` (L1) or the Frank-Wolfe duality gap
    ``a^T G a - min_t (G a)_t`` falls below ``tol**2 * max_t G_tt``, or after ``max_iter``
    steps. With ``polish`` the result is refined by an exact active-set solve (accepted only
    when it is feasible and not worse), so the returned point meets the KKT conditions to
    round-off even where Frank-Wolfe converges slowly.
    """
    t = gramian.shape[0]
    if t == 1:
        return torch.ones(1, dtype=gramian.dtype)
    if not bool(nonzero_mask(gramian).any()):
        return torch.full((t,), 1.0 / t, dtype=gramian.dtype)
    alpha = _best_pair(gramian)
    if t > 2:
        scale = float(torch.diagonal(gramian).max())
        for _ in range(max_iter):
            grad = gramian @ alpha
            k = int(torch.argmin(grad))
            v11 = float(alpha @ grad)
            v12 = float(grad[k])
            if v11 - v12 <= tol * tol * scale:
                break
            gamma, _ = min_norm_2(v11, v12, float(gramian[k, k]))
            new = gamma * alpha
            new[k] += 1.0 - gamma
            change = float((new - alpha).abs().sum())
            alpha = new
            if change < tol:
                break
    if polish:
        refined = _polish(gramian, alpha, tol=1e-12)
        if refined is not None and quad(gramian, refined) <= quad(gramian, alpha) * (1 + 1e-12) + 1e-300:
            alpha = refined
    return alpha


# --------------------------------------------------------------------------- Nash-MTL


def nash_solve(
    gramian: Tensor,
    init: Tensor | None = None,
    max_iter: int = 200,
    tol: float = 1e-12,
    ridge: float = 1e-10,
) -> Tensor:
    """Positive ``a`` with ``G a = 1 / a`` (Nash bargaining solution, Navon et al. 2022, Eq. 2).

    ``G a = 1/a`` is the stationarity condition of the strictly convex, self-concordant
    potential ``f(a) = 1/2 a^T G a - sum_t log a_t`` on ``a > 0``; we minimise it by damped
    Newton (step ``1 / (1 + lambda)`` while the Newton decrement ``lambda >= 1/4``, full steps
    after), which stays feasible and converges quadratically. ``ridge * mean(diag G)`` is added
    to the diagonal so a solution exists even when zero lies in the convex hull of the
    gradients (then the weights are large but the update ``J^T a`` is ~0). Callers remove
    zero gradients first (their ``a_t`` would be infinite).
    """
    t = gramian.shape[0]
    mean_diag = float(torch.diagonal(gramian).mean())
    if mean_diag <= 0.0:
        raise ValueError("nash_solve needs at least one non-zero gradient")
    g = gramian + ridge * mean_diag * torch.eye(t, dtype=gramian.dtype)
    a = torch.ones(t, dtype=gramian.dtype) if init is None else init.to(gramian.dtype).clone()
    if not bool((a > 0).all()) or not bool(torch.isfinite(a).all()):
        a = torch.ones(t, dtype=gramian.dtype)
    # best rescaling c a of the start point: f(c a) is minimised at c = sqrt(T / a^T G a)
    a = a * math.sqrt(t / max(float(a @ g @ a), _TINY))
    for _ in range(max_iter):
        grad = g @ a - 1.0 / a
        hess = g + torch.diag(1.0 / (a * a))
        step = torch.linalg.solve(hess, grad)
        dec2 = float(grad @ step)
        if dec2 <= 2.0 * tol:
            break
        lam = math.sqrt(max(dec2, 0.0))
        a = a - (step / (1.0 + lam) if lam >= 0.25 else step)
        a = a.clamp(min=_TINY)
    return a


# --------------------------------------------------------------------------- FairGrad


def _fair_potential(gramian: Tensor, a: Tensor, alpha: float) -> float:
    """``1/2 a^T G a - sum phi(a_t)``; ``phi(x) = log x`` (alpha = 1) or ``x^p / p``, ``p = 1 - 1/alpha``."""
    if alpha == 1.0:
        barrier = float(torch.log(a).sum())
    else:
        p = 1.0 - 1.0 / alpha
        barrier = float((a**p).sum()) / p
    return 0.5 * float(a @ gramian @ a) - barrier


def fair_solve(
    gramian: Tensor,
    alpha: float,
    init: Tensor | None = None,
    max_iter: int = 200,
    tol: float = 1e-12,
    ridge: float = 1e-10,
) -> Tensor:
    """Positive ``a`` with ``G a = a^(-1/alpha)`` elementwise (FairGrad, Ban & Ji 2024, Eq. 4).

    For ``alpha > 0`` it is the stationarity condition of the strictly convex potential
    ``f(a) = 1/2 a^T G a - sum_t phi(a_t)`` on ``a > 0``, ``phi'(x) = x^(-1/alpha)``
    (``phi = log`` for ``alpha = 1``, the Nash-MTL system of :func:`nash_solve`). Newton steps kept
    inside ``a > 0`` with a backtracking (Armijo) line search; full steps, hence quadratic convergence,
    near the solution. The start point is the best rescaling ``c a0`` of ``init`` (or of ones):
    ``c = (sum a0^p / a0^T G a0)^(alpha / (1 + alpha))``, ``p = 1 - 1/alpha``. ``ridge * mean(diag G)``
    is added to the diagonal as in :func:`nash_solve`, so a solution exists even when zero lies in
    the convex hull of the gradients. Callers remove zero gradients first.
    """
    if alpha <= 0:
        raise ValueError(f"fair_solve needs alpha > 0, got {alpha}")
    t = gramian.shape[0]
    mean_diag = float(torch.diagonal(gramian).mean())
    if mean_diag <= 0.0:
        raise ValueError("fair_solve needs at least one non-zero gradient")
    g = gramian + ridge * mean_diag * torch.eye(t, dtype=gramian.dtype)
    a = torch.ones(t, dtype=gramian.dtype) if init is None else init.to(gramian.dtype).clone()
    if not bool((a > 0).all()) or not bool(torch.isfinite(a).all()):
        a = torch.ones(t, dtype=gramian.dtype)
    p = 1.0 - 1.0 / alpha
    num = float((a**p).sum())
    a = a * (num / max(float(a @ g @ a), _TINY)) ** (alpha / (1.0 + alpha))
    value = _fair_potential(g, a, alpha)
    for _ in range(max_iter):
        grad = g @ a - a ** (-1.0 / alpha)
        hess = g + torch.diag(a ** (-1.0 / alpha - 1.0) / alpha)
        step = torch.linalg.solve(hess, grad)
        dec2 = float(grad @ step)
        if dec2 <= 2.0 * tol:
            if bool((a - step > 0).all()):  # converged: one last full (quadratically convergent) step
                a = a - step
            break
        # Newton step, at most 99 % of the way to the boundary a = 0, halved until Armijo's sufficient
        # decrease holds or the directional derivative has at least halved in magnitude (strong Wolfe
        # curvature; measurable where f is too flat, relative to its size, for Armijo in float64)
        size = 1.0
        pos = step > 0
        if bool(pos.any()):
            size = min(size, 0.99 * float((a[pos] / step[pos]).min()))
        for _ in range(60):
            cand = a - size * step
            if bool((cand > 0).all()):
                cand_value = _fair_potential(g, cand, alpha)
                slope = float((g @ cand - cand ** (-1.0 / alpha)) @ step)  # -d/dt f(a - t step)
                if cand_value <= value - 1e-4 * size * dec2 or abs(slope) <= 0.5 * dec2:
                    break
            size *= 0.5
        else:
            break
        a, value = cand, cand_value
    return a


# --------------------------------------------------------------------------- dual cone


def dual_cone_weights(gramian: Tensor, u: Tensor, reg_eps: float = 0.0) -> Tensor:
    """Weights ``v`` of the projection of ``J^T u`` onto the dual cone ``{d : J d >= 0}`` of ``J``'s rows.

    Quinton & Rey (2024, Prop. 1): ``pi_J(J^T u) = J^T v`` with ``v = argmin_{v >= u} v^T G v``.
    ``u`` is one weight vector ``[T]`` or a batch ``[k, T]`` (one projection per row). The Gramian is
    divided by its trace (scale invariance; an all-zero Gramian returns ``u``) and ``reg_eps`` is added
    to its diagonal (torchjd's default regularisation is ``1e-4``; 0 gives the exact projection).
    With ``G' = R^T R`` (``R`` from :func:`gramian_factor`, so singular Gramians are fine) and
    ``v = u + x`` the problem is the non-negative least-squares problem ``min_{x >= 0} ||R x + R u||``,
    solved exactly (Lawson-Hanson, ``scipy.optimize.nnls``). KKT: ``v >= u``, ``G' v >= 0`` and
    ``(v - u)_t (G' v)_t = 0``.
    """
    import numpy as np
    from scipy.optimize import nnls

    t = gramian.shape[0]
    rows = u.to(gramian.dtype).reshape(-1, t)
    trace = float(torch.diagonal(gramian).clamp(min=0.0).sum())
    if trace <= 0.0:
        return rows.clone().reshape(u.shape)
    g = gramian / trace + reg_eps * torch.eye(t, dtype=gramian.dtype)
    r = gramian_factor(0.5 * (g + g.T)).T.numpy()
    out = []
    for row in rows.numpy():
        b = -(r @ row)
        try:
            x, _ = nnls(r, b, maxiter=50 * t + 50)
        except RuntimeError:  # Lawson-Hanson did not settle (not seen in practice): bounded L-BFGS-B
            from scipy.optimize import minimize

            def fun(x: np.ndarray, b: np.ndarray = b) -> tuple[float, np.ndarray]:
                res = r @ x - b
                return 0.5 * float(res @ res), r.T @ res

            x = minimize(fun, np.zeros(t), jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * t,
                         options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12}).x
        out.append(row + x)
    return torch.from_numpy(np.stack(out)).to(gramian.dtype).reshape(u.shape)


# --------------------------------------------------------------------------- factors


def gramian_factor(gramian: Tensor) -> Tensor:
    """A ``T x T`` matrix ``L`` with ``L L^T = G`` (eigen-factor ``V sqrt(Lambda)``).

    Its rows are a surrogate Jacobian: any rotation-equivariant aggregator that returns a
    linear combination of the rows gives, on ``L``, the same weights as on the real Jacobian.
    """
    evals, evecs = torch.linalg.eigh(gramian)
    return evecs * evals.clamp(min=0.0).sqrt().unsqueeze(0)

"""``cagrad``: CAGrad, conflict-averse gradient descent: the best worst-task improvement near the mean.

Paper: B. Liu, X. Liu, X. Jin, P. Stone & Q. Liu, "Conflict-Averse Gradient Descent for Multi-task
Learning", NeurIPS 2021. https://arxiv.org/abs/2110.14048 (official code: https://github.com/Cranial-XIX/CAGrad)

Formula (Alg. 1 / official code), ``g0`` the mean gradient, ``||g0||^2 = 1^T G 1 / T^2``::

    x = argmin_{x in simplex}  x^T G 1/T + c ||g0|| sqrt(x^T G x)
    lambda = c ||g0|| / ||J^T x||
    d = g0 + lambda J^T x          =>   w = 1/T + lambda x,   then divided by 1 + c^2 (rescale=1)

``c = 0`` is plain gradient descent on the mean loss (``w = 1/T``).

Knobs:
    ``c`` (0.5): radius of the ball around the mean gradient, in units of its norm.
    ``rescale`` (1): 0: none | 1: divide by 1 + c^2 (official default) | 2: divide by 1 + c.
    ``max_iter`` (200): SLSQP iterations for the inner problem on the simplex.
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code: the inner problem is solved (SLSQP on the simplex, as the official
code, here with the analytic gradient) on ``G / mean(diag G)``: the weights do not depend on the scale
of ``G``, and the official code's ``1e-8`` safeguards stay relative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer
from mtl.balancers.gramian.linalg import quad


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
        source: GradientSource | None = "representation",
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

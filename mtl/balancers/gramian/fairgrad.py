"""``fairgrad``: FairGrad, alpha-fair allocation of the update's progress among the tasks.

Paper: H. Ban & K. Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024.
https://arxiv.org/abs/2402.15638 (official code: https://github.com/OptMN-Lab/fairgrad,
``methods/weight_methods.py``, class ``FairGrad``)

Formula (Eq. 4 / Alg. 1): the update ``d = J^T w`` maximises ``sum_t u(<g_t, d>)`` with the alpha-fair
utility ``u(x) = x^(1-alpha) / (1-alpha)`` (``log x`` for alpha = 1) over a ball; its weights solve::

    w > 0 with  G w = w^(-1/alpha)   (elementwise; <g_t, d> = (G w)_t = w_t^(-1/alpha))
    w <- T w                         (the official code's "to match the sum loss" factor)
    w <- w * min(1, max_norm / ||J^T w||),    ||J^T w|| = sqrt(w^T G w)

``alpha = 1`` is Nash-MTL's system ``G w = 1/w`` (proportional fairness; ``fairgrad`` then gives ``T`` times
``nash_mtl``'s weights), ``alpha -> inf`` approaches max-min fairness (equal ``<g_t, d>``), ``alpha = 0`` is
linear scalarisation (all weights 1 here). The system is the stationarity condition of a strictly convex
potential, solved by damped Newton (:func:`~mtl.balancers.gramian.linalg.fair_solve`). Scaling ``G`` by ``c``
scales ``w`` by ``c^(-alpha / (1 + alpha))``: no scale invariance except through the clipping.

Knobs:
    ``alpha`` (1.0): the fairness exponent (>= 0); the paper tunes it per benchmark (the official code's
    default is 1).
    ``max_norm`` (1.0): clip ``||sum_t w_t g_t||`` to this (0 disables); the official default.
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code:

* Solver: damped Newton on the convex potential, exact to round-off, instead of
  ``scipy.optimize.least_squares`` on ``G w - w^(-1/alpha)`` from ``w = 1/T`` (whose default tolerances stop
  early, and whose bound ``w >= 0`` may leave a task at 0).
* A ridge ``1e-10 * mean(diag G)`` keeps a solution when zero lies in the convex hull of the gradients;
  zero gradients get weight 0 (their ``w`` would be infinite); ``alpha = 0`` gives weights 1 (the official
  code would divide by zero; the paper's linear scalarisation).
* ``max_norm`` clips ``||J^T w||`` computed from the Gramian (the official code clips the shared
  parameters' gradient norm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer
from mtl.balancers.gramian.linalg import fair_solve, nonzero_mask, quad


@register_balancer("fairgrad")
class FairGrad(GramianBalancer):
    """FairGrad (Ban & Ji, ICML 2024): ``G w = w^(-1/alpha)``, then ``w <- T w`` clipped to ``max_norm``.

    ``alpha = 1`` is the Nash-MTL system; zero gradients get weight 0; ``alpha = 0``: all weights 1.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        alpha: float = 1.0,
        max_norm: float = 1.0,
        source: GradientSource | None = "representation",
    ) -> None:
        super().__init__(task_names, source=source)
        if alpha < 0 or max_norm < 0:
            raise ValueError(f"fairgrad needs alpha >= 0 and max_norm >= 0, got {alpha}, {max_norm}")
        self.alpha = float(alpha)
        self.max_norm = float(max_norm)

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        ok = nonzero_mask(gramian)
        if self.alpha == 0.0 or not bool(ok.any()):
            return torch.ones(t, dtype=gramian.dtype)
        w = torch.zeros(t, dtype=gramian.dtype)
        sub = gramian[ok][:, ok]
        # conditioning: solve on G / s and rescale back (G w = w^(-1/a) <=> w = s^(-a/(1+a)) w~)
        scale = float(torch.diagonal(sub).max())
        w[ok] = fair_solve(sub / scale, self.alpha) * scale ** (-self.alpha / (1.0 + self.alpha))
        w = t * w
        if self.max_norm > 0:
            norm = math.sqrt(quad(gramian, w))
            if norm > self.max_norm:
                w = w * (self.max_norm / norm)
        return w

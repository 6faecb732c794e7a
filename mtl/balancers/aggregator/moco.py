"""``moco``: Multi-objective gradient correction: momentum-tracked task gradients, a simplex step on their weights.

Paper: H. D. Fernando, H. Shen, M. Liu, S. Chaudhury, K. Murugesan & T. Chen, "Mitigating Gradient Bias in
Multi-objective Learning: A Provably Convergent Approach", ICLR 2023. https://openreview.net/forum?id=dLAYGdKTi2
(official code: https://github.com/heshandevaka/MoCo, the ``tracking`` method of ``CAGrad/nyuv2/utils.py``
and ``LibMTL/weighting/Tracking.py``; LibMTL's ``LibMTL/weighting/MoCo.py`` is a variant, see below)

Formula (Algorithm 1; step ``k = 0, 1, ...``, ``g_t`` this step's task gradients on the shared parameters,
``Y`` the tracked gradients as rows, initialised at 0, ``lambda`` initialised at ``1/T``)::

    beta_k = beta / (k + 1)^beta_sigma           gamma_k = gamma / (k + 1)^gamma_sigma
    y_t <- y_t - beta_k (y_t - g_t)               (an EMA of each task's gradient: the bias correction)
    lambda <- Proj_simplex(lambda - gamma_k (Y Y^T + rho I) lambda)
    update = T sum_t lambda_t y_t                 (x T: the scale of the summed loss, as the official code)

``lambda`` takes a projected gradient step on the min-norm objective ``1/2 ||Y^T lambda||^2 + rho/2
||lambda||^2`` of MGDA, with the tracked gradients instead of the noisy ones. The step reports ``T lambda``
as the task weights.

Knobs (defaults: the official NYUv2 script, ``run_moco.sh``):
    ``beta`` (0.99), ``beta_sigma`` (0.0): the tracking rate and its decay exponent.
    ``gamma`` (0.1), ``gamma_sigma`` (0.0): the step on ``lambda`` and its decay exponent.
    ``rho`` (0.0): the L2 regulariser of the ``lambda`` problem.
    ``normalize`` (false): track ``g_t L_t / ||g_t||`` instead of ``g_t`` (LibMTL's variant).
    ``source`` ("parameters"): the only source (see the deviations).

Cost and memory: the tracked gradients ``Y`` are a ``T x P`` float32 buffer on the model's device (as large
as the parameters-mode Jacobian: 258 MB for e5-small with frozen embeddings, 1.4 GB unfrozen), kept in the
balancer's ``state_dict`` and so in every checkpoint; per step one pass over ``Y`` and ``J`` (the EMA), the
``T x T`` product ``Y Y^T`` and the update ``T lambda^T Y``.

Deviations from the official code:

* Parameters only: on the representation the engine pushes each task's representation gradient through its
  own graph (the tasks' batches hold different sentences), so it can apply per-coordinate weights of this
  step's gradients but not a vector built from past ones (LibMTL refuses ``rep_grad`` for MoCo too).
* ``lambda``'s step is the paper's ``(Y Y^T + rho I) lambda`` (the official ``Tracking.py`` doubles it;
  ``utils.py`` does not and has no ``rho``), projected onto the simplex by sorting (as the official code);
  LibMTL instead takes a softmax of the stepped vector, normalises every gradient to ``L_t g_t / ||g_t||``
  (our ``normalize``) and uses ``beta = 0.5, beta_sigma = 0.5, gamma_sigma = 0.5``.
* ``y_t`` is not projected onto a bounded set (the paper's ``Pi_{L_t}``, a device of the analysis; the
  official code does not either). ``Y Y^T`` is a float32 product read in float64 (a step size, not a solver
  decision: no chunked float64 accumulation as the engine's Gramian).
* A step with non-finite gradients or losses (skipped by the trainer) leaves ``Y``, ``lambda`` and ``k``
  untouched. If the number of shared parameters changes (freezing), ``Y`` restarts at 0 with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.balancers._common import LazyBuffersMixin
from mtl.balancers.aggregator.base import Aggregation, Aggregator
from mtl.balancers.base import BalanceInput, GradientSource, register_balancer


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` onto the probability simplex (sort-based, Held et al. / Duchi et al.)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    ind = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - css / ind > 0).max())
    theta = css[rho] / (rho + 1)
    return (v - theta).clamp_min(0.0)


@register_balancer("moco")
class MoCo(LazyBuffersMixin, Aggregator):
    """MoCo (Fernando et al., ICLR 2023): ``update = T lambda^T Y`` with ``Y`` the tracked task gradients."""

    default_source = "parameters"
    sources = ("parameters",)
    lazy_buffers = ("tracked",)

    def __init__(
        self,
        task_names: Sequence[str],
        beta: float = 0.99,
        beta_sigma: float = 0.0,
        gamma: float = 0.1,
        gamma_sigma: float = 0.0,
        rho: float = 0.0,
        normalize: bool = False,
        source: GradientSource | None = "parameters",
    ) -> None:
        super().__init__(task_names, source=source)
        if not 0.0 < beta <= 1.0 or gamma < 0 or rho < 0 or beta_sigma < 0 or gamma_sigma < 0:
            raise ValueError("moco needs 0 < beta <= 1 and gamma, rho, beta_sigma, gamma_sigma >= 0")
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma = float(gamma), float(gamma_sigma)
        self.rho = float(rho)
        self.normalize = bool(normalize)
        n = len(self.task_names)
        self.register_buffer("tracked", torch.zeros(0))  # [T, D] float32, allocated at the first step
        self.register_buffer("lam", torch.full((n,), 1.0 / n, dtype=torch.float64))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))

    def _tracked_for(self, grads: Tensor) -> Tensor:
        n, d = len(self.task_names), grads.shape[1]
        if self.tracked.shape != (n, d):
            if self.tracked.numel():
                warnings.warn(
                    f"moco: the task gradients changed size ({self.tracked.shape[1]} -> {d} coordinates); "
                    "the tracked gradients restart at 0",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self.tracked = torch.zeros(n, d, dtype=torch.float32, device=grads.device)
        elif self.tracked.device != grads.device:
            self.tracked = self.tracked.to(grads.device)
        return self.tracked

    def aggregation(self, inp: BalanceInput) -> Aggregation:
        grads = inp.gradients
        assert grads is not None
        if sorted(inp.tasks) != sorted(self.task_names):
            raise ValueError(f"moco tracks every task's gradient: it needs all of {self.task_names} each step, "
                             f"got {inp.tasks}")
        order = self.index(inp.tasks).tolist()  # row j of the step is task order[j] of the state
        tracked = self._tracked_for(grads)
        k = int(self.steps)
        beta_k = self.beta / (k + 1) ** self.beta_sigma
        gamma_k = self.gamma / (k + 1) ** self.gamma_sigma
        with torch.no_grad():
            for j, i in enumerate(order):  # row by row, in place: no T x D temporary
                g = grads[j].to(torch.float32)
                if self.normalize:
                    norm = float(torch.linalg.vector_norm(g))
                    g = g * (float(inp.losses[j]) / norm) if norm > 0 else torch.zeros_like(g)
                tracked[i].lerp_(g, beta_k)  # y <- y - beta_k (y - g)
            yy = (tracked @ tracked.T).to("cpu", torch.float64)
            lam = self.lam.to("cpu", torch.float64)
            lam = project_simplex(lam - gamma_k * (yy @ lam + self.rho * lam))
            self.lam.copy_(lam)
            self.steps += 1
            n = len(self.task_names)
            update = (n * lam).to(tracked.device, tracked.dtype) @ tracked
        return Aggregation((n * lam[order]).float(), update=update)

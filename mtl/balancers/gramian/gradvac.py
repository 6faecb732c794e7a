"""``gradvac``: Gradient Vaccine: raise each pair's gradient cosine towards an adaptive target.

Paper: Z. Wang, Y. Tsvetkov, O. Firat & Y. Cao, "Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models", ICLR 2021. https://arxiv.org/abs/2010.05874

Formula (Alg. 1), for every task ``i`` and the other tasks ``j`` in random order, ``phi = cos(g_i^GV, g_j)``
and ``phi_hat_ij`` the EMA target::

    if phi < phi_hat_ij:
        g_i^GV += g_j ||g_i^GV|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (||g_j|| sqrt(1 - phi_hat^2))
    phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi
    d = sum_i g_i^GV

``g_i^GV = sum_k C[i, k] g_k`` is tracked through ``G``; ``w = 1^T C``.

Knobs:
    ``beta`` (0.01): EMA rate of the pairwise cosine targets ``phi_hat`` (paper: 1e-2).
    ``eps`` (1e-8): added to denominators.
    ``seed`` (0): seed of the random task orders (generator state is checkpointed).
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code (none was released; checked against torchjd's GradVac):

* Whole-model granularity (the paper also applies it per layer or per parameter block).
* ``phi_hat`` starts at 0 (so the first step is PCGrad) and is a per-ordered-pair buffer over
  ``task_names``; a step on a subset of the tasks only touches their pairs.
* Random orders: ``randperm(T - 1)`` of the others from a private seeded generator (torchjd's order
  semantics). Pairs involving a zero gradient are skipped (no correction, no EMA update).
* ``G`` is first divided by its largest diagonal entry, so ``eps`` acts at a fixed relative level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer, SeededMixin
from mtl.balancers.gramian.linalg import gradient_norms, nonzero_mask


@register_balancer("gradvac")
class GradVac(SeededMixin, GramianBalancer):
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
        source: GradientSource | None = "representation",
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

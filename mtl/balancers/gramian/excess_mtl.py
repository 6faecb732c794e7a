"""``excess_mtl``: ExcessMTL, task weights raised by each task's estimated excess risk (distance to its optimum).

Paper: Y. He, S. Zhou, G. Zhang, H. Yun, Y. Xu, B. Zeng, T. Chilimbi & H. Zhao, "Robust Multi-Task Learning
with Excess Risks", ICML 2024. https://arxiv.org/abs/2402.02009 (official code:
https://github.com/yifei-he/ExcessMTL, ``LibMTL/LibMTL/weighting/ExcessMTL.py``; the same in LibMTL)

Formula, per task ``t`` with gradient ``g_t`` (a row of ``BalanceInput.gradients``) at step ``k``::

    S_t <- S_t + g_t^2                                    (AdaGrad's accumulated squares, per coordinate)
    e_t = sum_d g_td^2 / sqrt(S_td + eps)                 (the excess risk g^T H^-1 g, H = diag sqrt(S))
    first step of the task:  e_t(0) = e_t, weight unchanged
    afterwards:              lambda_t <- lambda_t exp(step_size e_t / e_t(0)),  lambda <- T lambda / sum lambda

``lambda`` starts at 1. The weights follow the excess risk relative to each task's first one (a
distributionally robust update: tasks far from their optimum, relative to their start, gain weight)
rather than the raw losses, which do not tell a hard task from a noisy one.

Knobs:
    ``step_size`` (0.01): the exponentiated-gradient step (official ``robust_step_size``).
    ``eps`` (1e-7): inside the square root (official).
    ``source`` ("representation"): representation (cheap, MGDA-UB style; the official code supports it,
        summing the representation gradient over the batch as we do) | parameters (all shared params).

Memory: the statistics ``S`` are a ``T x D`` float32 buffer on the model's device (``D`` the hidden size on
the representation; on the parameters every shared parameter: 258 MB for e5-small with frozen embeddings),
in the balancer's ``state_dict`` and so in every checkpoint.

Deviations from the official code:

* The weights are returned for this step's update (the official code multiplies this step's losses by
  the updated weights too, so the same).
* Each task's reference ``e_t(0)`` is its own first step with a finite gradient (official: the first call).
  A zero reference (a zero first gradient) gives that task a ratio of 0 (official: a division by zero).
* A step with non-finite gradients or losses (skipped by the trainer) gets weights 1 (the plain sum, as
  every Gramian method) and leaves ``S``, ``e(0)`` and ``lambda`` untouched. The normalisation runs over the step's tasks (all of
  them with ``sampler=all_tasks``). If the gradients change size (freezing), ``S`` restarts with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.balancers._common import LazyBuffersMixin
from mtl.balancers.aggregator.base import finite_gradients
from mtl.balancers.base import BalanceInput, Balancer, GradientSource, register_balancer


@register_balancer("excess_mtl")
class ExcessMTL(LazyBuffersMixin, Balancer):
    """ExcessMTL (He et al., ICML 2024): ``lambda_t <- lambda_t exp(step_size e_t / e_t(0))``, mean 1."""

    needs_gramian = True  # a gradient-level method (every task each step); it reads the gradients themselves
    needs_gradients = True
    lazy_buffers = ("sq_sum",)
    #: columns per chunk on a CPU (cache-sized: the few passes over a chunk stay in cache)
    CHUNK = 1 << 16

    def __init__(
        self,
        task_names: Sequence[str],
        step_size: float = 0.01,
        eps: float = 1e-7,
        source: GradientSource | None = "representation",
    ) -> None:
        super().__init__(task_names, source=source)
        if step_size < 0 or eps <= 0:
            raise ValueError("excess_mtl needs step_size >= 0 and eps > 0")
        self.step_size = float(step_size)
        self.eps = float(eps)
        n = len(self.task_names)
        self.register_buffer("sq_sum", torch.zeros(0))  # [T, D] float32, allocated at the first step
        self.register_buffer("initial", torch.zeros(n, dtype=torch.float64))  # e_t(0), once has_initial
        self.register_buffer("has_initial", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("lam", torch.ones(n, dtype=torch.float64))

    def excess_risks(self, inp: BalanceInput) -> Tensor:
        """Add this step's squares to ``S`` and return ``e_t`` for the step's tasks (float64, CPU)."""
        grads = inp.gradients
        assert grads is not None
        n, d = len(self.task_names), grads.shape[1]
        if self.sq_sum.shape != (n, d):
            if self.sq_sum.numel():
                warnings.warn(f"excess_mtl: the task gradients changed size ({self.sq_sum.shape[1]} -> {d}); "
                              "the accumulated squares restart", RuntimeWarning, stacklevel=3)
            self.sq_sum = torch.zeros(n, d, dtype=torch.float32, device=grads.device)
        elif self.sq_sum.device != grads.device:
            self.sq_sum = self.sq_sum.to(grads.device)
        out = torch.zeros(len(inp.tasks), dtype=torch.float64, device=grads.device)
        step = self.CHUNK if grads.device.type == "cpu" else 1 << 22  # accelerators: fewer, larger kernels
        with torch.no_grad():
            for j, i in enumerate(self.index(inp.tasks).tolist()):  # row by row, in cache-sized chunks
                for start in range(0, d, step):
                    g = grads[j, start : start + step].to(torch.float32)
                    s = self.sq_sum[i, start : start + step]
                    s.addcmul_(g, g)
                    out[j] += torch.dot(g * torch.rsqrt(s + self.eps), g).double()
        return out.cpu()

    def weights(self, inp: BalanceInput) -> Tensor:
        idx = self.index(inp.tasks).to(self.lam.device)
        grads = inp.gradients
        assert grads is not None
        if not (finite_gradients(inp) and bool(torch.isfinite(inp.losses).all())):
            warnings.warn("balancer 'excess_mtl': non-finite gradients or losses, using weights 1 for this step",
                          RuntimeWarning, stacklevel=2)
            return torch.ones(len(inp.tasks))  # the plain sum, as the Gramian methods; no state change
        risks = self.excess_risks(inp).to(self.lam.device)
        first = ~self.has_initial[idx]
        self.initial[idx[first]] = risks[first]
        self.has_initial[idx[first]] = True
        ref = self.initial[idx]
        ratio = torch.where(ref > 0, risks / ref.clamp_min(1e-300), torch.zeros_like(risks))
        lam = self.lam[idx] * torch.where(first, torch.ones_like(ratio), torch.exp(self.step_size * ratio))
        lam = len(inp.tasks) * lam / lam.sum()
        self.lam[idx] = lam
        return lam.to("cpu", torch.float32)

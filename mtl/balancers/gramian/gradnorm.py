"""``gradnorm``: GradNorm, learnt task weights that equalise the tasks' training rates.

Paper: Z. Chen, V. Badrinarayanan, C.-Y. Lee & A. Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018. https://arxiv.org/abs/1711.02257

Formula, learnt weights ``w`` (init 1), ``||g_i|| = sqrt(G_ii)``::

    G_i = w_i ||g_i||,        Lt_i = L_i(t) / L_i(0),        r_i = Lt_i / mean_j Lt_j
    target_i = mean_j(G_j) * r_i^alpha                        (a constant: no gradient through it)
    L_grad = sum_i |G_i - target_i|,      dL_grad/dw_i = sign(G_i - target_i) ||g_i||
    after the optimiser step:  w <- max(w, min_weight),  w <- T w / sum(w)

Means run over the step's tasks; ``L_i(0)`` is the task's first seen (finite) loss. Needs the
Gramian's diagonal only, hence every task in every step.

Hooks: ``weights`` records ``L_i(0)`` at a task's first appearance and returns ``w.detach()``;
``before_optimizer_step()`` adds ``dL_grad/dw`` (from ``last_input``) to ``w.grad``, so the trainer's
optimiser steps ``w`` in its own group at lr ``lr`` (with a GradScaler, unscale before this hook);
``after_optimizer_step()`` clamps and renormalises ``w`` (all tasks).

Knobs:
    ``alpha`` (1.5): asymmetry; larger pushes harder towards equal training rates.
    ``lr`` (0.025): lr of the task weights in the trainer's optimiser (constant).
    ``min_weight`` (1e-3): weights are clamped to >= this, then renormalised to sum to #tasks.
    ``eps`` (1e-8): guards zero initial losses and loss ratios.
    ``source`` ("representation"): representation | parameters: where ``||g_i||`` is measured.

Deviations from the official code (none was released; compared with the paper):

* ``||g_i||`` is measured on the shared representation by default (``source``); the paper uses the
  weights of the last shared layer.
* The weights are clamped to ``>= min_weight`` before the renormalisation (keeps them positive).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtl.balancers._common import record_first_losses, step_losses
from mtl.balancers.base import BalanceInput, Balancer, GradientSource, register_balancer
from mtl.balancers.gramian.base import input_gradient_norms


@register_balancer("gradnorm")
class GradNorm(Balancer):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018), asymmetry ``alpha``.

    Learnable weights ``w`` (init 1) are trained so each task's weighted gradient norm
    ``G_i = w_i ||g_i||`` tracks ``target_i = mean_j(G_j) * r_i^alpha``, with the inverse training
    rate ``r_i = Lt_i / mean_j(Lt_j)``, ``Lt_i = L_i(t) / L_i(0)`` (means over the step's tasks).
    ``||g_i|| = sqrt(G_ii)`` from the Gramian (the shared representation by default; the paper
    uses the last shared layer's weights). The GradNorm loss is ``L_grad = sum_i |G_i - target_i|``
    with the target a constant, so ``dL_grad/dw_i = sign(G_i - target_i) * ||g_i||``.

    Hooks: ``weights`` records ``L_i(0)`` at a task's first appearance and returns ``w.detach()``;
    ``before_optimizer_step`` adds ``dL_grad/dw`` for ``last_input`` to ``w.grad`` (so the trainer's
    optimiser steps ``w`` in its own group at lr ``lr``; with a GradScaler, unscale before this hook);
    ``after_optimizer_step`` clamps ``w >= min_weight`` and renormalises ``sum(w) = T`` (all tasks).
    """

    needs_gramian = True

    def __init__(
        self,
        task_names: Sequence[str],
        alpha: float = 1.5,
        lr: float = 0.025,
        min_weight: float = 1e-3,
        eps: float = 1e-8,
        source: GradientSource | None = "representation",
    ) -> None:
        super().__init__(task_names, source=source)
        n = len(self.task_names)
        self.alpha = float(alpha)
        self.lr = float(lr)
        self.min_weight = float(min_weight)
        self.eps = float(eps)
        self.task_weights = nn.Parameter(torch.ones(n))
        self.register_buffer("initial_losses", torch.ones(n))
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool))
        self.last_gradnorm_loss: float | None = None

    def weights(self, inp: BalanceInput) -> Tensor:
        idx = self.index(inp.tasks).to(self.initial_losses.device)
        record_first_losses(self.initial_losses, self.seen, idx, step_losses(inp, self.initial_losses))
        return self.task_weights.detach()[idx].clone()

    def gradnorm_grad(self, inp: BalanceInput) -> tuple[Tensor, Tensor, float]:
        """``(dL_grad/dw for the step's tasks, the targets, L_grad)``; no state is changed."""
        if inp.gramian is None:
            raise ValueError("gradnorm needs the Gramian of task gradients")
        idx = self.index(inp.tasks).to(self.initial_losses.device)
        norms = input_gradient_norms(inp).to(self.initial_losses.device)
        w = self.task_weights.detach()[idx]
        g_w = w * norms
        ratio = step_losses(inp, self.initial_losses) / self.initial_losses[idx].clamp_min(self.eps)
        inv_rate = ratio / ratio.mean().clamp_min(self.eps)
        target = g_w.mean() * inv_rate.pow(self.alpha)
        diff = g_w - target
        return torch.sign(diff) * norms, target, float(diff.abs().sum())

    def before_optimizer_step(self) -> None:
        inp = self.last_input
        if inp is None:
            raise RuntimeError("gradnorm: before_optimizer_step() needs a compute() of the step first")
        grad_sub, _, loss = self.gradnorm_grad(inp)
        idx = self.index(inp.tasks).to(self.task_weights.device)
        grad = torch.zeros_like(self.task_weights)
        grad[idx] = grad_sub.to(grad.dtype)
        p = self.task_weights
        p.grad = grad if p.grad is None else p.grad + grad
        self.last_gradnorm_loss = loss

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        w = self.task_weights
        w.clamp_(min=self.min_weight)
        w.mul_(len(self.task_names) / w.sum())

    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.task_weights], "weight_decay": 0.0, "lr": self.lr}]

    def log_values(self) -> dict[str, float]:
        out = super().log_values()
        if self.last_gradnorm_loss is not None:
            out["gradnorm/loss"] = self.last_gradnorm_loss
        return out

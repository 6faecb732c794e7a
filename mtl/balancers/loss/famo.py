"""``famo``: Fast Adaptive Multitask Optimization, loss weights steered by how fast each log loss falls.

Paper: B. Liu, Y. Feng, P. Stone & Q. Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.
https://arxiv.org/abs/2306.03792 (official code: https://github.com/Cranial-XIX/FAMO)

Formula (as implemented)::

    z = softmax(xi)                                   xi: logits, initialised at 0
    w_i = c z_i / L_i,   c = 1 / sum_j z_j / L_j       (model objective sum_i z_i log L_i, z stopped)
    delta_i = log L_i(before the step) - log L_i(after)
    xi <- Adam step on  J_z^T delta + gamma xi        (gradient descent: tasks whose log loss fell most
                                                       lose weight)

``L_i`` is ``loss + eps``.

Knobs:
    ``lr`` (0.025): Adam learning rate of the logits ``xi`` (FAMO's internal optimiser, not the trainer's).
    ``gamma`` (1e-3): weight decay of ``xi`` (L2 added to the gradient, as ``torch.optim.Adam``).
    ``eps`` (1e-8): ``L_i + eps`` inside the log.

Deviations from the official code (both to fit the trainer):

* "after" is the loss observed at the next step the task appears in (on the next batch), not a second
  forward on the same batch: at that call the pending update is applied *before* the step's weights are
  computed, so the weights use the same ``xi`` as the official loop. With one task per step ``delta`` is
  non-zero only for the tasks observed again, measured since each task's previous observation.
* ``xi`` is a buffer with a hand-written Adam (moments in buffers), not an ``nn.Parameter``: FAMO has its
  own update rule, so ``xi`` must not reach the trainer's optimiser (which would also apply its lr
  schedule/clipping), and buffers keep it all in ``state_dict``.
* ``L_i = loss + eps`` (official: ``loss - min_loss + 1e-8`` with ``min_loss = 0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.balancers._common import step_losses
from mtl.balancers.base import BalanceInput, Balancer, register_balancer


@register_balancer("famo")
class FAMO(Balancer):
    """FAMO: Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, NeurIPS 2023).

    Logits ``xi`` (init 0), ``z = softmax(xi)``. The model objective is ``sum_i z_i log L_i``
    (gradients stopped through ``z``), i.e. the loss weights ``w_i = c z_i / L_i`` with
    ``c = 1 / sum_j z_j / L_j`` (they sum to 1, as in the official code); ``L_i`` is
    ``loss + eps`` (official: ``loss - min_loss + 1e-8`` with ``min_loss = 0``).

    ``xi`` update, as the official implementation: with ``delta_i = log L_i(before the step) -
    log L_i(after)``, ``grad_xi = J_z^T delta`` (``torch.autograd.grad(z, xi, grad_outputs=delta)``)
    and one Adam step (lr ``lr``, L2 weight decay ``gamma`` added to the gradient, as
    ``torch.optim.Adam(weight_decay=gamma)``), i.e. gradient *descent*: tasks whose log loss fell
    most lose weight. Deviations, both to fit the trainer:

    * "after" is the loss observed at the next step the task appears in (on the next batch), not
      a second forward on the same batch: at that call the pending update is applied *before*
      the step's weights are computed, so the weights use the same ``xi`` as the official loop.
      With one task per step ``delta`` is non-zero only for the tasks observed again, measured
      since each task's previous observation; a task's first observation in a step gives its
      ``delta`` (later calls in that step do not), and its last observation is the
      "before" value for its next step.
    * ``xi`` is a buffer with a hand-written Adam (moments in buffers), not an ``nn.Parameter``:
      FAMO has its own update rule, so ``xi`` must not reach the trainer's optimiser (which
      would also apply its lr schedule/clipping), and buffers keep it all in ``state_dict``.

    The normaliser ``c`` runs over every task with a known loss (the step's current losses, the
    last seen loss of the others), so a one-task step gets that task's share of the weight.
    """

    BETAS = (0.9, 0.999)
    ADAM_EPS = 1e-8

    def __init__(
        self,
        task_names: Sequence[str],
        lr: float = 0.025,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_names, **kwargs)
        n = len(self.task_names)
        self.lr = float(lr)
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.register_buffer("logits", torch.zeros(n))
        self.register_buffer("adam_exp_avg", torch.zeros(n))
        self.register_buffer("adam_exp_avg_sq", torch.zeros(n))
        self.register_buffer("adam_steps", torch.tensor(0, dtype=torch.long))
        self.register_buffer("last_log_loss", torch.zeros(n))
        self.register_buffer("last_step", torch.full((n,), -1, dtype=torch.long))  # -1: never seen

    def task_probs(self) -> Tensor:
        return torch.softmax(self.logits, dim=0)

    def logit_grad(self, delta: Tensor) -> Tensor:
        """``J_z^T delta`` for ``z = softmax(xi)`` (FAMO's update direction for the logits)."""
        with torch.enable_grad():
            xi = self.logits.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.softmax(xi, dim=-1), xi, grad_outputs=delta.to(xi.dtype))
        return grad

    @torch.no_grad()
    def _adam_step(self, grad: Tensor) -> None:
        """One ``torch.optim.Adam`` step (coupled weight decay ``gamma``) on the logits."""
        b1, b2 = self.BETAS
        grad = grad + self.gamma * self.logits
        self.adam_steps += 1
        t = int(self.adam_steps)
        self.adam_exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        self.adam_exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        step_size = self.lr / (1 - b1**t)
        denom = self.adam_exp_avg_sq.sqrt() / math.sqrt(1 - b2**t) + self.ADAM_EPS
        self.logits.addcdiv_(self.adam_exp_avg, denom, value=-step_size)

    def weights(self, inp: BalanceInput) -> Tensor:
        idx = self.index(inp.tasks).to(self.logits.device)
        log_l = torch.log(step_losses(inp, self.logits) + self.eps)
        # 1) the pending xi update from the tasks seen before and seen again now
        ok = torch.isfinite(log_l)  # non-finite losses (a step the trainer skips) are ignored
        before = self.last_step[idx]
        has_delta = (before >= 0) & (before < inp.step) & ok
        if bool(has_delta.any()):
            delta = torch.zeros_like(self.logits)
            delta[idx[has_delta]] = self.last_log_loss[idx[has_delta]] - log_l[has_delta]
            self._adam_step(self.logit_grad(delta))
        self.last_log_loss[idx[ok]] = log_l[ok]
        self.last_step[idx[ok]] = inp.step
        # 2) the weights c z_i / L_i, normalised over every task with a known loss
        z = self.task_probs()
        known = self.last_step >= 0
        inv = torch.zeros_like(z)
        inv[known] = z[known] * torch.exp(-self.last_log_loss[known])
        return inv[idx] / inv.sum()

    def log_values(self) -> dict[str, float]:
        out = super().log_values()
        for t, v in zip(self.task_names, self.task_probs().cpu().tolist(), strict=True):
            out[f"famo/z/{t}"] = v
        return out

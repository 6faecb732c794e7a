"""Turn one step's task batches into gradients, the way the balancer needs them.

Three ways, one "weights" contract (see ``mtl.balancers.base``):

* ``loss``: forward every task, ask the balancer for weights from the losses, backpropagate
  ``sum(w * L) + regularizer``. One backward over the tasks' (separate) graphs.
* ``representation`` (MGDA-UB's trick): the heads are run on a detached copy of each task's
  shared representation ``z_t``; a cheap backward through the head gives ``dL_t/dz_t`` and
  the head's own gradient. The task vectors for the Gramian are ``dL_t/dz_t`` summed over the
  batch rows (the gradient of a shift of the representation, comparable across tasks that
  have different inputs). Then ONE backward through the encoder with ``w_t * dL_t/dz_t``.
  Cost: about one equal-sum step.
* ``parameters``: one backward per task graph (graphs are separate, so this costs about what
  one backward of the sum costs); each task's gradient on all shared parameters is flattened
  into a row of ``J``; ``G = J J^T``; the shared update is ``w @ J``.

Task-specific heads always keep their own task's (unweighted) gradient in the gradient modes.
Losses may be scaled (fp16 ``GradScaler``): gradients are unscaled before the Gramian so
balancers see true task gradients. Under ``torch.distributed`` each task's gradient vector
is averaged across ranks before the Gramian, so every rank computes the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from mtl.balancers.base import BalanceInput, Balancer
from mtl.models.multitask import MultiTaskModel

Batch = Mapping[str, Tensor]


@dataclass
class StepGradients:
    """What one step produced: detached losses, the weights used, diagnostics."""

    tasks: list[str]
    losses: Tensor  # [T] detached float32
    weights: Tensor  # [T] detached
    balance_input: BalanceInput
    correct: dict[str, tuple[int, int]] = field(default_factory=dict)  # task -> (correct, n)
    gramian: Tensor | None = None

    def cosines(self) -> dict[str, float]:
        """Pairwise cosine between task gradients (from the Gramian), for logging."""
        if self.gramian is None:
            return {}
        g = self.gramian
        norms = g.diagonal().clamp_min(1e-30).sqrt()
        out = {}
        for i in range(len(self.tasks)):
            for j in range(i + 1, len(self.tasks)):
                out[f"cos/{self.tasks[i]}~{self.tasks[j]}"] = float(g[i, j] / (norms[i] * norms[j]))
        return out


def mode_for(balancer: Balancer) -> str:
    return balancer.source if balancer.needs_gramian else "loss"


def _task_loss(model: MultiTaskModel, task: str, rep: Tensor, batch: Batch) -> tuple[Tensor, tuple[int, int]]:
    logits = model.head(task, rep)
    labels = batch["labels"]
    loss = F.cross_entropy(logits.float(), labels)
    with torch.no_grad():
        correct = int((logits.argmax(-1) == labels).sum())
    return loss, (correct, int(labels.numel()))


def _all_reduce_mean(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


class GradientEngine:
    """Computes a step's gradients into ``.grad`` for the mode the balancer needs."""

    def __init__(
        self,
        model: MultiTaskModel,
        balancer: Balancer,
        autocast: Callable[[], AbstractContextManager] | None = None,
        loss_scale: Callable[[Tensor], Tensor] | None = None,
        scale_value: Callable[[], float] | None = None,
        loss_divisor: float = 1.0,
    ) -> None:
        self.model = model
        self.balancer = balancer
        self.mode = mode_for(balancer)
        self.autocast = autocast or nullcontext
        self.loss_scale = loss_scale or (lambda x: x)  # fp16 GradScaler.scale, identity otherwise
        self.scale_value = scale_value or (lambda: 1.0)
        self.loss_divisor = loss_divisor  # gradient accumulation: each micro-batch carries 1/k

    # ------------------------------------------------------------------ entry point
    def step(self, batches: Mapping[str, Batch], step: int, max_steps: int, task_metrics: dict[str, float]) -> StepGradients:
        if self.mode == "loss":
            return self._loss_mode(batches, step, max_steps, task_metrics)
        if self.mode == "representation":
            return self._representation_mode(batches, step, max_steps, task_metrics)
        return self._parameter_mode(batches, step, max_steps, task_metrics)

    def _input(self, tasks, losses, step, max_steps, task_metrics, gramian=None) -> BalanceInput:
        return BalanceInput(
            tasks=list(tasks),
            losses=torch.stack([x.detach().float() for x in losses]).cpu(),
            step=step,
            max_steps=max_steps,
            gramian=gramian,
            task_metrics=dict(task_metrics),
        )

    # ------------------------------------------------------------------ loss weighting
    def _loss_mode(self, batches, step, max_steps, task_metrics) -> StepGradients:
        tasks, losses, correct = [], [], {}
        with self.autocast():
            for task, batch in batches.items():
                loss, c = _task_loss(self.model, task, self.model.encode(batch), batch)
                tasks.append(task)
                losses.append(loss)
                correct[task] = c
        inp = self._input(tasks, losses, step, max_steps, task_metrics)
        w = self.balancer.compute(inp)
        w_dev = w.to(losses[0].device)
        objective = (w_dev * torch.stack(losses)).sum()
        reg = self.balancer.regularizer()
        if reg is not None:
            objective = objective + reg.to(objective.device)
        self.loss_scale(objective / self.loss_divisor).backward()
        return StepGradients(tasks, inp.losses, w.detach().cpu(), inp, correct)

    # ------------------------------------------------------------------ representation gradients
    def _representation_mode(self, batches, step, max_steps, task_metrics) -> StepGradients:
        tasks, losses, correct, reps, rep_grads = [], [], {}, [], []
        for task, batch in batches.items():
            with self.autocast():
                z = self.model.encode(batch)
                z_leaf = z.detach().requires_grad_(True)
                loss, c = _task_loss(self.model, task, z_leaf, batch)
            # cheap backward through the head only: head params get their task's gradient
            self.loss_scale(loss / self.loss_divisor).backward()
            tasks.append(task)
            losses.append(loss.detach())
            correct[task] = c
            reps.append(z)
            rep_grads.append(z_leaf.grad)
        scale = self.scale_value() / self.loss_divisor
        vectors = torch.stack([g.float().sum(0) / scale for g in rep_grads])  # [T, H], unscaled
        vectors = _all_reduce_mean(vectors)
        gramian = (vectors @ vectors.T).cpu().double()
        inp = self._input(tasks, losses, step, max_steps, task_metrics, gramian)
        w = self.balancer.compute(inp).detach()
        grads = [g * float(wt) for g, wt in zip(rep_grads, w.tolist(), strict=True)]
        torch.autograd.backward(reps, grads)
        return StepGradients(tasks, inp.losses, w.cpu(), inp, correct, gramian)

    # ------------------------------------------------------------------ full-parameter gradients
    def _parameter_mode(self, batches, step, max_steps, task_metrics) -> StepGradients:
        shared = self.model.shared_parameters()
        numel = sum(p.numel() for p in shared)
        device = shared[0].device
        jac = torch.zeros(len(batches), numel, device=device, dtype=torch.float32)
        tasks, losses, correct = [], [], {}
        for i, (task, batch) in enumerate(batches.items()):
            head_params = self.model.head_parameters(task)
            with self.autocast():
                loss, c = _task_loss(self.model, task, self.model.encode(batch), batch)
            grads = torch.autograd.grad(
                self.loss_scale(loss / self.loss_divisor), shared + head_params, allow_unused=True
            )
            offset = 0
            for p, g in zip(shared, grads[: len(shared)], strict=True):
                n = p.numel()
                if g is not None:
                    jac[i, offset : offset + n] = g.reshape(-1).float()
                offset += n
            for p, g in zip(head_params, grads[len(shared) :], strict=True):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
            tasks.append(task)
            losses.append(loss.detach())
            correct[task] = c
        scale = self.scale_value() / self.loss_divisor
        jac = _all_reduce_mean(jac)
        gramian = ((jac @ jac.T) / (scale * scale)).cpu().double()
        inp = self._input(tasks, losses, step, max_steps, task_metrics, gramian)
        w = self.balancer.compute(inp).detach()
        update = w.to(device=device, dtype=jac.dtype) @ jac  # still scaled like the losses
        offset = 0
        for p in shared:
            n = p.numel()
            g = update[offset : offset + n].view_as(p).to(p.dtype)
            p.grad = g if p.grad is None else p.grad + g
            offset += n
        return StepGradients(tasks, inp.losses, w.cpu(), inp, correct, gramian)

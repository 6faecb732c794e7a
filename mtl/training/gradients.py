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
is averaged across ranks before the Gramian, so every rank computes the same weights; the
per-task losses and accuracy counts the balancer sees are averaged (summed) across ranks too.

Gradient accumulation (``accum_steps = k``, or a list of micro-batches per task): each task's
batch is split into ``k`` row chunks (padding columns no chunk uses are cut off); a chunk of
``n_j`` of the batch's ``n`` rows carries ``n_j / n`` of the task's mean loss, so the sum over
chunks is exactly the full-batch loss and gradient. The weights are computed ONCE per step,
from the full-batch losses (and the Gramian of the full-batch task gradients):

* ``loss`` and ``representation`` modes backpropagate chunk by chunk (activation memory of one
  chunk) and keep each task's accumulated gradient on the shared parameters aside until all
  tasks are done (memory: one gradient copy per task of the step, the price of not needing the
  weights before the backward; with one task per step nothing is kept aside, the gradient is
  just multiplied by the weight). Then ``grad = sum_t w_t g_t``; in ``representation`` mode the
  Gramian is formed from the task vectors summed over the chunks.
* ``parameters`` mode accumulates each task's Jacobian row over the chunks (no extra memory).

With ``k = 1`` (the default) the original single-backward paths run unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.balancers.base import BalanceInput, Balancer
from mtl.models.multitask import MultiTaskModel
from mtl.training import distributed as mdist

Batch = Mapping[str, Tensor]


@dataclass
class StepGradients:
    """What one step produced: detached losses, the weights used, diagnostics."""

    tasks: list[str]
    losses: Tensor  # [T] detached float32 (full-batch means; averaged over ranks)
    weights: Tensor  # [T] detached
    balance_input: BalanceInput
    correct: dict[str, tuple[int, int]] = field(default_factory=dict)  # task -> (correct, n), all ranks
    gramian: Tensor | None = None
    #: True when the shared parameters' ``.grad`` is already averaged over ranks (parameters mode)
    shared_grads_reduced: bool = False

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


# ----------------------------------------------------------------------------- micro-batches


def batch_rows(batch: Batch) -> int:
    t = batch["labels"] if "labels" in batch else next(iter(batch.values()))
    return int(t.shape[0])


def trim_padding(batch: Batch) -> dict[str, Tensor]:
    """Drop the sequence columns that are padding in every row (dynamic padding per micro-batch)."""
    out = dict(batch)
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return out
    cols = mask.any(0).nonzero().flatten()
    if cols.numel() == 0:
        return out
    lo, hi, length = int(cols[0]), int(cols[-1]) + 1, mask.shape[1]
    if lo == 0 and hi == length:
        return out
    return {k: (v[:, lo:hi] if v.dim() == 2 and v.shape[1] == length else v) for k, v in batch.items()}


def split_batch(batch: Batch, parts: int) -> list[dict[str, Tensor]]:
    """``parts`` row chunks of a batch (sizes differ by at most one; fewer if the batch is smaller)."""
    n = batch_rows(batch)
    parts = max(1, min(int(parts), n))
    if parts == 1:
        return [dict(batch)]
    pieces = {k: v.tensor_split(parts) for k, v in batch.items()}
    return [trim_padding({k: p[i] for k, p in pieces.items()}) for i in range(parts)]


def _task_loss(model: MultiTaskModel, task: str, rep: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy and the number of correct predictions (a tensor: no device sync here)."""
    logits = model.head(task, rep)
    labels = batch["labels"]
    loss = F.cross_entropy(logits.float(), labels)
    with torch.no_grad():
        correct = (logits.argmax(-1) == labels).sum()
    return loss, correct


def _all_reduce_mean(t: Tensor) -> Tensor:
    return mdist.all_reduce_(t, "mean")


def _take_grads(params: Sequence[nn.Parameter]) -> dict[nn.Parameter, Tensor]:
    """Move the current ``.grad`` of ``params`` out (``.grad`` becomes None)."""
    out = {}
    for p in params:
        if p.grad is not None:
            out[p] = p.grad
            p.grad = None
    return out


@torch.no_grad()
def _combine(params: Sequence[nn.Parameter], stashes: Sequence[dict[nn.Parameter, Tensor]],
             weights: Sequence[float], base: dict[nn.Parameter, Tensor]) -> None:
    """``p.grad = base + sum_t w_t stash_t[p]``, in place on the stashed tensors (no extra copies)."""
    for p in params:
        total: Tensor | None = base.get(p)
        for stash, w in zip(stashes, weights, strict=True):
            g = stash.get(p)
            if g is None:
                continue
            if total is None:
                total = g.mul_(w)
            else:
                total.add_(g, alpha=w)
        if total is not None:
            p.grad = total


class GradientEngine:
    """Computes a step's gradients into ``.grad`` for the mode the balancer needs."""

    def __init__(
        self,
        model: MultiTaskModel,
        balancer: Balancer,
        autocast: Callable[[], AbstractContextManager] | None = None,
        loss_scale: Callable[[Tensor], Tensor] | None = None,
        scale_value: Callable[[], float] | None = None,
        accum_steps: int = 1,
    ) -> None:
        if int(accum_steps) < 1:
            raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
        self.model = model
        self.balancer = balancer
        self.mode = mode_for(balancer)
        self.autocast = autocast or nullcontext
        self.loss_scale = loss_scale or (lambda x: x)  # fp16 GradScaler.scale, identity otherwise
        self.scale_value = scale_value or (lambda: 1.0)
        self.accum_steps = int(accum_steps)

    # ------------------------------------------------------------------ entry point
    def step(
        self,
        batches: Mapping[str, Batch | Sequence[Batch]],
        step: int,
        max_steps: int,
        task_metrics: dict[str, float],
    ) -> StepGradients:
        """``batches[task]`` is one batch (split into ``accum_steps`` chunks here) or a list of micro-batches."""
        micro = {t: self._micro(b) for t, b in batches.items()}
        if self.mode == "loss":
            return self._loss_mode(micro, step, max_steps, task_metrics)
        if self.mode == "representation":
            return self._representation_mode(micro, step, max_steps, task_metrics)
        return self._parameter_mode(micro, step, max_steps, task_metrics)

    def _micro(self, b: Batch | Sequence[Batch]) -> list[Batch]:
        if isinstance(b, Mapping):
            return split_batch(b, self.accum_steps) if self.accum_steps > 1 else [b]
        return list(b)

    @staticmethod
    def _fractions(mbs: Sequence[Batch]) -> list[float]:
        sizes = [batch_rows(mb) for mb in mbs]
        total = sum(sizes)
        return [n / total for n in sizes]

    def _input(self, tasks, losses, corrects, counts, step, max_steps, task_metrics, gramian=None):
        """The balancer's input (losses averaged, counts summed over ranks) and the accuracy counts."""
        stats = torch.stack(
            [
                torch.stack([x.detach().float() for x in losses]),
                torch.stack([c.float() for c in corrects]).to(losses[0].device),
                torch.tensor(counts, dtype=torch.float32, device=losses[0].device),
            ],
            dim=1,
        )
        if mdist.is_distributed():
            mdist.all_reduce_(stats, "sum")
            stats[:, 0] /= mdist.get_world_size()
        stats = stats.cpu()
        inp = BalanceInput(
            tasks=list(tasks),
            losses=stats[:, 0].contiguous(),
            step=step,
            max_steps=max_steps,
            gramian=gramian,
            task_metrics=dict(task_metrics),
        )
        correct = {t: (int(stats[i, 1]), int(stats[i, 2])) for i, t in enumerate(tasks)}
        return inp, correct

    # ------------------------------------------------------------------ loss weighting
    def _loss_mode(self, micro, step, max_steps, task_metrics) -> StepGradients:
        if all(len(m) == 1 for m in micro.values()):
            return self._loss_mode_single(micro, step, max_steps, task_metrics)
        params = [p for p in self.model.parameters() if p.requires_grad]
        base = _take_grads(params)
        tasks, losses, corrects, counts, stashes = [], [], [], [], []
        for task, mbs in micro.items():
            total, correct = None, None
            for mb, frac in zip(mbs, self._fractions(mbs), strict=True):
                with self.autocast():
                    loss, c = _task_loss(self.model, task, self.model.encode(mb), mb)
                self.loss_scale(loss * frac).backward()
                part = loss.detach() * frac
                total = part if total is None else total + part
                correct = c if correct is None else correct + c
            tasks.append(task)
            losses.append(total)
            corrects.append(correct)
            counts.append(sum(batch_rows(mb) for mb in mbs))
            stashes.append(_take_grads(params))
        inp, correct_d = self._input(tasks, losses, corrects, counts, step, max_steps, task_metrics)
        w = self.balancer.compute(inp)
        # the balancer's own parameters (e.g. uncertainty's log-variances) learn through sum(w * L) + reg,
        # with this rank's full-batch losses as constants: the same gradient the one-pass objective gives them
        objective = (w * torch.stack(losses).to(w.device)).sum()
        reg = self.balancer.regularizer()
        if reg is not None:
            objective = objective + reg.to(objective.device)
        if objective.requires_grad:
            self.loss_scale(objective).backward()
        _combine(params, stashes, [float(x) for x in w.detach().cpu().tolist()], base)
        return StepGradients(tasks, inp.losses, w.detach().cpu(), inp, correct_d)

    def _loss_mode_single(self, micro, step, max_steps, task_metrics) -> StepGradients:
        tasks, losses, corrects, counts = [], [], [], []
        with self.autocast():
            for task, (batch,) in micro.items():
                loss, c = _task_loss(self.model, task, self.model.encode(batch), batch)
                tasks.append(task)
                losses.append(loss)
                corrects.append(c)
                counts.append(batch_rows(batch))
        inp, correct_d = self._input(tasks, losses, corrects, counts, step, max_steps, task_metrics)
        w = self.balancer.compute(inp)
        w_dev = w.to(losses[0].device)
        objective = (w_dev * torch.stack(losses)).sum()
        reg = self.balancer.regularizer()
        if reg is not None:
            objective = objective + reg.to(objective.device)
        self.loss_scale(objective).backward()
        return StepGradients(tasks, inp.losses, w.detach().cpu(), inp, correct_d)

    # ------------------------------------------------------------------ representation gradients
    def _representation_mode(self, micro, step, max_steps, task_metrics) -> StepGradients:
        single = all(len(m) == 1 for m in micro.values())
        shared = self.model.shared_parameters()
        base = {} if single else _take_grads(shared)
        tasks, losses, corrects, counts = [], [], [], []
        vectors, reps, rep_grads, stashes = [], [], [], []
        for task, mbs in micro.items():
            total, correct, vec = None, None, None
            for mb, frac in zip(mbs, self._fractions(mbs), strict=True):
                with self.autocast():
                    z = self.model.encode(mb)
                    z_leaf = z.detach().requires_grad_(True)
                    loss, c = _task_loss(self.model, task, z_leaf, mb)
                # cheap backward through the head only: head params get their task's gradient
                self.loss_scale(loss * frac).backward()
                gz = z_leaf.grad
                v = gz.float().sum(0)
                vec = v if vec is None else vec + v
                part = loss.detach() * frac
                total = part if total is None else total + part
                correct = c if correct is None else correct + c
                if single:  # keep the graph: one weighted encoder backward once the weights are known
                    reps.append(z)
                    rep_grads.append(gz)
                else:  # backward now (this chunk's activations are freed), weight the task's sum later
                    torch.autograd.backward(z, gz)
            if not single:
                stashes.append(_take_grads(shared))
            tasks.append(task)
            losses.append(total)
            corrects.append(correct)
            counts.append(sum(batch_rows(mb) for mb in mbs))
            vectors.append(vec)
        vectors_t = torch.stack(vectors) / self.scale_value()  # [T, H], unscaled
        vectors_t = _all_reduce_mean(vectors_t)
        gramian = (vectors_t @ vectors_t.T).cpu().double()
        inp, correct_d = self._input(tasks, losses, corrects, counts, step, max_steps, task_metrics, gramian)
        w = self.balancer.compute(inp).detach()
        weights = [float(x) for x in w.cpu().tolist()]
        if single:
            grads = [g * wt for g, wt in zip(rep_grads, weights, strict=True)]
            torch.autograd.backward(reps, grads)
        else:
            _combine(shared, stashes, weights, base)
        return StepGradients(tasks, inp.losses, w.cpu(), inp, correct_d, gramian)

    # ------------------------------------------------------------------ full-parameter gradients
    def _parameter_mode(self, micro, step, max_steps, task_metrics) -> StepGradients:
        shared = self.model.shared_parameters()
        numel = sum(p.numel() for p in shared)
        device = shared[0].device
        jac = torch.zeros(len(micro), numel, device=device, dtype=torch.float32)
        tasks, losses, corrects, counts = [], [], [], []
        for i, (task, mbs) in enumerate(micro.items()):
            head_params = self.model.head_parameters(task)
            total, correct = None, None
            for mb, frac in zip(mbs, self._fractions(mbs), strict=True):
                with self.autocast():
                    loss, c = _task_loss(self.model, task, self.model.encode(mb), mb)
                grads = torch.autograd.grad(self.loss_scale(loss * frac), shared + head_params, allow_unused=True)
                offset = 0
                for p, g in zip(shared, grads[: len(shared)], strict=True):
                    n = p.numel()
                    if g is not None:
                        jac[i, offset : offset + n] += g.reshape(-1).float()
                    offset += n
                for p, g in zip(head_params, grads[len(shared) :], strict=True):
                    if g is not None:
                        p.grad = g if p.grad is None else p.grad + g
                part = loss.detach() * frac
                total = part if total is None else total + part
                correct = c if correct is None else correct + c
            tasks.append(task)
            losses.append(total)
            corrects.append(correct)
            counts.append(sum(batch_rows(mb) for mb in mbs))
        scale = self.scale_value()
        jac = _all_reduce_mean(jac)
        gramian = ((jac @ jac.T) / (scale * scale)).cpu().double()
        inp, correct_d = self._input(tasks, losses, corrects, counts, step, max_steps, task_metrics, gramian)
        w = self.balancer.compute(inp).detach()
        update = w.to(device=device, dtype=jac.dtype) @ jac  # still scaled like the losses
        offset = 0
        for p in shared:
            n = p.numel()
            g = update[offset : offset + n].view_as(p).to(p.dtype)
            p.grad = g if p.grad is None else p.grad + g
            offset += n
        return StepGradients(tasks, inp.losses, w.cpu(), inp, correct_d, gramian, shared_grads_reduced=True)

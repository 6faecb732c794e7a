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
  into a row of ``J``; ``G = J J^T``; the shared update is ``w @ J``. ``J`` lives in a buffer the
  engine keeps from step to step (no fresh ``T x P`` allocation per step, see ``_jacobian``).

Aggregators (``mtl.balancers.aggregator``: GradDrop, MoCo) and methods that read the task gradients
themselves (``needs_gradients``: ExcessMTL) get them as ``BalanceInput.gradients``: the ``T x H`` task
vectors on the representation, the (unscaled) Jacobian on the parameters. An aggregator's update is not a
weighting: on the representation it returns per-coordinate weights ``C`` and each task's representation
gradient is multiplied by its row of ``C`` before the one encoder backward (every micro-batch's graph is
then kept until ``C`` is known); on the parameters its update replaces ``w @ J``.

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
from torch import Tensor, nn

from mtl.balancers.aggregator.base import Aggregation, Aggregator
from mtl.balancers.base import BalanceInput, Balancer
from mtl.models.multitask import MultiTaskModel
from mtl.training import distributed as mdist
from mtl.training.tricks import PLAIN, Tricks, task_loss_from, task_reps

Batch = Mapping[str, Tensor]


@dataclass
class StepResult:
    """What one step produced (all detached, on the CPU except the Gramian): the step's record."""

    tasks: list[str]
    losses: Tensor  # [T] float32 (full-batch means; averaged over ranks)
    weights: Tensor  # [T] the balancer's weights
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # task -> (correct, rows), all ranks
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
    # the sequence columns only: multi-hot labels [B, C] stay whole even when C equals the padded length
    return {k: (v[:, lo:hi] if k != "labels" and v.dim() == 2 and v.shape[1] == length else v) for k, v in batch.items()}


def split_batch(batch: Batch, parts: int) -> list[dict[str, Tensor]]:
    """``parts`` row chunks of a batch (sizes differ by at most one; fewer if the batch is smaller)."""
    n = batch_rows(batch)
    parts = max(1, min(int(parts), n))
    if parts == 1:
        return [dict(batch)]
    pieces = {k: v.tensor_split(parts) for k, v in batch.items()}
    return [trim_padding({k: p[i] for k, p in pieces.items()}) for i in range(parts)]


def _task_loss(model: MultiTaskModel, task: str, batch: Batch, tricks: Tricks) -> tuple[Tensor, Tensor]:
    """The task's mean training loss (its configured loss; with R-Drop/FGM/PGD the combined objective of
    :mod:`mtl.training.tricks`) and the number of correct predictions (a tensor: no device sync here)."""
    return task_loss_from(model, task, task_reps(model, task, batch, tricks), batch, tricks)


def gramian_of(rows: Tensor) -> Tensor:
    """``rows @ rows.T`` as a float64 CPU tensor, accurate to float64 rounding of float32 products.

    Why not one float32 matmul: over millions of columns (the parameter-mode Jacobian) a single
    float32 product loses about 1e-3 of relative accuracy, and on a GPU with TF32 on (the default)
    every product does. MGDA, CAGrad or Nash-MTL decide on small differences between nearly parallel
    task gradients, so the Gramian sums column chunks in float64: on the CPU float32 chunk products
    (as fast as one matmul), on accelerators float64 products (TF32 never applies to them).
    """
    on_cpu = rows.device.type == "cpu"
    chunk = 1 << 16 if on_cpu else 1 << 22
    out = torch.zeros(rows.shape[0], rows.shape[0], dtype=torch.float64, device=rows.device)
    for start in range(0, rows.shape[1], chunk):
        block = rows[:, start : start + chunk]
        block = block.float() if on_cpu else block.double()
        out += (block @ block.T).double()
    return out.cpu()


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


class _Tally:
    """The step's per-task figures the balancer sees: full-batch loss, correct predictions and rows.

    Why one place: every mode must report the same full-batch values however a task's batch was cut
    into micro-batches (a chunk of ``frac`` of the rows carries ``frac`` of the mean loss).
    """

    def __init__(self) -> None:
        self.tasks: list[str] = []
        self.losses: list[Tensor | None] = []  # detached; None until the task's first micro-batch
        self.corrects: list[Tensor | None] = []
        self.counts: list[int] = []

    def open(self, task: str) -> None:
        """Start the next task; the following :meth:`add` calls are its micro-batches."""
        self.tasks.append(task)
        self.losses.append(None)
        self.corrects.append(None)
        self.counts.append(0)

    def add(self, loss: Tensor, correct: Tensor, frac: float, rows: int) -> None:
        """Add one micro-batch of the current task (``frac``: its share of the task's rows)."""
        part = loss.detach() * frac
        total, right = self.losses[-1], self.corrects[-1]
        self.losses[-1] = part if total is None else total + part
        self.corrects[-1] = correct if right is None else right + correct
        self.counts[-1] += rows


@torch.no_grad()
def _store_flat_grads(row: Tensor, params: Sequence[nn.Parameter], grads: Sequence[Tensor | None],
                      first: bool) -> None:
    """Write (``first``) or add the gradients of ``params`` into their slices of one Jacobian row.

    Why write rather than zero-fill and add: the row lives in a buffer reused across steps, so the first
    micro-batch must overwrite every slice (zeros where the task leaves a parameter unused).
    """
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = p.numel()
        dst = row[offset : offset + n]
        if g is not None:
            src = g.reshape(-1)
            if first:
                dst.copy_(src)  # converts to the row's float32
            else:
                dst.add_(src.float())
        elif first:
            dst.zero_()
        offset += n


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
        tricks: Tricks = PLAIN,
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
        self.tricks = tricks  # R-Drop / FGM / PGD: more encoder passes per task (mtl.training.tricks)
        self._jac_buffer: Tensor | None = None  # parameters mode: see _jacobian

    # ------------------------------------------------------------------ entry point
    def step(
        self,
        batches: Mapping[str, Batch | Sequence[Batch]],
        step: int,
        max_steps: int,
    ) -> StepResult:
        """``batches[task]`` is one batch (split into ``accum_steps`` chunks here) or a list of micro-batches."""
        micro = {t: self._micro(b) for t, b in batches.items()}
        if self.mode == "loss":
            return self._loss_mode(micro, step, max_steps)
        if self.mode == "representation":
            return self._representation_mode(micro, step, max_steps)
        return self._parameter_mode(micro, step, max_steps)

    def _micro(self, b: Batch | Sequence[Batch]) -> list[Batch]:
        if isinstance(b, Mapping):
            return split_batch(b, self.accum_steps) if self.accum_steps > 1 else [b]
        if not b:
            raise ValueError("a task's list of micro-batches is empty")
        return list(b)

    @staticmethod
    def _fractions(mbs: Sequence[Batch]) -> list[float]:
        sizes = [batch_rows(mb) for mb in mbs]
        total = sum(sizes)
        return [n / total for n in sizes]

    def _input(self, tally: _Tally, step: int, max_steps: int, gramian: Tensor | None = None,
               gradients: Tensor | None = None) -> BalanceInput:
        """The balancer's input: losses averaged and (correct, rows) counts summed over ranks (the task
        gradients only for a balancer that reads them)."""
        tasks, losses, corrects, counts = tally.tasks, tally.losses, tally.corrects, tally.counts
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
            counts={t: (int(stats[i, 1]), int(stats[i, 2])) for i, t in enumerate(tasks)},
            gradients=gradients if self.balancer.needs_gradients else None,
        )
        return inp

    def _balance(self, inp: BalanceInput) -> tuple[Tensor, Aggregation | None]:
        """The step's weights (detached); for an aggregator its summary weights and the aggregation."""
        if isinstance(self.balancer, Aggregator):
            agg = self.balancer.aggregate(inp)
            return agg.weights, agg
        return self.balancer.compute(inp).detach(), None

    # ------------------------------------------------------------------ loss weighting
    def _loss_mode(self, micro, step, max_steps) -> StepResult:
        if all(len(m) == 1 for m in micro.values()):
            return self._loss_mode_single(micro, step, max_steps)
        params = [p for p in self.model.parameters() if p.requires_grad]
        base = _take_grads(params)
        tally, stashes = _Tally(), []
        for task, mbs in micro.items():
            tally.open(task)
            for mb, frac in zip(mbs, self._fractions(mbs), strict=True):
                with self.autocast():
                    loss, c = _task_loss(self.model, task, mb, self.tricks)
                self.loss_scale(loss * frac).backward()
                tally.add(loss, c, frac, batch_rows(mb))
            stashes.append(_take_grads(params))
        inp = self._input(tally, step, max_steps)
        w = self.balancer.compute(inp)
        # the balancer's own parameters (e.g. uncertainty's log-variances) learn through sum(w * L) + reg,
        # with this rank's full-batch losses as constants: the same gradient the one-pass objective gives them
        objective = (w * torch.stack(tally.losses).to(w.device)).sum()
        reg = self.balancer.regularizer()
        if reg is not None:
            objective = objective + reg.to(objective.device)
        if objective.requires_grad:
            self.loss_scale(objective).backward()
        _combine(params, stashes, [float(x) for x in w.detach().cpu().tolist()], base)
        return StepResult(tally.tasks, inp.losses, w.detach().cpu(), inp.counts)

    def _loss_mode_single(self, micro, step, max_steps) -> StepResult:
        tally, losses = _Tally(), []  # losses keep their graphs: one backward of the weighted sum
        with self.autocast():
            for task, (batch,) in micro.items():
                loss, c = _task_loss(self.model, task, batch, self.tricks)
                tally.open(task)
                tally.add(loss, c, 1.0, batch_rows(batch))
                losses.append(loss)
        inp = self._input(tally, step, max_steps)
        w = self.balancer.compute(inp)
        w_dev = w.to(losses[0].device)
        objective = (w_dev * torch.stack(losses)).sum()
        reg = self.balancer.regularizer()
        if reg is not None:
            objective = objective + reg.to(objective.device)
        self.loss_scale(objective).backward()
        return StepResult(tally.tasks, inp.losses, w.detach().cpu(), inp.counts)

    # ------------------------------------------------------------------ representation gradients
    def _representation_mode(self, micro, step, max_steps) -> StepResult:
        # an aggregator's per-coordinate weights act before the encoder backward: keep every graph until known
        single = all(len(m) == 1 for m in micro.values()) or isinstance(self.balancer, Aggregator)
        shared = self.model.shared_parameters()
        base = {} if single else _take_grads(shared)
        tally = _Tally()
        vectors, reps, rep_grads, stashes = [], [], [], []
        for task, mbs in micro.items():
            tally.open(task)
            vec = None
            for mb, frac in zip(mbs, self._fractions(mbs), strict=True):
                with self.autocast():
                    zs = task_reps(self.model, task, mb, self.tricks)  # one per encoder pass
                    leaves = [z.detach().requires_grad_(True) for z in zs]
                    loss, c = task_loss_from(self.model, task, leaves, mb, self.tricks)
                # cheap backward through the head only: head params get their task's gradient
                self.loss_scale(loss * frac).backward()
                gzs = [leaf.grad for leaf in leaves]
                v = sum(gz.float().sum(0) for gz in gzs)  # the task's gradient on its representations
                vec = v if vec is None else vec + v
                tally.add(loss, c, frac, batch_rows(mb))
                if single:  # keep the graph: one weighted encoder backward once the weights are known
                    reps.append(zs)
                    rep_grads.append((len(vectors), gzs))  # (the task's row, its gradients)
                else:  # backward now (this chunk's activations are freed), weight the task's sum later
                    torch.autograd.backward(zs, gzs)
            if not single:
                stashes.append(_take_grads(shared))
            vectors.append(vec)
        vectors_t = torch.stack(vectors) / self.scale_value()  # [T, H], unscaled
        vectors_t = mdist.all_reduce_(vectors_t, "mean")
        gramian = gramian_of(vectors_t)
        inp = self._input(tally, step, max_steps, gramian, vectors_t)
        w, agg = self._balance(inp)
        weights = [float(x) for x in w.cpu().tolist()]
        if single:
            flat_reps = [z for zs in reps for z in zs]
            if agg is None:
                grads = [g * weights[t] for t, gzs in rep_grads for g in gzs]
            elif agg.coefficients is None:
                raise ValueError(f"balancer {self.balancer.registry_name!r} gave no per-coordinate weights: "
                                 "it cannot run on the representation")
            else:  # an aggregator: its row of per-coordinate weights, broadcast over the task's batch rows
                grads = [g * agg.coefficients[t].to(g.dtype) for t, gzs in rep_grads for g in gzs]
            torch.autograd.backward(flat_reps, grads)
        else:
            _combine(shared, stashes, weights, base)
        return StepResult(tally.tasks, inp.losses, w.cpu(), inp.counts, gramian)

    # ------------------------------------------------------------------ full-parameter gradients
    def _parameter_mode(self, micro, step, max_steps) -> StepResult:
        shared = self.model.shared_parameters()
        numel = sum(p.numel() for p in shared)
        device = shared[0].device
        jac = self._jacobian(len(micro), numel, device)
        tally = _Tally()
        for i, (task, mbs) in enumerate(micro.items()):
            head_params = self.model.head_parameters(task)
            tally.open(task)
            for j, (mb, frac) in enumerate(zip(mbs, self._fractions(mbs), strict=True)):
                with self.autocast():
                    loss, c = _task_loss(self.model, task, mb, self.tricks)
                grads = torch.autograd.grad(self.loss_scale(loss * frac), shared + head_params, allow_unused=True)
                _store_flat_grads(jac[i], shared, grads[: len(shared)], first=j == 0)
                for p, g in zip(head_params, grads[len(shared) :], strict=True):
                    if g is not None:
                        p.grad = g if p.grad is None else p.grad + g
                tally.add(loss, c, frac, batch_rows(mb))
        scale = self.scale_value()
        jac = mdist.all_reduce_(jac, "mean")
        gramian = gramian_of(jac) / (scale * scale)
        unscale = self.balancer.needs_gradients and scale != 1.0
        if unscale:
            jac.div_(scale)  # the balancer reads true gradients (the buffer is rewritten next step)
        inp = self._input(tally, step, max_steps, gramian, jac)
        w, agg = self._balance(inp)
        update = w.to(device=device, dtype=jac.dtype) @ jac if agg is None else agg.combined(jac)  # loss scale
        if unscale:
            update = update * scale  # back to the loss scale, like the head gradients
        offset = 0
        for p in shared:
            n = p.numel()
            g = update[offset : offset + n].view_as(p).to(p.dtype)
            p.grad = g if p.grad is None else p.grad + g
            offset += n
        return StepResult(tally.tasks, inp.losses, w.cpu(), inp.counts, gramian, shared_grads_reduced=True)

    def _jacobian(self, rows: int, numel: int, device: torch.device) -> Tensor:
        """A ``rows x numel`` float32 Jacobian, a view of a buffer kept from step to step.

        Why: on a CPU a fresh ``T x P`` tensor (258 MB for e5-small with frozen embeddings) is a new
        memory mapping every step, and its page faults cost about as much as filling it. The buffer keeps
        its largest row count (the tasks of a step vary with the sampler) and is replaced when the shared
        parameters change size (freezing) or device. It holds no values between steps: every row is
        overwritten (:func:`_store_flat_grads`) before it is read, and nothing the step returns or leaves
        in ``.grad`` is a view of it (the Gramian and the update ``w @ J`` are new tensors).
        """
        buf = self._jac_buffer
        if buf is None or buf.shape[0] < rows or buf.shape[1] != numel or buf.device != device:
            self._jac_buffer = buf = None  # free the old one before allocating its successor
            buf = self._jac_buffer = torch.empty(rows, numel, device=device, dtype=torch.float32)
        return buf[:rows]

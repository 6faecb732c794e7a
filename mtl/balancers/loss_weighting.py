"""Loss-weighting balancers: task weights from the losses (and their history), a KPI, or noise.

Weight of task i as implemented (details and deviations in each class's docstring)::

    log_loss              1 / max(L_i, eps)                       (minimise sum_i log L_i)
    initial_loss          1 / max(L_i(0), eps)                    (L_i(0): the task's first seen loss)
    grad_norm_normalized  1 / max(sqrt(G_ii), eps)                (unit-norm task gradients; Gramian)
    uncertainty           exp(-s_i), objective sum_i exp(-s_i) L_i + c s_i        (Kendall et al. 2018)
    gradnorm              learnt w_i, dL_grad/dw into w.grad      (Chen et al. 2018; Gramian)
    dwa                   K exp(r_i/T) / sum_j exp(r_j/T), r_i a ratio of window means  (Liu et al. 2019)
    dtp                   -(1 - k_i)^gamma log k_i, k_i the running train accuracy    (Guo et al. 2018)
    rlw                   T softmax(z)_i, z ~ N(0, I_T) each step (Lin et al. 2021/22)
    famo                  (z_i / L_i) / sum_j (z_j / L_j), z = softmax(xi)           (Liu et al. 2023)

Conventions shared by the stateful methods:

* Per-task state is indexed by position in ``task_names`` (``self.index(inp.tasks)``), so a
  step that carries a strict subset of the tasks (one-task-per-step samplers) reads and updates
  only its own tasks' entries.
* All state lives in buffers (or ``extra_state`` for the RNG), so ``state_dict()`` round-trips.
* The trainer calls ``compute`` once per optimiser step with full-batch losses, however the batch
  was split into micro-batches. A caller may still call it more than once with the same
  ``inp.step`` (e.g. per chunk); each method says below what it does then.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.balancers.base import BalanceInput, Balancer, register_balancer
from mtl.balancers.gramian import gradient_norms

# ---------------------------------------------------------------------------------------- helpers


def _losses(inp: BalanceInput, like: Tensor | None = None) -> Tensor:
    """The step's losses as a detached float32 tensor (on ``like``'s device when given)."""
    out = inp.losses.detach().to(torch.float32)
    return out.to(like.device) if like is not None else out


def _record_first(first: Tensor, seen: Tensor, idx: Tensor, losses: Tensor) -> None:
    """Store ``losses`` as the first-seen loss of the tasks at ``idx`` that have none yet.

    Non-finite losses are not recorded (the trainer skips such a step; the next finite loss counts).
    """
    new = ~seen[idx] & torch.isfinite(losses)
    if bool(new.any()):
        first[idx[new]] = losses[new]
        seen[idx[new]] = True


def _gramian_norms(inp: BalanceInput) -> Tensor:
    """``||g_i|| = sqrt(G_ii)`` from the Gramian (float32; tiny negative round-off clipped)."""
    assert inp.gramian is not None
    return gradient_norms(inp.gramian.detach().to(torch.float32))


# ---------------------------------------------------------------------------------- stateless ones


@register_balancer("log_loss")
class LogLoss(Balancer):
    """Minimise ``sum_i log L_i``: its gradient is ``sum_i grad L_i / L_i``, so ``w_i = 1/L_i``.

    The weight is a constant in the backward (gradient stopped), so ``w_i * L_i`` is 1 in value and
    the update is ``sum_i grad(L_i) / L_i``: multiplying a loss by a constant changes nothing
    (scale invariance; cf. "log loss" in Kurin et al. 2022, "In Defense of the Unitary
    Scalarization"; Liu et al. 2023, FAMO, Sec. 3). ``eps`` guards a zero loss.
    """

    def __init__(self, task_names: Sequence[str], eps: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(task_names, **kwargs)
        self.eps = float(eps)

    def weights(self, inp: BalanceInput) -> Tensor:
        self.index(inp.tasks)  # reject tasks this balancer was not built for
        return 1.0 / _losses(inp).clamp_min(self.eps)


@register_balancer("grad_norm_normalized")
class GradNormNormalized(Balancer):
    """Each task gradient rescaled to unit norm before summing: ``w_i = 1 / ||g_i||``.

    Why: no task dominates the shared update by the mere size of its gradient; scaling a loss
    (hence its gradient) by ``c > 0`` leaves ``w_i g_i`` unchanged, and a constant shift of a loss
    does not change its gradient at all. This is GradNorm's "equal gradient magnitudes" target
    with alpha = 0 solved in closed form, one step at a time. ``||g_i|| = sqrt(G_ii)`` from the
    Gramian; ``eps`` guards a zero gradient.
    """

    needs_gramian = True

    def __init__(self, task_names: Sequence[str], eps: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(task_names, **kwargs)
        self.eps = float(eps)

    def weights(self, inp: BalanceInput) -> Tensor:
        self.index(inp.tasks)  # reject tasks this balancer was not built for
        return 1.0 / _gramian_norms(inp).clamp_min(self.eps)


@register_balancer("dtp")
class DynamicTaskPrioritization(Balancer):
    """Dynamic task prioritisation (Guo et al., ECCV 2018): ``w_i = -(1 - k_i)^gamma log k_i``.

    A focal-loss-like weight on the task KPI ``k_i`` (here the trainer's running train accuracy,
    an EMA in [0, 1], clipped to ``[eps, 1 - eps]``): tasks the model is bad at get more weight,
    ``gamma`` sharpens that. Only the task-level part of the paper (no example-level focal loss).
    A task without a KPI yet (none in ``inp.task_metrics``) gets weight 1. Note the weights are
    below 1 for any accuracy above ~0.43 (gamma=1), i.e. a smaller effective learning rate than
    ``equal``, as in the paper.
    """

    def __init__(
        self, task_names: Sequence[str], gamma: float = 1.0, eps: float = 1e-3, **kwargs: Any
    ) -> None:
        super().__init__(task_names, **kwargs)
        if not 0.0 < eps < 0.5:
            raise ValueError(f"dtp eps must be in (0, 0.5), got {eps}")
        self.gamma = float(gamma)
        self.eps = float(eps)

    def weights(self, inp: BalanceInput) -> Tensor:
        self.index(inp.tasks)  # reject tasks this balancer was not built for
        out = []
        for task in inp.tasks:
            kpi = inp.task_metrics.get(task)
            if kpi is None or not math.isfinite(float(kpi)):
                out.append(1.0)
                continue
            k = min(max(float(kpi), self.eps), 1.0 - self.eps)
            out.append(-((1.0 - k) ** self.gamma) * math.log(k))
        return torch.tensor(out, dtype=torch.float32)


# --------------------------------------------------------------------------------- with history


@register_balancer("initial_loss")
class InitialLoss(Balancer):
    """Each loss divided by its initial value: ``w_i = 1 / L_i(0)`` (loss ratio ``L_i / L_i(0)``).

    Why: puts every task on the same starting scale, like GradNorm's inverse training rate
    (Chen et al. 2018) without the learning. ``L_i(0)`` is the task's loss at the first call
    that contains it (the first call of a step), per task, kept in a buffer.
    Scale invariant: ``c L_i`` gives ``c L_i(0)``, so ``w_i * c L_i`` is unchanged.
    """

    def __init__(self, task_names: Sequence[str], eps: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(task_names, **kwargs)
        self.eps = float(eps)
        n = len(self.task_names)
        self.register_buffer("initial_losses", torch.ones(n))
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool))

    def weights(self, inp: BalanceInput) -> Tensor:
        idx = self.index(inp.tasks).to(self.initial_losses.device)
        _record_first(self.initial_losses, self.seen, idx, _losses(inp, self.initial_losses))
        return 1.0 / self.initial_losses[idx].clamp_min(self.eps)


@register_balancer("uncertainty")
class Uncertainty(Balancer):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Learnable ``s_i = log sigma_i^2`` (init 0). Objective, as implemented::

        sum_i exp(-s_i) L_i + c * s_i        (c = ``regularizer_coef``, default 1)

    Kendall's classification likelihood gives ``(1/sigma^2) L + log sigma`` =
    ``exp(-s) L + s/2`` (c = 0.5); the regression form ``(1/(2 sigma^2)) L + log sigma`` is the
    same up to a factor 2. We default to c = 1 (the form most re-implementations train), whose
    optimum for fixed ``L`` is ``d/ds = -exp(-s) L + c = 0`` => ``exp(-s*) = c / L``: with c = 1
    the weight settles at ``1/L``, i.e. the ``log_loss`` weight, and ``w_i L_i -> 1``. Setting
    c = 0.5 reproduces the paper's classification form (``exp(-s*) = 1/(2L)``).

    ``weights`` returns ``exp(-s_i)`` *with* autograd history to ``s`` (the trainer's weighted
    loss then trains ``s``); ``regularizer`` returns ``c * sum s_i`` over the tasks of the last
    ``weights`` call, so with one task per step only that task's ``s`` is regularised (and only
    it gets a gradient). ``lr`` gives ``s`` its own learning rate in the trainer's optimiser
    (``None``: the encoder's lr); at fine-tuning lrs (~2e-5) ``s`` would barely move.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        lr: float | None = None,
        regularizer_coef: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_names, **kwargs)
        if regularizer_coef <= 0:
            raise ValueError(f"uncertainty regularizer_coef must be > 0, got {regularizer_coef}")
        self.lr = lr
        self.regularizer_coef = float(regularizer_coef)
        self.log_vars = nn.Parameter(torch.zeros(len(self.task_names)))
        self._last_idx: Tensor | None = None

    def weights(self, inp: BalanceInput) -> Tensor:
        idx = self.index(inp.tasks).to(self.log_vars.device)
        self._last_idx = idx
        return torch.exp(-self.log_vars[idx])

    def regularizer(self) -> Tensor | None:
        if self._last_idx is None:
            return None
        return self.regularizer_coef * self.log_vars[self._last_idx].sum()

    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        group: dict[str, Any] = {"params": [self.log_vars], "weight_decay": 0.0}
        if self.lr is not None:
            group["lr"] = float(self.lr)
        return [group]

    def log_values(self) -> dict[str, float]:
        out = super().log_values()
        s = self.log_vars.detach().cpu()
        for t, v in zip(self.task_names, s.tolist(), strict=True):
            out[f"uncertainty/sigma/{t}"] = math.exp(0.5 * v)
        return out


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
    ``before_optimizer_step`` adds ``dL_grad/dw`` to ``w.grad`` (so the trainer's optimiser steps
    ``w`` in its own group at lr ``lr``; with a GradScaler, unscale before this hook);
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
        **kwargs: Any,
    ) -> None:
        super().__init__(task_names, **kwargs)
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
        _record_first(self.initial_losses, self.seen, idx, _losses(inp, self.initial_losses))
        return self.task_weights.detach()[idx].clone()

    def gradnorm_grad(self, inp: BalanceInput) -> tuple[Tensor, Tensor, float]:
        """``(dL_grad/dw for the step's tasks, the targets, L_grad)``; no state is changed."""
        if inp.gramian is None:
            raise ValueError("gradnorm needs the Gramian of task gradients")
        idx = self.index(inp.tasks).to(self.initial_losses.device)
        norms = _gramian_norms(inp).to(self.initial_losses.device)
        w = self.task_weights.detach()[idx]
        g_w = w * norms
        ratio = _losses(inp, self.initial_losses) / self.initial_losses[idx].clamp_min(self.eps)
        inv_rate = ratio / ratio.mean().clamp_min(self.eps)
        target = g_w.mean() * inv_rate.pow(self.alpha)
        diff = g_w - target
        return torch.sign(diff) * norms, target, float(diff.abs().sum())

    def before_optimizer_step(self, inp: BalanceInput) -> None:
        grad_sub, _, loss = self.gradnorm_grad(inp)
        idx = self.index(inp.tasks).to(self.task_weights.device)
        grad = torch.zeros_like(self.task_weights)
        grad[idx] = grad_sub.to(grad.dtype)
        p = self.task_weights
        p.grad = grad if p.grad is None else p.grad + grad
        self.last_gradnorm_loss = loss

    @torch.no_grad()
    def after_optimizer_step(self, inp: BalanceInput) -> None:
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


@register_balancer("dwa")
class DynamicWeightAverage(Balancer):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, "End-to-End Multi-Task Learning
    with Attention"): ``w_i = K exp(r_i/T) / sum_j exp(r_j/T)``, ``r_i = L_i(t-1) / L_i(t-2)``.

    The paper's ``L(t-1), L(t-2)`` are the average losses of the last two epochs. We have steps,
    not epochs: steps are cut into windows of ``window`` optimiser steps (window k = steps
    ``[k*window, (k+1)*window)``), every loss a task reports in a window (every call) is
    averaged, and ``r_i`` is the ratio of the task's last two completed window means. A task
    absent from a whole window (rare with one-task sampling) keeps its previous two means.
    While no task has two completed windows, all weights are 1 (the paper's first two epochs).
    When only some tasks have (tasks H), those get ``|H| exp(r_i/T) / sum_{j in H} exp(r_j/T)`` and
    the others 1 (this is the paper's rule whenever all or none have history). The softmax runs
    over all tasks with history, not only those in the step, so the weights of a one-task step
    are the same as that task's weight in an all-task step.
    """

    def __init__(
        self, task_names: Sequence[str], temperature: float = 2.0, window: int = 50, **kwargs: Any
    ) -> None:
        super().__init__(task_names, **kwargs)
        if temperature <= 0:
            raise ValueError(f"dwa temperature must be > 0, got {temperature}")
        if int(window) < 1:
            raise ValueError(f"dwa window must be >= 1, got {window}")
        n = len(self.task_names)
        self.temperature = float(temperature)
        self.window = int(window)
        self.register_buffer("current_window", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("window_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("window_count", torch.zeros(n, dtype=torch.long))
        # prev_means[:, 0] is the mean of window t-2, prev_means[:, 1] that of window t-1
        self.register_buffer("prev_means", torch.zeros(n, 2, dtype=torch.float64))
        self.register_buffer("completed", torch.zeros(n, dtype=torch.long))  # non-empty windows, capped at 2

    def _roll(self, step: int) -> None:
        """Close the current window if ``step`` lies in a later one."""
        k = step // self.window
        if k == int(self.current_window):
            return
        if int(self.current_window) >= 0:
            done = self.window_count > 0
            if bool(done.any()):
                means = self.window_sum[done] / self.window_count[done]
                self.prev_means[done, 0] = self.prev_means[done, 1]
                self.prev_means[done, 1] = means
                self.completed[done] = (self.completed[done] + 1).clamp_max(2)
        self.window_sum.zero_()
        self.window_count.zero_()
        self.current_window.fill_(k)

    def all_weights(self) -> Tensor:
        """Weights of every task (in ``task_names`` order) from the completed windows."""
        out = torch.ones(len(self.task_names), dtype=torch.float64, device=self.prev_means.device)
        ready = self.completed >= 2
        if bool(ready.any()):
            ratio = self.prev_means[ready, 1] / self.prev_means[ready, 0].clamp_min(1e-12)
            out[ready] = int(ready.sum()) * torch.softmax(ratio / self.temperature, dim=0)
        return out

    def weights(self, inp: BalanceInput) -> Tensor:
        self._roll(inp.step)
        idx = self.index(inp.tasks).to(self.window_sum.device)
        w = self.all_weights()[idx].to(torch.float32)
        losses = _losses(inp, self.window_sum).to(torch.float64)
        ok = torch.isfinite(losses)  # a non-finite loss (a skipped step) must not poison the window
        self.window_sum.index_add_(0, idx[ok], losses[ok])
        self.window_count.index_add_(0, idx[ok], torch.ones_like(idx[ok]))
        return w


@register_balancer("rlw")
class RandomLossWeighting(Balancer):
    """Random loss weighting (Lin et al., TMLR 2022, "Reasonable Effectiveness of Random
    Weighting"): ``w = T * softmax(z)``, ``z ~ N(0, I_T)`` drawn afresh each optimiser step.

    The paper's weights sum to 1; we scale by the number of tasks ``T`` so they sum to ``T`` and
    average 1 per task, i.e. the same overall scale as ``equal`` (the paper's scale would divide
    the effective lr by T). ``z`` is drawn for *all* tasks and the step's tasks read their entries,
    so with one task per step its weight is still random (mean 1); with all tasks the weights sum
    to ``T``. The draw is cached per ``inp.step`` (calls within one step share it). The
    generator is seeded with ``seed`` and its state is checkpointed (``extra_state``).
    """

    def __init__(self, task_names: Sequence[str], seed: int = 0, **kwargs: Any) -> None:
        super().__init__(task_names, **kwargs)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.register_buffer("cached_step", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("cached_z", torch.zeros(len(self.task_names)))

    def weights(self, inp: BalanceInput) -> Tensor:
        if int(self.cached_step) != inp.step:
            z = torch.randn(len(self.task_names), generator=self.generator)
            self.cached_z.copy_(z)
            self.cached_step.fill_(inp.step)
        w = len(self.task_names) * torch.softmax(self.cached_z.cpu(), dim=0)
        return w[self.index(inp.tasks)]

    def get_extra_state(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator_state": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator_state"])


@register_balancer("famo")
class FAMO(Balancer):
    """FAMO: Fast Adaptive Multitask Optimization (Liu, Liu, Jin, Stone & Liu, NeurIPS 2023).

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
        log_l = torch.log(_losses(inp, self.logits) + self.eps)
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

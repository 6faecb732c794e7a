"""The balancer contract and registry: one "weights" interface for loss-level and Gramian-level methods.

Every balancer maps the step's per-task information to one weight per task; the update is then the
weighted sum (of losses, or equivalently of task gradients). Loss-level methods
(:mod:`mtl.balancers.loss`) look at the losses (and their own history). Gramian-level methods
(:mod:`mtl.balancers.gramian`: MGDA, PCGrad, CAGrad, IMTL, Nash-MTL, GradNorm, ...) look at the
``T x T`` Gramian ``G[i, j] = <g_i, g_j>`` of the task gradients, which is all they need (cf. torchjd's
Weighting/Aggregator split). The trainer forms the Gramian either on all shared parameters or on the
shared representation (MGDA-UB's trick), so the same weighting code serves both places.

One optimisation step, as the trainer drives it::

    w = balancer.compute(inp)           # inp: BalanceInput of this step; remembered as balancer.last_input
    (w * losses).sum() + balancer.regularizer()  -> backward
    balancer.before_optimizer_step()    # only on steps whose update is applied
    optimizer.step()
    balancer.after_optimizer_step()     # idem (a skipped non-finite step calls neither hook)

Weightings and aggregators (torchjd's split). Everything above is a *weighting*: the update is
``sum_t w_t g_t``. A method may also read the task gradients themselves (``needs_gradients``: the
``T x D`` matrix ``BalanceInput.gradients``, on the shared representation or on all shared parameters),
either to keep per-coordinate statistics and still return weights (``excess_mtl``), or because its
update is not a weighting of this step's gradients at all: an *aggregator*
(:class:`mtl.balancers.aggregator.base.Aggregator`: ``graddrop``, ``moco``), which returns the combined
update (or per-coordinate weights) instead of ``T`` weights. The engine still does one backward per
task graph either way.

Options: :func:`balancer_options` lists what a class's constructor accepts (walking ``**kwargs`` up to
:class:`Balancer`) and :func:`mtl.balancers.build_balancer` names a misspelled one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from mtl.registry import Registry, constructor_options

GradientSource = Literal["representation", "parameters"]


@dataclass
class BalanceInput:
    """What a balancer sees at one optimisation step.

    ``tasks`` lists the tasks that have a batch this step, in the order of ``losses`` and of
    the Gramian's rows; it is a subset of the balancer's ``task_names`` (one task with a
    one-task-per-step sampler, all of them with ``all_tasks``).
    """

    tasks: list[str]
    losses: Tensor  # [len(tasks)], detached per-task mean losses (float32)
    step: int
    max_steps: int
    gramian: Tensor | None = None  # [len(tasks), len(tasks)] when ``needs_gramian``
    #: for each task in ``tasks``: (correct predictions, rows) of this step's batches, summed over ranks
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: [len(tasks), D] the task gradients themselves (rows in the order of ``tasks``, float32, true scale,
    #: on the model's device) when ``needs_gradients``: on the representation the task vectors the Gramian
    #: is made of (``D`` = hidden size), on the parameters the Jacobian (``D`` = shared parameters). Valid
    #: during ``compute`` only: it may be a view of a buffer the engine reuses next step (copy what you keep).
    gradients: Tensor | None = None


class Balancer(nn.Module):
    """Base class. Subclasses implement :meth:`weights`.

    Contract:
    - ``weights`` returns a float tensor of shape ``[len(inp.tasks)]``. It must be detached
      from the model graph; it may carry autograd history through the balancer's *own*
      ``nn.Parameter``s (uncertainty weighting learns them through the weighted loss).
    - ``compute`` (what the trainer calls) validates the weights and keeps the step's input in
      ``last_input``, so the hooks need no arguments.
    - ``regularizer`` is added to the objective (e.g. uncertainty's log-sigma terms).
    - Learnable parameters are ordinary ``nn.Parameter``s: the trainer gives them to the
      optimiser (see ``optimizer_param_groups``) and saves ``state_dict()`` in checkpoints.
      Non-parameter state belongs in buffers or in ``extra_state`` so it is checkpointed too.
    - ``before_optimizer_step()`` / ``after_optimizer_step()`` are hooks for methods that need
      them (GradNorm puts its weights' gradient in place before the step and renormalises them
      after it; DTP updates its running accuracy after it). The trainer calls them only on steps
      whose update is applied, after ``compute`` of that step; they read ``self.last_input``.
    """

    registry_name: ClassVar[str] = ""
    #: True for Gramian-level methods: the trainer must compute the Gramian of task gradients,
    #: which needs one batch of every task in the same step.
    needs_gramian: ClassVar[bool] = False
    #: True when the method reads the task gradients themselves (``BalanceInput.gradients``), not only
    #: their Gramian; it is a gradient-level method, so ``needs_gramian`` is True as well.
    needs_gradients: ClassVar[bool] = False
    #: Where Gramian-level methods take task gradients when ``source`` is ``None``.
    default_source: ClassVar[GradientSource] = "representation"
    #: True when the constructor itself takes arbitrary extra keyword options (torchjd's aggregator
    #: arguments), so :func:`mtl.balancers.build_balancer` cannot list them.
    open_options: ClassVar[bool] = False

    def __init__(self, task_names: Sequence[str], source: GradientSource | None = None) -> None:
        super().__init__()
        if not task_names:
            raise ValueError("a balancer needs at least one task")
        self.task_names = list(task_names)
        chosen = source or self.default_source
        if chosen not in ("representation", "parameters"):
            raise ValueError(f"balancer source must be 'representation' or 'parameters', got {chosen!r}")
        self.source: GradientSource = chosen
        self.last_weights: dict[str, float] = {}
        self.last_input: BalanceInput | None = None

    # ------------------------------------------------------------------ helpers
    def index(self, tasks: Sequence[str]) -> Tensor:
        """Positions of ``tasks`` in ``self.task_names`` (for per-task state tensors)."""
        try:
            return torch.tensor([self.task_names.index(t) for t in tasks], dtype=torch.long)
        except ValueError as exc:
            raise KeyError(f"balancer got a task it was not built for: {exc}") from None

    # ------------------------------------------------------------------ contract
    def weights(self, inp: BalanceInput) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def regularizer(self) -> Tensor | None:
        return None

    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the trainer's optimiser (empty when nothing is learnt)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": 0.0}] if params else []

    def before_optimizer_step(self) -> None:
        """Called before the optimiser applies this step's update (``self.last_input`` is the step's input)."""
        return None

    def after_optimizer_step(self) -> None:
        """Called after the optimiser applied this step's update (``self.last_input`` is the step's input)."""
        return None

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging each step (the weights in force by default)."""
        return {f"weight/{k}": v for k, v in self.last_weights.items()}

    def compute(self, inp: BalanceInput) -> Tensor:
        """Validate and record the weights for ``inp`` (kept as ``last_input``); what the trainer calls."""
        if self.needs_gramian and inp.gramian is None:
            raise ValueError(f"balancer {self.registry_name!r} needs the Gramian of task gradients")
        if self.needs_gradients and inp.gradients is None:
            raise ValueError(f"balancer {self.registry_name!r} needs the task gradients (BalanceInput.gradients)")
        self.last_input = inp
        w = self.weights(inp)
        if w.shape != (len(inp.tasks),):
            raise ValueError(
                f"balancer {self.registry_name!r} returned weights of shape {tuple(w.shape)}, "
                f"expected ({len(inp.tasks)},)"
            )
        self.last_weights = {t: float(x) for t, x in zip(inp.tasks, w.detach().cpu().tolist(), strict=True)}
        return w


def balancer_options(cls: type[Balancer]) -> dict[str, Any]:
    """The keyword options ``cls(task_names, **options)`` accepts, with their defaults.

    Walks the constructors up the class hierarchy while they forward ``**kwargs`` (a loss-level
    method passes ``source`` on to :class:`Balancer`). A required option maps to
    ``inspect.Parameter.empty``. ``source`` left at ``None`` means the class's ``default_source``.
    """
    return constructor_options(cls, supplied=("task_names",))


BALANCERS: Registry[Balancer] = Registry("balancer")
register_balancer = BALANCERS.register

"""``uncertainty``: homoscedastic-uncertainty weighting with learnt log-variances.

Paper: A. Kendall, Y. Gal & R. Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for
Scene Geometry and Semantics", CVPR 2018. https://arxiv.org/abs/1705.07115

Formula (as implemented), ``s_i = log sigma_i^2`` learnt, initialised at 0::

    objective = sum_i exp(-s_i) L_i + c * s_i          w_i = exp(-s_i),  c = ``regularizer_coef``

For fixed ``L`` the optimum is ``d/ds = -exp(-s) L + c = 0`` => ``exp(-s*) = c / L``: with ``c = 1`` the
weight settles at ``1/L`` (the ``log_loss`` weight) and ``w_i L_i -> 1``.

Knobs:
    ``lr`` (0.01): the log-variances' own learning rate in the trainer's optimiser (constant; ``None``:
    the encoder's lr). At fine-tuning lrs (~2e-5) ``s`` would barely move.
    ``regularizer_coef`` (1.0): ``c`` above; optimum ``exp(-s) = c / L``. 0.5 is the paper's
    classification form.

Deviations from the official code (none was released; compared with the paper):

* ``c = 1`` by default. Kendall's classification likelihood gives ``(1/sigma^2) L + log sigma`` =
  ``exp(-s) L + s/2`` (``c = 0.5``); the regression form ``(1/(2 sigma^2)) L + log sigma`` is the same up
  to a factor 2. We default to the form most re-implementations train; ``regularizer_coef=0.5``
  reproduces the paper's classification form.
* With one task per step only that task's ``s`` is regularised (and only it gets a gradient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtl.balancers.base import BalanceInput, Balancer, register_balancer


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
    (default 0.01; ``None``: the encoder's lr); at fine-tuning lrs (~2e-5) ``s`` would barely move.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        lr: float | None = 0.01,
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

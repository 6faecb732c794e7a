"""``primary_auxiliary``: one primary task, auxiliary tasks that may only help it.

Paper: none of its own; the conflict projection is PCGrad's (T. Yu, S. Kumar, A. Gupta, S. Levine,
K. Hausman & C. Finn, "Gradient Surgery for Multi-Task Learning", NeurIPS 2020,
https://arxiv.org/abs/2001.06782), applied to the auxiliaries against the primary task only.

Formula: the primary gradient ``g_p`` enters with weight 1; each auxiliary ``g_a`` with weight
``aux_weight`` after removing its conflicting component::

    if <g_a, g_p> < 0:   g_a <- g_a - <g_a, g_p> / ||g_p||^2 g_p
    =>  w_a = aux_weight,   w_p = 1 - aux_weight sum_a min(0, G_ap) / G_pp

so ``<d, g_p> = ||g_p||^2 + aux_weight sum_a max(0, G_ap) >= ||g_p||^2``.

Knobs:
    ``primary`` (required): the main task (e.g. ``balancer.primary=ocnli``).
    ``aux_weight`` (1.0): scale of every (projected) auxiliary gradient.
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code: not applicable. A zero primary gradient leaves the auxiliaries
unprojected; a step without the primary task gives every auxiliary ``aux_weight``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, GradientSource, register_balancer
from mtl.balancers.gramian.base import GramianBalancer
from mtl.balancers.gramian.linalg import nonzero_mask


@register_balancer("primary_auxiliary")
class PrimaryAuxiliary(GramianBalancer):
    """Primary task with auxiliaries that may only help (projection as in PCGrad, Yu et al. 2020).

    The primary gradient ``g_p`` enters with weight 1; each auxiliary ``g_a`` with weight
    ``aux_weight`` after removing its conflicting component: if ``<g_a, g_p> < 0``,
    ``g_a <- g_a - <g_a, g_p> / ||g_p||^2 g_p``. Hence
    ``w_a = aux_weight``, ``w_p = 1 - aux_weight sum_a min(0, G_ap) / G_pp`` and
    ``<d, g_p> = ||g_p||^2 + aux_weight sum_a max(0, G_ap) >= ||g_p||^2``.
    A zero primary gradient leaves the auxiliaries unprojected; a step without the primary
    task gives every auxiliary ``aux_weight``.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        primary: str | None = None,
        aux_weight: float = 1.0,
        source: GradientSource | None = "representation",
    ) -> None:
        super().__init__(task_names, source=source)
        if primary is None or primary not in self.task_names:
            what = "needs" if primary is None else f"got unknown primary={primary!r}; it needs"
            raise ValueError(
                f"primary_auxiliary balancer {what} `primary=<task>` naming one of the tasks {self.task_names}"
            )
        if aux_weight < 0:
            raise ValueError(f"primary_auxiliary aux_weight must be >= 0, got {aux_weight}")
        self.primary = primary
        self.aux_weight = float(aux_weight)

    def gramian_weights(self, gramian: Tensor, inp: BalanceInput) -> Tensor:
        t = gramian.shape[0]
        w = torch.full((t,), self.aux_weight, dtype=gramian.dtype)
        if self.primary not in inp.tasks:
            return w
        p = inp.tasks.index(self.primary)
        w[p] = 1.0
        gpp = float(gramian[p, p])
        if gpp <= 0.0 or not bool(nonzero_mask(gramian)[p]):
            return w
        for a in range(t):
            if a != p and float(gramian[a, p]) < 0.0:
                w[p] -= self.aux_weight * float(gramian[a, p]) / gpp
        return w

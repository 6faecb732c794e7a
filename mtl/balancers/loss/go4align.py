"""``go4align``: GO4Align, group risk minimisation: tasks clustered by their risk-guided indicators share a weight.

Paper: J. Shen, Q. Wang, Z. Xiao, N. van Noord & M. Worring, "GO4Align: Group Optimization for Multi-Task
Alignment", NeurIPS 2024. https://arxiv.org/abs/2404.06486 (official code:
https://github.com/autumn9999/GO4Align, ``methods/cluster_methods.py``, class ``GO4ALIGN``)

Formula (the official code), with ``L`` this step's losses and ``p`` a distribution over the tasks kept by
the balancer (initialised uniform)::

    p <- p * exp(-step_size L),  p <- p / sum p            (risk information from previous iterations)
    r_t = (sum_s L_s / L_t) p_t                            (risk-guided indicator: scale balance x p)
    groups = k-means of the T numbers r_t into K = min(num_groups, T) clusters
    w_t = the mean of r over t's group

With uniform ``p`` every ``r_t L_t`` equals the mean loss (each task's weighted loss is the same: scale
balance); ``p`` then drifts with the accumulated losses, and the grouping gives tasks with similar
indicators one common weight (``K = 1``: every task the mean indicator, a scaled equal weighting;
``K = T``: ``w = r``). Loss-level: no gradient is needed.

Knobs:
    ``num_groups`` (2): ``K``, the number of task groups.
    ``step_size`` (1e-4): the step of ``p`` (official ``robust_step_size``).
    ``eps`` (1e-8): losses are clamped to at least ``eps`` in the ratio.

Deviations from the official code:

* The clustering is the exact 1-D k-means optimum (clusters of sorted values are contiguous, found by
  dynamic programming; ties to the first), not ``kmeans_pytorch`` from a random start: deterministic.
* Default ``num_groups = 2``: the official NYUv2 script's default is 1, which reduces the method to one
  common weight for every task.
* The update of ``p`` is committed in ``after_optimizer_step`` (a step the trainer skips leaves no
  trace; calling ``compute`` twice in a step gives the same weights); non-finite losses give weights 1.
* With a subset of the tasks in a step (one-task samplers), ``sum_s L_s`` and ``p`` (renormalised) run over
  the step's tasks, so a single task gets weight 1; the official code always has every task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl.balancers._common import step_losses
from mtl.balancers.base import BalanceInput, Balancer, register_balancer


def kmeans_1d(values: Sequence[float], k: int) -> list[int]:
    """Group labels (0..k-1, in increasing order of value) of the optimal k-means partition of 1-D values."""
    n = len(values)
    k = max(1, min(int(k), n))
    order = sorted(range(n), key=lambda i: values[i])
    v = [float(values[i]) for i in order]
    s1, s2 = [0.0], [0.0]
    for x in v:
        s1.append(s1[-1] + x)
        s2.append(s2[-1] + x * x)

    def sse(a: int, b: int) -> float:  # within-cluster sum of squares of v[a:b]
        m = b - a
        return max(0.0, (s2[b] - s2[a]) - (s1[b] - s1[a]) ** 2 / m)

    inf = float("inf")
    cost = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    cost[0][0] = 0.0
    for j in range(1, k + 1):
        for b in range(j, n + 1):
            for a in range(j - 1, b):
                c = cost[j - 1][a] + sse(a, b)
                if c < cost[j][b] - 1e-15 * max(1.0, abs(c)):
                    cost[j][b], cut[j][b] = c, a
    labels = [0] * n
    b = n
    for j in range(k, 0, -1):
        a = cut[j][b]
        for pos in range(a, b):
            labels[order[pos]] = j - 1
        b = a
    return labels


@register_balancer("go4align")
class GO4Align(Balancer):
    """GO4Align (Shen et al., NeurIPS 2024): group means of ``r_t = (sum_s L_s / L_t) p_t``.

    ``p`` (a buffer, uniform at start) follows ``p <- p exp(-step_size L)``, renormalised; the update is
    committed after the optimiser step.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        num_groups: int = 2,
        step_size: float = 1e-4,
        eps: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_names, **kwargs)
        if int(num_groups) < 1 or step_size < 0 or eps <= 0:
            raise ValueError("go4align needs num_groups >= 1, step_size >= 0 and eps > 0")
        self.num_groups = int(num_groups)
        self.step_size = float(step_size)
        self.eps = float(eps)
        n = len(self.task_names)
        self.register_buffer("probs", torch.full((n,), 1.0 / n, dtype=torch.float64))
        self._pending: Tensor | None = None
        self.last_groups: dict[str, int] = {}

    def weights(self, inp: BalanceInput) -> Tensor:
        idx = self.index(inp.tasks).to(self.probs.device)
        losses = step_losses(inp, self.probs).to(torch.float64)
        self._pending = None
        if not bool(torch.isfinite(losses).all()):
            return torch.ones(len(inp.tasks))  # a step the trainer skips
        probs = self.probs.clone()
        probs[idx] = probs[idx] * torch.exp(-self.step_size * losses)
        probs = probs / probs.sum()
        self._pending = probs
        q = probs[idx] / probs[idx].sum()
        safe = losses.clamp_min(self.eps)
        indicator = safe.sum() / safe * q
        labels = kmeans_1d(indicator.tolist(), self.num_groups)
        lab = torch.tensor(labels, device=indicator.device)
        w = torch.empty_like(indicator)
        for g in set(labels):
            w[lab == g] = indicator[lab == g].mean()
        self.last_groups = dict(zip(inp.tasks, labels, strict=True))
        return w.to("cpu", torch.float32)

    def after_optimizer_step(self) -> None:
        if self._pending is not None:
            self.probs.copy_(self._pending)
            self._pending = None

    def log_values(self) -> dict[str, float]:
        out = super().log_values()
        out.update({f"go4align/group/{t}": float(g) for t, g in self.last_groups.items()})
        return out

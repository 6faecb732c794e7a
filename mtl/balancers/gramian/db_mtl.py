"""``db_mtl``: Dual-Balancing: log losses (loss scale), every gradient at the largest norm (gradient scale).

Paper: B. Lin, W. Jiang, F. Ye, Y. Zhang, P. Chen, Y.-C. Chen, S. Liu & J. T. Kwok, "Dual-Balancing for
Multi-Task Learning", 2023. https://arxiv.org/abs/2308.12029 (official code: LibMTL,
https://github.com/median-research-group/LibMTL, ``LibMTL/weighting/DB_MTL.py``)

Formula, ``h_t = grad log(L_t + eps) = g_t / (L_t + eps)`` (loss-scale balancing) with norms
``m_t = ||g_t|| / (L_t + eps)``, ``||g_t|| = sqrt(G_tt)``::

    d = sum_t (max_s m_s / (m_t + eps)) h_t      =>      w_t = max_s m_s / ((m_t + eps) (L_t + eps))

every balanced task gradient then has the norm of the largest one (gradient-magnitude balancing). Only
the Gramian's diagonal is needed; scaling one loss by ``c > 0`` changes nothing but, through the max, the
common length.

Knobs:
    ``eps`` (1e-8): inside the log and in the norm ratio, as the official code.
    ``source`` ("representation"): representation (cheap, MGDA-UB style) | parameters (all shared params).

Deviations from the official code:

* **No gradient EMA.** The official code balances an exponential moving average of the log-loss
  gradients, ``h~ <- h + beta / k^sigma (h~ - h)`` (``DB_beta = 0.9``, ``DB_beta_sigma = 0``), kept as full
  gradient vectors; the balancer sees only this step's Gramian, which carries no inner products with past
  gradients, so this is the ``beta = 0`` variant (the current step's gradients). With the EMA the update is
  built from past gradients, no longer a weighting of this step's: an aggregator (``mtl.balancers.aggregator``,
  parameters source only, with a ``T x P`` buffer, as ``moco``), not implemented.
* Gradients on the shared representation by default (LibMTL refuses ``rep_grad`` for DB-MTL);
  ``source=parameters`` is the official setting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.balancers._common import step_losses
from mtl.balancers.base import BalanceInput, Balancer, GradientSource, register_balancer
from mtl.balancers.gramian.base import input_gradient_norms


@register_balancer("db_mtl")
class DBMTL(Balancer):
    """DB-MTL without the gradient EMA: ``w_t = max_s m_s / ((m_t + eps)(L_t + eps))``.

    ``m_t = ||g_t|| / (L_t + eps)`` is the norm of the log-loss gradient, from the Gramian's diagonal.
    """

    needs_gramian = True

    def __init__(
        self, task_names: Sequence[str], eps: float = 1e-8, source: GradientSource | None = "representation"
    ) -> None:
        super().__init__(task_names, source=source)
        if eps <= 0:
            raise ValueError(f"db_mtl eps must be > 0, got {eps}")
        self.eps = float(eps)

    def weights(self, inp: BalanceInput) -> Tensor:
        self.index(inp.tasks)  # reject tasks this balancer was not built for
        norms = input_gradient_norms(inp).to("cpu", torch.float64)
        losses = step_losses(inp).to(torch.float64).clamp_min(0.0) + self.eps
        m = norms / losses
        w = float(m.max()) / ((m + self.eps) * losses)
        return w.to(device=inp.gramian.device, dtype=torch.float32)

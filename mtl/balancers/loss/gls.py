"""``gls``: Geometric Loss Strategy, minimise the geometric mean of the task losses.

Paper: S. Chennupati, G. Sistu, S. Yogamani & S. A. Rawashdeh, "MultiNet++: Multi-Stream Feature
Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019.
https://arxiv.org/abs/1904.08492 (no official code; cf. LibMTL's ``GLS``)

Formula::

    objective = (prod_t L_t)^(1/T)      =>      w_t = (prod_s L_s)^(1/T) / (T L_t)   (gradient stopped)

so ``sum_t w_t L_t`` equals the geometric mean in value and has its gradient
``sum_t (prod L)^(1/T) / (T L_t) grad L_t``. Like ``log_loss`` (whose weights are ``1 / L_t``) the update
direction does not change when one loss is multiplied by a constant; unlike it, the step length follows
the geometric mean of the losses.

Knobs:
    ``eps`` (1e-8): losses are clamped to ``>= eps`` (a zero loss would zero the product).

Deviations from the official code (none was released; compared with LibMTL): the product is computed as
``exp(mean log L)`` (no overflow or underflow of the product), and ``T`` is the number of tasks in the step
(with a one-task sampler a step's objective is that task's loss: weight 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtl.balancers._common import step_losses
from mtl.balancers.base import BalanceInput, Balancer, register_balancer


@register_balancer("gls")
class GeometricLossStrategy(Balancer):
    """Geometric Loss Strategy (Chennupati et al., CVPR-W 2019): ``w_t = (prod_s L_s)^(1/T) / (T L_t)``.

    The gradient of the geometric mean of the step's losses; losses are clamped to ``>= eps``.
    """

    def __init__(self, task_names: Sequence[str], eps: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(task_names, **kwargs)
        if eps <= 0:
            raise ValueError(f"gls eps must be > 0, got {eps}")
        self.eps = float(eps)

    def weights(self, inp: BalanceInput) -> Tensor:
        self.index(inp.tasks)  # reject tasks this balancer was not built for
        losses = step_losses(inp).to(torch.float64).clamp_min(self.eps)
        geo = torch.exp(torch.log(losses).mean())
        return (geo / (losses.numel() * losses)).to(torch.float32)

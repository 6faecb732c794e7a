"""``imtl_l``: IMTL-L, the loss half of impartial multi-task learning: learnt scales equalise the losses.

Paper: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao & W. Zhang, "Towards Impartial
Multi-task Learning", ICLR 2021 (the loss part, IMTL-L). https://openreview.net/forum?id=IMPnRXEWpvr
(no official code; cf. LibMTL's ``IMTL``, which combines this with the gradient half, ``imtl`` here)

Formula, ``s_t`` learnt, initialised at 0::

    objective = sum_t exp(s_t) L_t - s_t          w_t = exp(s_t)

For fixed ``L`` the optimum is ``d/ds = exp(s) L - 1 = 0`` => ``exp(s*) = 1 / L``: every scaled loss is
driven to ``exp(s_t) L_t = 1`` (the ``log_loss`` weight at equilibrium), whatever the losses' scales. Unlike
``uncertainty`` (``exp(-s) L + s``) the regulariser is ``-s`` and the scale multiplies the loss, and the
paper's point is that the scaled losses become equal, not that they model a noise level.

Knobs:
    ``lr`` (0.01): the scales' own learning rate in the trainer's optimiser (constant; ``None``: the
    encoder's lr). At fine-tuning lrs (~2e-5) ``s`` would barely move.

Deviations from the official code (none was released; compared with the paper and LibMTL):

* The scales get their own learning rate (LibMTL trains them with the model's optimiser and lr).
* Only the loss half; the gradient half is ``imtl`` (IMTL-G). The full IMTL (both at once: IMTL-G on
  the scaled losses) is not available as one balancer.
* With one task per step only that task's ``s`` is regularised (and only it gets a gradient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtl.balancers.base import BalanceInput, Balancer, register_balancer


@register_balancer("imtl_l")
class IMTLL(Balancer):
    """IMTL-L (Liu et al., ICLR 2021): learnt ``s_t`` (init 0), objective ``sum_t exp(s_t) L_t - s_t``.

    ``weights`` returns ``exp(s_t)`` *with* autograd history to ``s`` (the trainer's weighted loss then
    trains ``s``); ``regularizer`` returns ``-sum s_t`` over the tasks of the last ``weights`` call. For
    fixed losses ``exp(s_t) -> 1 / L_t``. ``lr`` gives ``s`` its own learning rate (``None``: the encoder's).
    """

    def __init__(self, task_names: Sequence[str], lr: float | None = 0.01, **kwargs: Any) -> None:
        super().__init__(task_names, **kwargs)
        if lr is not None and lr <= 0:
            raise ValueError(f"imtl_l lr must be > 0 or None, got {lr}")
        self.lr = lr
        self.log_scales = nn.Parameter(torch.zeros(len(self.task_names)))
        self._last_idx: Tensor | None = None

    def weights(self, inp: BalanceInput) -> Tensor:
        idx = self.index(inp.tasks).to(self.log_scales.device)
        self._last_idx = idx
        return torch.exp(self.log_scales[idx])

    def regularizer(self) -> Tensor | None:
        if self._last_idx is None:
            return None
        return -self.log_scales[self._last_idx].sum()

    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        group: dict[str, Any] = {"params": [self.log_scales], "weight_decay": 0.0}
        if self.lr is not None:
            group["lr"] = float(self.lr)
        return [group]

    def log_values(self) -> dict[str, float]:
        out = super().log_values()
        for t, v in zip(self.task_names, self.log_scales.detach().cpu().tolist(), strict=True):
            out[f"imtl_l/scale/{t}"] = math.exp(v)
        return out

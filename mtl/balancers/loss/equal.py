"""``equal``: losses simply summed, every task weight 1 (unitary scalarisation; the Tianchi baseline).

Paper: none of its own: the baseline every multi-task method compares against. For why it is a
strong one, see V. Kurin, A. De Palma, I. Kostrikov, S. Whiteson & M. P. Kumar, "In Defense of the
Unitary Scalarization for Deep Multi-Task Learning", NeurIPS 2022. https://arxiv.org/abs/2201.04122

Formula::

    w_i = 1                       update: grad sum_i L_i

Knobs: none.

Deviations from the official code: none known (the official Tianchi baseline sums the losses).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl.balancers.base import BalanceInput, Balancer, register_balancer


@register_balancer("equal")
class Equal(Balancer):
    """Losses simply summed: the Tianchi baseline."""

    def weights(self, inp: BalanceInput) -> Tensor:
        return torch.ones(len(inp.tasks))

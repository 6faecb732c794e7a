"""Aggregators: the combined update from the task gradients themselves, not a weighting of them.

They read the ``T x D`` task-gradient matrix (``BalanceInput.gradients``) and return an
:class:`~mtl.balancers.aggregator.base.Aggregation` (per-coordinate weights, or the update itself); the
contract is in :mod:`.base`. They need every task in every step (``sampler=all_tasks``). One module per method:

=============  ====================================================================================
``graddrop``   Gradient Sign Dropout (Chen et al. 2020): per coordinate, one randomly voted sign survives
``moco``       MoCo (Fernando et al. 2023): momentum-tracked task gradients, a simplex step on their weights
=============  ====================================================================================
"""

from mtl.balancers.aggregator import graddrop, moco  # noqa: F401  (each module registers its method)
from mtl.balancers.aggregator.base import Aggregation, Aggregator
from mtl.balancers.aggregator.graddrop import GradDrop
from mtl.balancers.aggregator.moco import MoCo

__all__ = ["Aggregation", "Aggregator", "GradDrop", "MoCo"]

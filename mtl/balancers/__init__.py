"""Loss balancers: a registry of weightings from losses or task-gradient Gramians to task weights.

Layout (one module per method, each with its paper, formula, knobs and deviations from the
official code in its docstring):

- :mod:`mtl.balancers.base`: the contract (:class:`Balancer`, :class:`BalanceInput`) and the registry.
- :mod:`mtl.balancers.loss`: loss-level methods (``equal``, ``static``, ``log_loss``, ``initial_loss``,
  ``uncertainty``, ``dwa``, ``dtp``, ``rlw``, ``famo``, ``imtl_l``, ``gls``, ``stch``, ``go4align``, ``igb``):
  weights from the losses (and their own history).
- :mod:`mtl.balancers.gramian`: Gramian-level methods (``mgda``, ``mgda_ub``, ``pcgrad``, ``cagrad``,
  ``imtl``, ``gradvac``, ``nash_mtl``, ``aligned_mtl``, ``primary_auxiliary``, ``gradnorm``,
  ``grad_norm_normalized``, ``db_mtl``, ``upgrad``, ``dualproj``, ``fairgrad``, ``conflictfree``,
  ``excess_mtl``, ``torchjd``): weights from the Gramian of the task gradients, with the shared numerics in
  :mod:`mtl.balancers.gramian.linalg`; ``excess_mtl`` reads the task gradients themselves
  (``needs_gradients``) for its per-coordinate statistics.
- :mod:`mtl.balancers.aggregator`: methods whose update is not a weighting of the task gradients
  (``graddrop``, ``moco``): the combined update (or per-coordinate weights) from the task-gradient matrix,
  the contract in :mod:`mtl.balancers.aggregator.base`.

Importing this package registers every built-in method.
"""

from mtl.balancers import aggregator, gramian, loss  # noqa: F401  (register the built-in methods)
from mtl.balancers.base import BALANCERS, BalanceInput, Balancer, balancer_options, register_balancer
from mtl.registry import check_options

__all__ = ["BALANCERS", "Balancer", "BalanceInput", "register_balancer", "build_balancer", "balancer_options"]


def build_balancer(name: str, task_names: list[str], **kwargs) -> Balancer:
    """Instantiate a registered balancer by name (unknown names list the registered ones).

    ``kwargs`` are the rest of the ``balancer`` config group; a key the balancer does not take
    (a typo such as ``lrr``) is a ``TypeError`` naming it and the options the balancer does take.
    """
    cls = BALANCERS.get(name)
    try:
        return cls(task_names, **kwargs)
    except TypeError:
        if cls.open_options:
            raise
        check_options("balancer", name, kwargs, balancer_options(cls))  # a typo: name it and the options
        raise

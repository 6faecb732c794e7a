"""Loss balancers: a registry of weightings from losses or task-gradient Gramians to task weights."""

from mtl.balancers import (
    gradient,  # noqa: F401  (registers mgda, mgda_ub, pcgrad, cagrad, imtl, gradvac, nash_mtl, aligned_mtl, primary_auxiliary)
    loss_weighting,  # noqa: F401  (log_loss, initial_loss, uncertainty, gradnorm, dwa, ...)
    simple,  # noqa: F401  (registers equal, static)
    torchjd_adapter,  # noqa: F401  (registers torchjd; torchjd imported lazily)
)
from mtl.balancers.base import BALANCERS, BalanceInput, Balancer, register_balancer

__all__ = ["BALANCERS", "Balancer", "BalanceInput", "register_balancer", "build_balancer"]


def build_balancer(name: str, task_names: list[str], **kwargs) -> Balancer:
    """Instantiate a registered balancer by name (unknown names list the registered ones)."""
    return BALANCERS.get(name)(task_names, **kwargs)

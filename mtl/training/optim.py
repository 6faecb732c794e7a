"""AdamW with separate encoder / head learning rates, and linear warm-up then decay."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtl.balancers.base import Balancer
from mtl.models.multitask import MultiTaskModel

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias")


def _split_decay(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if any(k in name for k in NO_DECAY) or p.ndim < 2 else decay).append(p)
    return decay, no_decay


def build_optimizer(
    model: MultiTaskModel,
    balancer: Balancer,
    lr: float,
    head_lr: float | None = None,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """Encoder at ``lr``, heads at ``head_lr`` (default ``lr``), balancer parameters at their own lr."""
    groups: list[dict[str, Any]] = []
    enc_decay, enc_no = _split_decay(model.encoder)
    head_decay, head_no = _split_decay(model.heads)
    hl = head_lr if head_lr is not None else lr
    for params, group_lr, wd, name in (
        (enc_decay, lr, weight_decay, "encoder"),
        (enc_no, lr, 0.0, "encoder_no_decay"),
        (head_decay, hl, weight_decay, "heads"),
        (head_no, hl, 0.0, "heads_no_decay"),
    ):
        if params:
            groups.append({"params": params, "lr": group_lr, "weight_decay": wd, "name": name})
    for g in balancer.optimizer_param_groups():
        groups.append({"lr": lr, "name": "balancer", **g})
    kwargs: dict[str, Any] = {"betas": tuple(betas), "eps": eps}
    if fused is not None:
        kwargs["fused"] = fused
    return torch.optim.AdamW(groups, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, max_steps: int, warmup: float | int):
    """Linear warm-up (a fraction of training when < 1, else a step count) then linear decay to 0.

    Balancer parameter groups keep a constant lr: their methods define their own dynamics.
    """
    warmup_steps = int(round(warmup * max_steps)) if 0 <= warmup < 1 else int(warmup)

    def linear(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))

    lambdas = [(lambda _: 1.0) if g.get("name") == "balancer" else linear for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)

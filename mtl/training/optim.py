"""The optimiser (AdamW, or Adafactor) with separate encoder / head learning rates, optional layer-wise
learning-rate decay of the encoder, and linear warm-up then decay.

**Layer-wise learning-rate decay** (LLRD; Howard & Ruder, "Universal Language Model Fine-tuning", ACL 2018,
as "discriminative fine-tuning"; the form of ELECTRA, Clark et al. ICLR 2020): with ``optim.layer_decay = ρ``
and ``L`` encoder layers, layer ``i`` (0 = the lowest) trains at ``lr · ρ^(L − i)``, the embeddings at
``lr · ρ^(L + 1)``, and the encoder's parameters above its layers (a pooler) at ``lr``; heads keep ``head_lr``.
Layers are found by the ``layer.<i>.`` part of the parameter names (BERT, RoBERTa, XLM-R, e5); an
encoder whose names have none is refused with ``optim.layer_decay`` set.

**Adafactor** (Shazeer & Stern, ICML 2018, https://arxiv.org/abs/1804.04235): ``optim.optimizer=adafactor``
uses ``transformers.optimization.Adafactor`` with the run's learning rates and schedule
(``relative_step=False, scale_parameter=False, warmup_init=False``): factored second moments, so its state
takes far less memory than AdamW's two full moments; see Su Jianlin's notes on low-memory optimisers
(https://kexue.fm/archives/7302).
"""

from __future__ import annotations

import re
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


OPTIMIZERS = ("adamw", "adafactor")
_LAYER = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def layer_scales(module: nn.Module, decay: float) -> dict[str, float]:
    """``{parameter name: lr multiplier}`` of layer-wise decay ``decay`` (see the module docstring)."""
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    layers = {n: int(m.group(1)) for n in names if (m := _LAYER.search(n))}
    if not layers:
        raise ValueError(f"optim.layer_decay={decay}: no 'layer.<i>.' in the encoder's parameter names "
                         f"(e.g. {names[:3]}), so its layers cannot be told apart")
    top = max(layers.values()) + 1  # L
    out = {}
    for n in names:
        if n in layers:
            out[n] = decay ** (top - layers[n])
        elif "embeddings" in n:
            out[n] = decay ** (top + 1)
        else:
            out[n] = 1.0
    return out


def build_optimizer(
    model: MultiTaskModel,
    balancer: Balancer,
    lr: float,
    head_lr: float | None = None,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | None = None,
    layer_decay: float | None = None,
    optimizer: str = "adamw",
) -> torch.optim.Optimizer:
    """Encoder at ``lr`` (per layer with ``layer_decay``; LoRA matrices inside it alike), the tasks' private
    encoder parts (``model.private``: private top layers, adapters) at ``lr``, heads at ``head_lr`` (default
    ``lr``), balancer parameters at their own lr; ``optimizer``: ``adamw`` (``betas``, ``eps``, ``fused``) or ``adafactor``."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optim.optimizer={optimizer}: choose one of {', '.join(OPTIMIZERS)}")
    if layer_decay is not None and not 0.0 < float(layer_decay) <= 1.0:
        raise ValueError(f"optim.layer_decay={layer_decay}: must lie in (0, 1]")
    groups: list[dict[str, Any]] = []
    hl = head_lr if head_lr is not None else lr
    if layer_decay is None:
        enc_decay, enc_no = _split_decay(model.encoder)
        enc_groups = [(enc_decay, lr, weight_decay, "encoder"), (enc_no, lr, 0.0, "encoder_no_decay")]
    else:  # one pair of groups per learning rate
        scales = layer_scales(model.encoder, float(layer_decay))
        by_scale: dict[float, tuple[list[nn.Parameter], list[nn.Parameter]]] = {}
        for name, p in model.encoder.named_parameters():
            if not p.requires_grad:
                continue
            pair = by_scale.setdefault(scales[name], ([], []))
            no = any(k in name for k in NO_DECAY) or p.ndim < 2
            pair[1 if no else 0].append(p)
        enc_groups = []
        for scale in sorted(by_scale, reverse=True):
            dec, no = by_scale[scale]
            enc_groups += [(dec, lr * scale, weight_decay, f"encoder@{scale:.4g}"),
                           (no, lr * scale, 0.0, f"encoder_no_decay@{scale:.4g}")]
    head_decay, head_no = _split_decay(model.heads)
    # per-task private encoder parts (private top layers, adapters; model.sharing) train like the encoder
    private = getattr(model, "private", None)
    priv_decay, priv_no = _split_decay(private) if private is not None else ([], [])
    for params, group_lr, wd, name in (
        *enc_groups,
        (priv_decay, lr, weight_decay, "private"),
        (priv_no, lr, 0.0, "private_no_decay"),
        (head_decay, hl, weight_decay, "heads"),
        (head_no, hl, 0.0, "heads_no_decay"),
    ):
        if params:
            groups.append({"params": params, "lr": group_lr, "weight_decay": wd, "name": name})
    for g in balancer.optimizer_param_groups():
        groups.append({"lr": lr, "name": "balancer", **g})
    if optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
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

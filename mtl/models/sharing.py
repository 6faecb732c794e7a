"""What the tasks share inside the encoder: shared-private structures (``model.sharing``; docs/structures.md).

* ``hard``: every encoder weight is shared (the default; nothing here is used).
* ``private_top``: the lower ``N = L - k`` layers shared, a private copy of the top ``k`` layers (and of the
  pooler, when a task pools with it) per task (:func:`split_private_top`, :class:`PrivateTop`).
* ``adapters``: per-task bottleneck adapters inside every shared layer (Houlsby et al., ICML 2019; Pfeiffer et
  al., EACL 2021): ``h + W_up f(W_down h)`` on the output of each layer's feed-forward block (``pfeiffer``), and
  also of its attention block (``houlsby``), before the residual and LayerNorm; ``W_up`` starts at zero, so the
  encoder starts unchanged. They run through forward hooks on the encoder's modules (its parameter names stay
  as they were); the hooks read the task from :class:`ActiveTask` (:func:`add_adapters`).
* ``lora``: per-task LoRA (Hu et al., ICLR 2022) on the shared layers' ``lora_targets`` projections, with
  ``peft`` (:func:`add_lora`): one peft adapter per task in the same layers, the task's adapter made active
  before each encoder pass; the encoder's own weights stay trainable (shared).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

SHARINGS = ("hard", "private_top", "adapters", "lora")
ADAPTER_PLACEMENTS = ("pfeiffer", "houlsby")


class ActiveTask:
    """The task whose private modules inside the shared encoder (adapters, LoRA) the next pass uses."""

    def __init__(self) -> None:
        self.task: str | None = None

    def require(self) -> str:
        if self.task is None:
            raise RuntimeError("per-task adapters/LoRA: the encoder pass needs its task "
                               "(MultiTaskModel.encode(batch, task))")
        return self.task


# ----------------------------------------------------------------------------------------- layers


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer layers (``encoder.encoder.layer`` of BERT, RoBERTa, XLM-R, e5)."""
    inner = getattr(encoder, "encoder", None)
    layers = getattr(inner, "layer", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    n = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
    for _, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and n is not None and len(module) == int(n):
            return module
    raise ValueError(f"cannot find the transformer layers of a {type(encoder).__name__} (expected encoder.encoder.layer); "
                     "model.sharing=private_top/adapters need a BERT-like encoder")


def _set_layers(encoder: nn.Module, layers: nn.ModuleList) -> None:
    inner = getattr(encoder, "encoder", None)
    if inner is None or not isinstance(getattr(inner, "layer", None), nn.ModuleList):
        raise ValueError("model.sharing=private_top needs a BERT-like encoder (encoder.encoder.layer)")
    inner.layer = layers


def bidirectional_mask(config: Any, hidden: Tensor, attention_mask: Tensor) -> Any:
    """The attention mask the encoder's own layers get, for ``hidden`` ``[B, L, H]`` (its attention kind)."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # older transformers: the additive [B, 1, 1, L] mask
        ext = attention_mask[:, None, None, :].to(hidden.dtype)
        return (1.0 - ext) * torch.finfo(hidden.dtype).min
    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)


class PrivateTop(nn.Module):
    """One task's private copy of the encoder's top layers (and of its pooler when the task pools with it)."""

    def __init__(self, layers: Sequence[nn.Module], pooler: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if pooler is not None:
            self.pooler = pooler

    def forward(self, hidden: Tensor, attention_mask: Tensor, config: Any) -> list[Tensor]:
        """The output of each private layer, from the last shared layer's token states."""
        mask = bidirectional_mask(config, hidden, attention_mask)
        out = []
        for layer in self.layers:
            y = layer(hidden, mask)
            hidden = y[0] if isinstance(y, tuple) else y
            out.append(hidden)
        return out


def split_private_top(encoder: nn.Module, k: int, tasks: Sequence[str], with_pooler: bool) -> nn.ModuleDict:
    """Cut the encoder's top ``k`` layers off (the encoder keeps the lower ``L - k``) and give every task its own
    copy of them (and of the pooler when ``with_pooler``; the shared pooler is dropped either way: it would
    read the last shared layer, which no task pools)."""
    layers = encoder_layers(encoder)
    n = len(layers)
    if not 1 <= int(k) <= n:
        raise ValueError(f"model.private_layers={k}: the encoder has {n} layers; choose 1..{n}")
    top = list(layers[n - int(k):])
    pooler = getattr(encoder, "pooler", None)
    if with_pooler and pooler is None:
        raise ValueError("pooling=pooler with model.sharing=private_top: this encoder has no pooler layer; "
                         "use cls or mean pooling")
    private = nn.ModuleDict({
        t: PrivateTop([copy.deepcopy(layer) for layer in top], copy.deepcopy(pooler) if with_pooler else None)
        for t in tasks
    })
    _set_layers(encoder, nn.ModuleList(list(layers[: n - int(k)])))
    if pooler is not None:
        encoder.pooler = None
    return private


# ----------------------------------------------------------------------------------------- adapters


class BottleneckAdapter(nn.Module):
    """``h + W_up gelu(W_down h)``, ``W_up = 0`` at the start (the identity)."""

    def __init__(self, hidden: int, size: int, std: float = 0.02) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.up = nn.Linear(size, hidden)
        nn.init.normal_(self.down.weight, std=std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(nn.functional.gelu(self.down(h)))


class TaskAdapters(nn.Module):
    """One task's adapters: one per layer after the feed-forward block, and (``houlsby``) one after attention."""

    def __init__(self, hidden: int, size: int, n_layers: int, placement: str) -> None:
        super().__init__()
        self.ffn = nn.ModuleList(BottleneckAdapter(hidden, size) for _ in range(n_layers))
        if placement == "houlsby":
            self.attn = nn.ModuleList(BottleneckAdapter(hidden, size) for _ in range(n_layers))


class _AdapterHook:
    """A forward hook on a shared sub-layer's output projection: the active task's adapter on its output."""

    def __init__(self, private: nn.ModuleDict, active: ActiveTask, slot: str, index: int) -> None:
        self.private, self.active, self.slot, self.index = private, active, slot, index

    def __call__(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        adapters = getattr(self.private[self.active.require()], self.slot)
        return adapters[self.index](out)


def _output_projection(layer: nn.Module, path: str) -> nn.Module:
    try:
        return layer.get_submodule(path)
    except AttributeError as exc:
        raise ValueError(f"model.sharing=adapters: a {type(layer).__name__} has no {path} (a BERT-like layer has "
                         "attention.output.dense and output.dense)") from exc


def add_adapters(encoder: nn.Module, tasks: Sequence[str], size: int, placement: str,
                 active: ActiveTask) -> nn.ModuleDict:
    """Per-task bottleneck adapters in every encoder layer (hooks on ``output.dense`` and, ``houlsby``,
    ``attention.output.dense``); returns ``{task: TaskAdapters}`` (the modules the model holds)."""
    if placement not in ADAPTER_PLACEMENTS:
        raise ValueError(f"model.adapter_placement={placement}: choose one of {', '.join(ADAPTER_PLACEMENTS)}")
    if int(size) < 1:
        raise ValueError(f"model.adapter_size={size}: must be a positive integer")
    layers = encoder_layers(encoder)
    hidden = int(encoder.config.hidden_size)
    private = nn.ModuleDict({t: TaskAdapters(hidden, int(size), len(layers), placement) for t in tasks})
    for i, layer in enumerate(layers):
        _output_projection(layer, "output.dense").register_forward_hook(_AdapterHook(private, active, "ffn", i))
        if placement == "houlsby":
            _output_projection(layer, "attention.output.dense").register_forward_hook(
                _AdapterHook(private, active, "attn", i))
    return private


# ----------------------------------------------------------------------------------------- LoRA


def lora_task_of(name: str) -> str | None:
    """The task (peft adapter name) a LoRA parameter belongs to: ``...query.lora_A.<task>.weight`` -> task."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.startswith("lora_"):
            return parts[i + 1]
    return None


class LoraSwitch:
    """Per-task LoRA adapters injected with ``peft`` (``inject_adapter_in_model``, one adapter per task)."""

    def __init__(self, encoder: nn.Module, tasks: Sequence[str], r: int, alpha: float, dropout: float,
                 targets: Sequence[str]) -> None:
        try:
            from peft import LoraConfig, inject_adapter_in_model
            from peft.tuners.tuners_utils import BaseTunerLayer
        except ImportError as exc:  # pragma: no cover - peft is a dependency of the lora extra
            raise ImportError("model.sharing=lora needs the peft package: pip install 'mtl[lora]' (or peft)") from exc
        trainable = {id(p): (p, p.requires_grad) for p in encoder.parameters()}  # peft renames (base_layer)
        config = LoraConfig(r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout),
                            target_modules=list(targets), bias="none")
        with warnings.catch_warnings():  # "multiple adapters in the model": one per task is the point
            warnings.simplefilter("ignore")
            for task in tasks:
                try:
                    inject_adapter_in_model(config, encoder, adapter_name=task)
                except ValueError as exc:  # e.g. no module named like a target
                    raise ValueError(f"model.lora_targets={list(targets)}: {exc}") from exc
        # peft freezes the base weights; here they stay the shared, trained encoder
        for p, flag in trainable.values():
            p.requires_grad_(flag)
        self.layers = [m for m in encoder.modules() if isinstance(m, BaseTunerLayer)]
        if not self.layers:
            raise ValueError(f"model.lora_targets={list(targets)}: no such modules in the encoder")
        self.params = [p for n, p in encoder.named_parameters() if lora_task_of(n) is not None]
        for p in self.params:  # every task's adapters trainable (the optimiser is built from requires_grad)
            p.requires_grad_(True)
        self.task: str | None = None

    def activate(self, task: str) -> None:
        """Make ``task``'s adapters the ones the encoder runs (peft's ``set_adapter``), every task's adapters
        staying trainable (``set_adapter`` freezes the inactive ones)."""
        if task == self.task:
            return
        for layer in self.layers:
            layer.set_adapter(task)
        for p in self.params:
            p.requires_grad_(True)
        self.task = task

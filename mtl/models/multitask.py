"""One shared pretrained encoder, one head per task: hard sharing by default; per-task features and heads,
and shared-private encoders, as config choices (``docs/structures.md``).

The model is used in two calls, so that gradient balancers can take task gradients in between:

* :meth:`MultiTaskModel.encode` gives **the shared representation**: ONE tensor ``[B, D]``, everything of the
  shared encoder's output that some task's head reads (each a "read": a layer's pooled vector ``[B, H]``, or
  its token states padded to ``max_length`` and flattened ``[B, max_length * H]``, concatenated). The default
  (every task reads the last layer's pooled vector) is exactly the pooled vector ``[B, H]``. With
  ``sharing=private_top`` it is the last shared layer's token states; with ``adapters``/``lora`` it is the
  encoder's output under the task's adapters (``encode(batch, task)``).
* :meth:`MultiTaskModel.head` gives a task's logits from that tensor and the batch (whose ``attention_mask``
  token-level heads need): the task's private top layers if any, its layer mix/concatenation, sequence head,
  pooling and classifier.

**The shared parameters** (:meth:`MultiTaskModel.shared_parameters`) are the encoder's trainable weights that
every task's pass uses: all of them for ``hard`` and ``adapters`` (the adapters live outside the encoder), the
lower ``L - k`` layers and the embeddings for ``private_top``, the encoder without the LoRA matrices for
``lora``. Everything else of a task (:meth:`head_parameters`) is private to it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mtl.models.heads import (
    HEAD_KINDS,
    POOLED_HEADS,
    POOLINGS,
    SEQUENCE_HEADS,
    Pooling,
    TaskHead,
    init_head_,
    pool,
)
from mtl.models.sharing import (
    SHARINGS,
    ActiveTask,
    LoraSwitch,
    add_adapters,
    lora_task_of,
    split_private_top,
)

log = logging.getLogger(__name__)

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TOKENS = "tokens"
#: the keys of ``model.heads.<task>`` (each overrides the model-wide default named in brackets)
HEAD_KEYS = {"kind": "head", "layer": "layer", "concat_layers": "concat_layers", "pooling": "pooling",
             "hidden": "head_hidden"}
LAYER_CHOICES = ("last", "mix", "concat")


@dataclass
class ModelSettings:
    """The ``model`` config group (registered as ``model/default`` by ``mtl.config``; presets in
    ``mtl/conf/model/``). The defaults are hard sharing, the last layer's pooled vector (``encoder.pooling``)
    and a linear head per task. ``docs/structures.md`` describes every option."""

    head: str = "linear"  # linear | mlp | bilstm | bigru | cnn: every task's head (model.heads.<task>.kind overrides)
    dropout: float = 0.1
    # multi-sample dropout (Inoue 2019): the training loss averaged over K dropout masks of each head's input
    dropout_samples: int = 1
    # the hidden states a head reads: last | mix (ELMo scalar mix of all) | concat (the last concat_layers) |
    # an index (0 the embeddings, i the output of layer i, -1 the last layer)
    layer: Any = "last"
    concat_layers: int = 4
    pooling: str | None = None  # null: encoder.pooling | cls | mean | max | pooler | attention (learned query)
    head_hidden: int | None = None  # width of mlp/bilstm/bigru/cnn heads (null: the encoder's hidden size)
    # per task, e.g. model.heads.tnews.kind=bilstm: {kind, layer, concat_layers, pooling, hidden}
    heads: dict[str, Any] = field(default_factory=dict)
    sharing: str = "hard"  # hard | private_top | adapters | lora
    private_layers: int = 2  # private_top: the top k layers are copied per task
    adapter_size: int = 64  # adapters: bottleneck width
    adapter_placement: str = "pfeiffer"  # pfeiffer (after the feed-forward block) | houlsby (and after attention)
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])


@dataclass(frozen=True)
class TaskSpec:
    """What one task's head reads and runs (resolved from :class:`ModelSettings` and ``model.heads.<task>``)."""

    kind: str
    layers: tuple[int, ...]  # hidden-state indices of the full stack: 0 the embeddings, L the last layer
    combine: str  # single | mix | concat
    pooling: str
    token_level: bool  # the head pools token states itself (sequence head, attention pooling, max of a mix)
    hidden: int | None = None


@dataclass(frozen=True)
class Read:
    """One part of the shared representation: a shared layer's pooled vector, or its token states."""

    layer: int
    what: str  # cls | mean | max | pooler | tokens

    def describe(self) -> str:
        return f"layer {self.layer} {'token states' if self.what == TOKENS else self.what + ' vector'}"


def _layers(value: Any, k: int, n_layers: int | None, task: str) -> tuple[tuple[int, ...], str]:
    """``model.layer`` -> (hidden-state indices, combination)."""
    if value is None or value == "last":
        return (n_layers if n_layers is not None else 0,), "single"
    if n_layers is None:
        raise ValueError(f"{task}: layer={value} needs an encoder that states its number of layers "
                         "(config.num_hidden_layers)")
    if value == "mix":
        return tuple(range(n_layers + 1)), "mix"
    if value == "concat":
        if int(k) < 1:
            raise ValueError(f"{task}: concat_layers={k} must be a positive integer")
        k = min(int(k), n_layers + 1)
        return tuple(range(n_layers + 1 - k, n_layers + 1)), "concat"
    try:
        j = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{task}: layer={value!r}: choose last, mix, concat or a layer index") from None
    if isinstance(value, float) and value != j:
        raise ValueError(f"{task}: layer={value!r}: a layer index is an integer")
    idx = j + n_layers + 1 if j < 0 else j
    if not 0 <= idx <= n_layers:
        raise ValueError(f"{task}: layer={value}: the encoder has hidden states 0..{n_layers} "
                         f"(0 the embeddings, {n_layers} the last layer; -1 counts from the top)")
    return (idx,), "single"


def task_specs(
    tasks: Sequence[str], *, head: str = "linear", layer: Any = "last", concat_layers: int = 4,
    pooling: str | None = None, encoder_pooling: str = "cls", head_hidden: int | None = None,
    heads: Mapping[str, Mapping[str, Any]] | None = None, n_layers: int | None = None,
) -> dict[str, TaskSpec]:
    """Each task's :class:`TaskSpec`: the model-wide defaults, then ``heads[task]``'s own keys.

    Pooling ``null`` means the encoder's pooling, except that ``pooler`` (the pretrained layer on the last
    layer's first token) becomes ``cls`` where it cannot apply (another layer, a mix or concatenation, a
    sequence head); asked for explicitly there, it is an error.
    """
    heads = dict(heads or {})
    unknown = sorted(set(heads) - set(tasks))
    if unknown:
        raise ValueError(f"model.heads names unknown tasks {unknown}; the run's tasks are {list(tasks)}")
    out = {}
    for task in tasks:
        own = dict(heads.get(task) or {})
        bad = sorted(set(own) - set(HEAD_KEYS))
        if bad:
            raise ValueError(f"model.heads.{task}: unknown keys {bad}; choose from {sorted(HEAD_KEYS)}")
        kind = str(own.get("kind", head))
        if kind not in HEAD_KINDS:
            raise ValueError(f"model.heads.{task}.kind / model.head={kind}: choose one of {', '.join(HEAD_KINDS)}")
        layers, combine = _layers(own.get("layer", layer), int(own.get("concat_layers", concat_layers)), n_layers,
                                  task)
        explicit = own.get("pooling", pooling)
        how = str(explicit if explicit is not None else encoder_pooling)
        if how not in POOLINGS:
            raise ValueError(f"{task}: pooling={how}: choose one of {', '.join(POOLINGS)}")
        last_only = combine == "single" and layers == ((n_layers if n_layers is not None else 0),)
        if how == "pooler" and not (last_only and kind in POOLED_HEADS):
            if explicit is not None:
                raise ValueError(f"{task}: pooling=pooler reads the pooler layer on the last layer's first token; "
                                 f"with layer={own.get('layer', layer)} and head {kind} choose cls, mean, max or "
                                 "attention")
            how = "cls"  # the pooler's own input
        token_level = kind in SEQUENCE_HEADS or how == "attention" or (combine == "mix" and how == "max")
        hidden = own.get("hidden", head_hidden)
        if hidden is not None and int(hidden) < 1:
            raise ValueError(f"{task}: hidden={hidden} must be a positive integer")
        out[task] = TaskSpec(kind, layers, combine, how, token_level, None if hidden is None else int(hidden))
    return out


class MultiTaskModel(nn.Module):
    """Shared encoder + per-task heads (see the module docstring).

    ``encode`` gives the shared representation; the trainer takes task gradients there for
    representation-level balancers, so it is kept a separate call from ``head``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: Mapping[str, int],
        pooling: Pooling = "cls",
        head: str = ModelSettings.head,
        dropout: float = ModelSettings.dropout,
        dropout_samples: int = ModelSettings.dropout_samples,
        *,
        layer: Any = ModelSettings.layer,
        concat_layers: int = ModelSettings.concat_layers,
        task_pooling: str | None = None,
        head_hidden: int | None = None,
        heads: Mapping[str, Mapping[str, Any]] | None = None,
        sharing: str = ModelSettings.sharing,
        private_layers: int = ModelSettings.private_layers,
        adapter_size: int = ModelSettings.adapter_size,
        adapter_placement: str = ModelSettings.adapter_placement,
        lora_r: int = ModelSettings.lora_r,
        lora_alpha: float = ModelSettings.lora_alpha,
        lora_dropout: float = ModelSettings.lora_dropout,
        lora_targets: Sequence[str] = ("query", "value"),
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        if int(dropout_samples) < 1:
            raise ValueError(f"model.dropout_samples={dropout_samples}: must be a positive integer")
        if sharing not in SHARINGS:
            raise ValueError(f"model.sharing={sharing}: choose one of {', '.join(SHARINGS)}")
        self.dropout_samples = int(dropout_samples)  # read by mtl.training.tricks.task_loss_from
        self.encoder = encoder
        self.pooling = pooling  # the encoder's pooling: every task's default
        self.num_labels = dict(num_labels)
        self.sharing = sharing
        self.max_length = None if max_length is None else int(max_length)
        self.hidden_size = hidden = int(encoder.config.hidden_size)
        n = getattr(encoder.config, "num_hidden_layers", None)
        self.n_layers: int | None = None if n is None else int(n)
        tasks = list(num_labels)
        self.specs = task_specs(
            tasks, head=head, layer=layer, concat_layers=concat_layers, pooling=task_pooling,
            encoder_pooling=str(pooling), head_hidden=head_hidden, heads=heads, n_layers=self.n_layers,
        )
        self.heads = nn.ModuleDict({
            task: TaskHead(hidden, k, kind=s.kind, dropout=dropout, combine=s.combine, n_layers=len(s.layers),
                           token_level=s.token_level, pooling=s.pooling, hidden=s.hidden)
            for task, k in num_labels.items() for s in [self.specs[task]]
        })
        for h in self.heads.values():
            init_head_(h)
        # shared-private: after the heads, so that a seed gives every structure the same heads
        self.private: nn.ModuleDict | None = None
        self._active: ActiveTask | None = None
        self._lora: LoraSwitch | None = None
        top = self.n_layers if self.n_layers is not None else 0
        self.shared_depth = top  # hidden-state index of the last shared layer
        if sharing == "private_top":
            if self.n_layers is None:
                raise ValueError("model.sharing=private_top needs an encoder that states its number of layers")
            with_pooler = any(s.pooling == "pooler" for s in self.specs.values())
            self.private = split_private_top(encoder, int(private_layers), tasks, with_pooler)
            self.shared_depth = top - int(private_layers)
        elif sharing == "adapters":
            self._active = ActiveTask()
            self.private = add_adapters(encoder, tasks, int(adapter_size), str(adapter_placement), self._active)
        elif sharing == "lora":
            self._lora = LoraSwitch(encoder, tasks, int(lora_r), float(lora_alpha), float(lora_dropout),
                                    list(lora_targets))
        self._lora_params: dict[str, list[nn.Parameter]] = {t: [] for t in tasks}
        for name, p in encoder.named_parameters():
            owner = lora_task_of(name)
            if owner in self._lora_params:
                self._lora_params[owner].append(p)
        self._plan_reads()

    # ------------------------------------------------------------------ the shared representation
    def _plan_reads(self) -> None:
        """Which shared outputs the representation holds (in a fixed order) and where each one lies in it."""
        reads: list[Read] = []

        def need(r: Read) -> None:
            if r not in reads:
                reads.append(r)

        private = self.sharing == "private_top"
        self._direct: dict[str, Read] = {}
        for task, spec in self.specs.items():
            if private:
                need(Read(self.shared_depth, TOKENS))
            for j in spec.layers:
                if j <= self.shared_depth:
                    need(Read(j, TOKENS if spec.token_level else spec.pooling))
            if not private and not spec.token_level and spec.combine == "single":
                self._direct[task] = Read(spec.layers[0], spec.pooling)
        self.reads = reads
        if any(r.what == TOKENS for r in reads) and self.max_length is None:
            raise ValueError("token-level features (private top layers, sequence heads, attention pooling) keep the "
                             "token states in the shared representation, padded to max_length: pass max_length "
                             "(encoder.max_length)")
        self._offsets: dict[Read, tuple[int, int]] = {}
        start = 0
        for r in reads:
            width = self.hidden_size * (self.max_length if r.what == TOKENS else 1)  # type: ignore[operator]
            self._offsets[r] = (start, start + width)
            start += width
        self.representation_size = start
        self._hidden_states = any(r.layer != self.shared_depth for r in reads)

    def _activate(self, task: str | None) -> None:
        if self._active is None and self._lora is None:
            return
        if task is None:
            raise ValueError(f"model.sharing={self.sharing}: the encoder pass depends on the task; call "
                             "encode(batch, task)")
        if self._active is not None:
            self._active.task = task
        if self._lora is not None:
            self._lora.activate(task)

    def _padded_tokens(self, states: Tensor, attention_mask: Tensor) -> Tensor:
        """``[B, L, H]`` -> ``[B, max_length * H]`` (zero columns after the batch's length)."""
        size = int(self.max_length)  # type: ignore[arg-type]
        length = states.shape[1]
        if length > size:
            if bool(attention_mask[:, size:].any()):
                raise ValueError(f"a batch of {length} tokens per row is longer than max_length={size}")
            states = states[:, :size]
        elif length < size:
            states = nn.functional.pad(states, (0, 0, 0, size - length))
        return states.reshape(states.shape[0], -1)

    @property
    def task_names(self) -> list[str]:
        return list(self.heads.keys())

    def encode(self, batch: Mapping[str, Tensor], task: str | None = None) -> Tensor:
        """The shared representation ``[B, D]`` of a batch (``task``: needed by ``adapters``/``lora``)."""
        inputs = {k: batch[k] for k in ENCODER_INPUTS if k in batch}
        self._activate(task)
        if self._hidden_states:
            out = self.encoder(**inputs, output_hidden_states=True)
        else:
            out = self.encoder(**inputs)
        mask = inputs["attention_mask"]
        pooled = getattr(out, "pooler_output", None)
        parts = []
        for r in self.reads:
            states = out.last_hidden_state if r.layer == self.shared_depth else out.hidden_states[r.layer]
            parts.append(self._padded_tokens(states, mask) if r.what == TOKENS else pool(states, mask, r.what, pooled))  # type: ignore[arg-type]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _read(self, rep: Tensor, r: Read, length: int) -> Tensor:
        a, b = self._offsets[r]
        x = rep if (a == 0 and b == rep.shape[1]) else rep[:, a:b]
        if r.what == TOKENS:
            x = x.reshape(x.shape[0], int(self.max_length), self.hidden_size)[:, :length]  # type: ignore[arg-type]
        return x

    def head(self, task: str, rep: Tensor, batch: Mapping[str, Tensor] | None = None) -> Tensor:
        """Task ``task``'s logits from the shared representation (``batch``: its ``attention_mask`` is what
        token-level heads and private layers need; pooled-vector heads ignore it)."""
        direct = self._direct.get(task)
        if direct is not None:
            return self.heads[task](self._read(rep, direct, 0))
        if batch is None or "attention_mask" not in batch:
            raise ValueError(f"the head of {task!r} reads token states: pass the batch (its attention_mask)")
        spec = self.specs[task]
        mask = batch["attention_mask"]
        length = min(int(mask.shape[1]), int(self.max_length or mask.shape[1]))
        mask = mask[:, :length]
        states: list[Tensor] = []
        if self.sharing == "private_top":
            assert self.private is not None
            states = self.private[task](self._read(rep, Read(self.shared_depth, TOKENS), length), mask,
                                        self.encoder.config)
        views = []
        for j in spec.layers:
            if j <= self.shared_depth:
                views.append(self._read(rep, Read(j, TOKENS if spec.token_level else spec.pooling), length))
                continue
            h = states[j - self.shared_depth - 1]
            if spec.token_level:
                views.append(h)
            elif spec.pooling == "pooler":
                views.append(self.private[task].pooler(h))  # type: ignore[index]
            else:
                views.append(pool(h, mask, spec.pooling, None))  # type: ignore[arg-type]
        return self.heads[task](views, mask)

    def forward(self, task: str, batch: Mapping[str, Tensor]) -> Tensor:
        return self.head(task, self.encode(batch, task), batch)

    # ------------------------------------------------------------------ losses
    def set_losses(self, losses: Mapping[str, nn.Module]) -> None:
        """Each task's training loss (``mtl.losses``; plain cross-entropy for a task not given one).

        Loss modules keep their class weights or priors in non-persistent buffers: the state dict, and so
        every checkpoint, is the same whatever the losses are.
        """
        unknown = set(losses) - set(self.heads)
        if unknown:
            raise KeyError(f"losses for unknown tasks {sorted(unknown)}; the model has {self.task_names}")
        self.losses = nn.ModuleDict(dict(losses))

    def task_loss(self, task: str, logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
        """The training loss of ``task`` on a batch (float32 logits): the batch mean, or ``reduction``
        (``sum``/``none``, unflooded). Labels are class indices ``[N]``, or multi-hot ``[N, C]`` for a
        multi-label task (:meth:`is_multi_label`)."""
        losses = getattr(self, "losses", None)
        if losses is not None and task in losses:
            if reduction == "mean":
                return losses[task](logits, labels)
            return losses[task](logits, labels, reduction=reduction)
        return nn.functional.cross_entropy(logits, labels, reduction=reduction)

    def is_multi_label(self, task: str) -> bool:
        """Whether ``task`` trains with a multi-label loss (``multi_label = True``, e.g. ``zlpr``): its labels are
        multi-hot and its predictions are the logits above 0 (the build checks that the task is declared
        ``type: multi_label`` exactly when its loss is multi-label)."""
        losses = getattr(self, "losses", None)
        return bool(losses is not None and task in losses and getattr(losses[task], "multi_label", False))

    # ------------------------------------------------------------------ shared / private parameters
    def shared_parameters(self) -> list[nn.Parameter]:
        """The trainable encoder weights every task's pass uses (LoRA matrices are private to their task)."""
        return [p for n, p in self.encoder.named_parameters() if p.requires_grad and lora_task_of(n) is None]

    def private_parameters(self, task: str) -> list[nn.Parameter]:
        """``task``'s trainable weights outside its head: private top layers, adapters or LoRA matrices."""
        own = [] if self.private is None else [p for p in self.private[task].parameters() if p.requires_grad]
        return own + [p for p in self._lora_params.get(task, []) if p.requires_grad]

    def head_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        """Every trainable weight private to ``task`` (all tasks: ``None``): its head and :meth:`private_parameters`.
        The gradient engine gives these their own task's gradient in the parameter mode."""
        tasks = self.task_names if task is None else [task]
        return [p for t in tasks for p in [*self.heads[t].parameters(), *self.private_parameters(t)]
                if p.requires_grad]

    # ------------------------------------------------------------------ what the structure costs
    def parameter_counts(self) -> dict[str, Any]:
        """``{"shared": trainable shared, "frozen": frozen encoder weights, "tasks": {task: {"head", "private"}}}``."""
        shared = sum(p.numel() for p in self.shared_parameters())
        frozen = sum(p.numel() for p in self.encoder.parameters() if not p.requires_grad)
        tasks = {t: {"head": sum(p.numel() for p in self.heads[t].parameters() if p.requires_grad),
                     "private": sum(p.numel() for p in self.private_parameters(t))} for t in self.task_names}
        return {"shared": shared, "frozen": frozen, "tasks": tasks}

    def token_weights(self, task: str) -> int:
        """The weights one token of ``task`` passes through (encoder layers, private layers, adapters or LoRA,
        sequence head): the parameter-based cost of a pass, ``~2 x`` this in multiply-adds per token."""
        enc = sum(p.numel() for n, p in self.encoder.named_parameters()
                  if "embeddings" not in n and "pooler" not in n and lora_task_of(n) in (None, task))
        own = 0
        if self.private is not None:
            own = sum(p.numel() for n, p in self.private[task].named_parameters() if "pooler" not in n)
        head = self.heads[task]
        seq = sum(p.numel() for p in head.seq.parameters()) if hasattr(head, "seq") else 0
        return enc + own + seq

    def baseline_token_weights(self) -> int:
        """:meth:`token_weights` of hard sharing on the same encoder (all of its layers, no adapters)."""
        enc = sum(p.numel() for n, p in self.encoder.named_parameters()
                  if "embeddings" not in n and "pooler" not in n and lora_task_of(n) is None)
        if self.sharing == "private_top":  # the top layers the tasks copied
            first = self.private[self.task_names[0]]  # type: ignore[index]
            enc += sum(p.numel() for p in first.layers.parameters())
        return enc

    def describe(self) -> str:
        """The structure, its shared representation, its parameter counts and its estimated step cost."""
        counts = self.parameter_counts()
        base = max(1, self.baseline_token_weights())
        ratio = sum(self.token_weights(t) for t in self.task_names) / (base * max(1, len(self.task_names)))
        reads = _describe_reads(self.reads)
        where = ""
        if self.sharing == "private_top":
            k = int(self.n_layers or 0) - self.shared_depth
            lower = f"layers 1..{self.shared_depth}" if self.shared_depth else "no layer"
            where = f" (the embeddings and {lower} shared, the top {k} layers private to each task)"
        lines = [
            f"model structure: sharing={self.sharing}{where}",
            f"  shared representation [B, {self.representation_size}]: {reads}",
            f"  shared parameters {counts['shared']:,} trainable" + (f" (+{counts['frozen']:,} frozen)" if counts["frozen"] else ""),
        ]
        for t, spec in self.specs.items():
            c = counts["tasks"][t]
            layers = ("last" if spec.layers == (self.n_layers or 0,) and spec.combine == "single"
                      else f"{spec.combine} of {list(spec.layers)}")
            lines.append(f"  {t}: head {spec.kind}, layers {layers}, pooling {spec.pooling}; "
                         f"{c['head']:,} head + {c['private']:,} private parameters")
        lines.append(f"  step cost estimate (parameter-based: weights per token, attention scores and pooled "
                     f"classifiers ignored): {ratio:.3f}x hard sharing")
        return "\n".join(lines)


def _describe_reads(reads: Sequence[Read]) -> str:
    """``layers 0..12 mean vectors, layer 10 token states``: the reads grouped by kind, layers as ranges."""
    groups: dict[str, list[int]] = {}
    for r in reads:
        groups.setdefault(r.what, []).append(r.layer)
    parts = []
    for what, layers in groups.items():
        kind = "token states" if what == TOKENS else f"{what} vector{'s' if len(layers) > 1 else ''}"
        layers = sorted(layers)
        spans, start = [], layers[0]
        for prev, cur in zip(layers, [*layers[1:], None], strict=True):
            if cur != prev + 1:
                spans.append(f"{start}..{prev}" if prev > start else f"{start}")
                start = cur  # type: ignore[assignment]
        parts.append(f"layer{'s' if len(layers) > 1 else ''} {', '.join(spans)} {kind}")
    return ", ".join(parts)


def model_kwargs(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``MultiTaskModel`` keyword arguments from a ``model`` config node (a mapping; unknown keys refused)."""
    known = {f for f in ModelSettings.__dataclass_fields__}
    unknown = sorted(set(model_cfg) - known)
    if unknown:
        raise ValueError(f"model config: unknown keys {unknown}")
    out = {k: v for k, v in model_cfg.items()}
    if "pooling" in out:
        out["task_pooling"] = out.pop("pooling")
    for key in ("heads",):
        if key in out and out[key] is not None:
            out[key] = {t: dict(v or {}) for t, v in dict(out[key]).items()}
    if "lora_targets" in out:
        out["lora_targets"] = list(out["lora_targets"])
    return out


def build_multitask(encoder: nn.Module, num_labels: Mapping[str, int], model_cfg: Mapping[str, Any],
                    encoder_cfg: Mapping[str, Any]) -> MultiTaskModel:
    """The model of a run from its ``model`` and ``encoder`` config nodes (plain mappings): what training
    (``mtl.training.build.build_model``) and prediction (``mtl.inference.checkpoint``) both build."""
    kwargs = model_kwargs(model_cfg)
    kwargs["dropout"] = float(kwargs.get("dropout", ModelSettings.dropout))
    kwargs["dropout_samples"] = int(kwargs.get("dropout_samples", 1))
    return MultiTaskModel(encoder, dict(num_labels), pooling=encoder_cfg.get("pooling", "cls"),
                          max_length=encoder_cfg.get("max_length"), **kwargs)

"""Hard parameter sharing: one pretrained encoder, one head per task."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from mtl.models.heads import ClassificationHead, Pooling, init_head_, pool

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class ModelSettings:
    """The ``model`` config group (registered as ``model/default`` by ``mtl.config``): per-task heads on the
    shared encoder's pooled output (the pooling is set by the encoder config)."""

    head: str = "linear"  # linear | mlp
    dropout: float = 0.1
    # multi-sample dropout (Inoue 2019): the training loss averaged over K dropout masks of each head's input
    dropout_samples: int = 1


class MultiTaskModel(nn.Module):
    """Shared encoder + per-task heads.

    ``encode`` gives the shared representation (the pooled vector every head reads); the
    trainer takes task gradients there for representation-level balancers, so it is kept a
    separate call from ``head``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: Mapping[str, int],
        pooling: Pooling = "cls",
        head: str = ModelSettings.head,
        dropout: float = ModelSettings.dropout,
        dropout_samples: int = ModelSettings.dropout_samples,
    ) -> None:
        super().__init__()
        if int(dropout_samples) < 1:
            raise ValueError(f"model.dropout_samples={dropout_samples}: must be a positive integer")
        self.dropout_samples = int(dropout_samples)  # read by mtl.training.tricks.task_loss_from
        self.encoder = encoder
        self.pooling = pooling
        self.num_labels = dict(num_labels)
        hidden = int(encoder.config.hidden_size)
        self.heads = nn.ModuleDict(
            {task: ClassificationHead(hidden, n, kind=head, dropout=dropout) for task, n in num_labels.items()}
        )
        for h in self.heads.values():
            init_head_(h)

    @property
    def task_names(self) -> list[str]:
        return list(self.heads.keys())

    def encode(self, batch: Mapping[str, Tensor]) -> Tensor:
        inputs = {k: batch[k] for k in ENCODER_INPUTS if k in batch}
        out = self.encoder(**inputs)
        pooled = getattr(out, "pooler_output", None)
        return pool(out.last_hidden_state, inputs["attention_mask"], self.pooling, pooled)

    def head(self, task: str, rep: Tensor) -> Tensor:
        return self.heads[task](rep)

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

    def forward(self, task: str, batch: Mapping[str, Tensor]) -> Tensor:
        return self.head(task, self.encode(batch))

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def head_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        heads = self.heads.values() if task is None else [self.heads[task]]
        return [p for h in heads for p in h.parameters() if p.requires_grad]

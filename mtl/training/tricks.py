"""Per-task training objectives beyond one forward pass: adversarial training (FGM, PGD) and R-Drop.

The engine (:mod:`mtl.training.engine`) computes a task's loss in two steps, so that every balancer and
gradient mode keeps working whatever the objective:

1. :func:`task_reps`: the shared representations the task's loss reads, one tensor ``[B, D]`` per encoder
   pass — one pass normally; two for R-Drop (two dropout masks); the clean pass and the adversarial pass for
   FGM/PGD (the perturbation is found here and is a constant afterwards). The pass is
   ``model.encode(batch, task)``: per-task adapters or LoRA make it depend on the task;
2. :func:`task_loss_from`: the task's loss from those representations through its head
   (``model.head(task, z, batch)``: token-level heads read the batch's attention mask).

Gradient balancers that work on the shared representation take the task's gradient on every one of its
representations (summed over passes and rows); the others see the loss as a plain scalar. The extra
passes make a step dearer: FGM and R-Drop about 2× the encoder work, PGD ``K + 1``× (``docs/training_tricks.md``
has the measured ratios).

**FGM** — Miyato, Dai & Goodfellow, "Adversarial Training Methods for Semi-Supervised Text Classification",
ICLR 2017, https://arxiv.org/abs/1605.07725: perturb the word embeddings ``e`` of each example by
``r = ε · g / ‖g‖₂``, ``g = ∇_e L(e)`` (the norm over that example's whole sequence of embeddings), and
train on ``L(e) + L(e + r)``.

**PGD** — Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018, https://arxiv.org/abs/1706.06083, on the word embeddings as in FreeLB's
baseline (Zhu et al., ICLR 2020): ``K`` ascent steps ``r ← Π_{‖r‖₂ ≤ ε}(r + α · g / ‖g‖₂)`` from ``r = 0``
(no random start, as the NLP implementations), then train on ``L(e) + L(e + r_K)``.

**Multi-sample dropout** — Inoue, "Multi-Sample Dropout for Accelerated Training and Better
Generalization", arXiv 2019, https://arxiv.org/abs/1905.09788: with ``model.dropout_samples = K > 1`` each
representation goes through its task's head ``K`` times (independent dropout masks on the head's input) and
the loss is the average of the ``K`` losses (the paper's form). Only the head is repeated, so it costs
almost nothing; at evaluation dropout is off and one pass is taken.

**R-Drop** — Liang et al., "R-Drop: Regularized Dropout for Neural Networks", NeurIPS 2021,
https://arxiv.org/abs/2106.14448: two passes with independent dropout, logits ``z¹, z²``, and
``L = ½ (ℓ(z¹) + ℓ(z²)) + (α / 4) · (KL(p¹ ‖ p²) + KL(p² ‖ p¹))`` averaged over the batch: the paper's
objective ``ℓ¹ + ℓ² + (α/2)(KL + KL)`` halved, so that the loss keeps the scale of a plain step and ``α``
means what it means in the paper. ``ℓ`` is the task's configured loss. For a multi-label task the KL is
that of the per-label Bernoulli distributions ``sigmoid(z)``, summed over the labels.

The word embeddings are the output of ``encoder.get_input_embeddings()`` (before position embeddings and
LayerNorm), reached through a forward hook, so they can be perturbed whether or not the embedding matrix
is trained (``encoder.freeze_embeddings``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

ADVERSARIAL = ("fgm", "pgd")


@dataclass(frozen=True)
class Tricks:
    """What :func:`task_reps`/:func:`task_loss_from` do (the ``trainer.adversarial``/``adv_*``/``rdrop_alpha``
    settings)."""

    adversarial: str | None = None  # None | fgm | pgd
    adv_epsilon: float = 0.1  # per example; 1.0 wrecks e5-small (docs/training_tricks.md). TrainerSettings reads these
    adv_steps: int = 3  # pgd
    adv_alpha: float = 0.03  # pgd step size
    rdrop_alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.adversarial is not None and self.adversarial not in ADVERSARIAL:
            raise ValueError(f"trainer.adversarial={self.adversarial}: choose null, fgm or pgd")
        if not self.adv_epsilon > 0:
            raise ValueError(f"trainer.adv_epsilon={self.adv_epsilon}: must be > 0")
        if int(self.adv_steps) < 1 or not self.adv_alpha > 0:
            raise ValueError(f"trainer.adv_steps={self.adv_steps}, trainer.adv_alpha={self.adv_alpha}: "
                             "need at least 1 step of positive size")
        if self.rdrop_alpha < 0:
            raise ValueError(f"trainer.rdrop_alpha={self.rdrop_alpha}: must be >= 0")
        if self.adversarial is not None and self.rdrop_alpha > 0:
            raise ValueError("trainer.adversarial and trainer.rdrop_alpha > 0 together are not supported: "
                             "choose one")

    @property
    def passes(self) -> int:
        """Encoder passes whose representations the task's loss reads."""
        return 2 if self.adversarial or self.rdrop_alpha > 0 else 1


PLAIN = Tricks()


class _EmbeddingHook:
    """A forward hook on the word-embedding module that adds ``delta`` to its output. Without a ``delta`` it
    adds a zero leaf tensor (created at the output's shape) whose gradient is the gradient on the word
    embeddings, whether or not the embedding matrix is trained."""

    def __init__(self) -> None:
        self.delta: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        if self.delta is None:
            self.delta = torch.zeros(out.shape, dtype=torch.float32, device=out.device, requires_grad=True)
        return out + self.delta.to(out.dtype)


@contextmanager
def _hooked(model: nn.Module) -> Iterator[_EmbeddingHook]:
    emb = model.encoder.get_input_embeddings()  # type: ignore[union-attr, operator]
    hook = _EmbeddingHook()
    handle = emb.register_forward_hook(hook)
    try:
        yield hook
    finally:
        handle.remove()


def _unit(g: Tensor) -> Tensor:
    """``g / ‖g‖₂`` per example (the norm over all but the first dimension); zero where ``g`` is zero."""
    g = g.float()
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def _project(r: Tensor, eps: float) -> Tensor:
    """``r`` scaled back onto the ball ``‖r‖₂ ≤ eps`` per example."""
    norm = r.flatten(1).norm(dim=1).clamp_min(1e-12)
    return r * (eps / norm).clamp(max=1.0).view(-1, *([1] * (r.dim() - 1)))


def _embedding_grad(model: nn.Module, task: str, batch: Mapping[str, Tensor], z: Tensor, hook: _EmbeddingHook,
                    retain: bool) -> Tensor:
    """``∇_e ℓ`` of the task's loss on representation ``z``, through the hook's ``delta`` (no parameter grads)."""
    loss = model.task_loss(task, model.head(task, z, batch).float(), batch["labels"])  # type: ignore[operator]
    assert hook.delta is not None
    (g,) = torch.autograd.grad(loss, hook.delta, retain_graph=retain)
    return g


def task_reps(model: nn.Module, task: str, batch: Mapping[str, Tensor], tricks: Tricks = PLAIN) -> list[Tensor]:
    """The task's shared representations: ``[encode(batch)]``; R-Drop: two passes; FGM/PGD: the clean pass
    and the pass with the adversarial perturbation ``r`` of the word embeddings (a constant)."""
    if tricks.adversarial is None:
        return [model.encode(batch, task) for _ in range(tricks.passes)]  # type: ignore[operator]
    with _hooked(model) as hook:
        z_clean = model.encode(batch, task)  # type: ignore[operator]
        g = _embedding_grad(model, task, batch, z_clean, hook, retain=True)  # the clean graph is trained on
        if tricks.adversarial == "fgm":
            r = tricks.adv_epsilon * _unit(g)
        else:
            r = torch.zeros_like(g, dtype=torch.float32)
            for k in range(int(tricks.adv_steps)):
                r = _project(r + tricks.adv_alpha * _unit(g), tricks.adv_epsilon)
                if k + 1 < int(tricks.adv_steps):  # the gradient at the perturbed point, for the next step
                    hook.delta = r.detach().requires_grad_(True)
                    g = _embedding_grad(model, task, batch, model.encode(batch, task), hook, retain=False)  # type: ignore[operator]
        hook.delta = r.detach()
        z_adv = model.encode(batch, task)  # type: ignore[operator]
    return [z_clean, z_adv]


def symmetric_kl(logits_a: Tensor, logits_b: Tensor, multi_label: bool = False) -> Tensor:
    """``mean_rows (KL(p_a ‖ p_b) + KL(p_b ‖ p_a))`` (float32) of the softmax distributions, or with
    ``multi_label`` of the per-label Bernoulli distributions ``sigmoid(z)`` (KLs summed over the labels)."""
    if multi_label:
        a, b = logits_a.float(), logits_b.float()
        pa, pb = torch.sigmoid(a), torch.sigmoid(b)
        la1, la0 = nn.functional.logsigmoid(a), nn.functional.logsigmoid(-a)
        lb1, lb0 = nn.functional.logsigmoid(b), nn.functional.logsigmoid(-b)
        kl_ab = pa * (la1 - lb1) + (1 - pa) * (la0 - lb0)
        kl_ba = pb * (lb1 - la1) + (1 - pb) * (lb0 - la0)
        return (kl_ab + kl_ba).sum(-1).mean()
    la, lb = logits_a.float().log_softmax(-1), logits_b.float().log_softmax(-1)
    kl_ab = (la.exp() * (la - lb)).sum(-1)
    kl_ba = (lb.exp() * (lb - la)).sum(-1)
    return (kl_ab + kl_ba).mean()


def task_loss_from(model: nn.Module, task: str, reps: list[Tensor], batch: Mapping[str, Tensor],
                   tricks: Tricks = PLAIN) -> tuple[Tensor, Tensor]:
    """The task's training loss from its representations (see the module docstring) and the number of
    correct predictions of the first (clean) pass."""
    labels = batch["labels"]
    logits = [model.head(task, z, batch) for z in reps]  # type: ignore[operator]
    losses = [model.task_loss(task, z.float(), labels) for z in logits]  # type: ignore[operator]
    k = int(getattr(model, "dropout_samples", 1))
    if k > 1 and model.training:  # multi-sample dropout: the loss averaged over k dropout masks of the head
        losses = [
            (loss + sum(model.task_loss(task, model.head(task, z, batch).float(), labels) for _ in range(k - 1))) / k  # type: ignore[operator]
            for loss, z in zip(losses, reps, strict=True)
        ]
    if tricks.adversarial is not None:
        loss = losses[0] + losses[1]
    elif tricks.rdrop_alpha > 0:
        kl = symmetric_kl(logits[0], logits[1], multi_label=labels.dim() == 2)
        loss = 0.5 * (losses[0] + losses[1]) + 0.25 * tricks.rdrop_alpha * kl
    else:
        loss = losses[0]
    with torch.no_grad():
        if labels.dim() == 2:  # multi-hot labels: a row is correct when every label's decision (> 0) is
            correct = ((logits[0] > 0) == (labels > 0.5)).all(-1).sum()
        else:
            correct = (logits[0].argmax(-1) == labels).sum()
    return loss, correct

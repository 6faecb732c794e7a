"""Task losses (mtl/losses): each checked against values worked out by hand with plain ``math``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import mtl.config
from mtl.losses import (
    LOSSES,
    RUN_SUPPLIED,
    Flooded,
    TaskLoss,
    build_loss,
    class_balanced_weights,
    class_counts_from_labels,
    class_prior,
    loss_options,
)

Z = [[1.0, 2.0, 0.0], [0.5, -1.0, 2.0], [0.0, 0.0, 0.0]]
Y = [1, 2, 0]
COUNTS = [6, 3, 1]
SINGLE_LABEL = ["ce", "label_smoothing", "class_balanced", "focal", "logit_adjusted"]


def logits() -> torch.Tensor:
    return torch.tensor(Z, dtype=torch.float32)


def labels() -> torch.Tensor:
    return torch.tensor(Y, dtype=torch.long)


def lse(row: list[float]) -> float:
    return math.log(sum(math.exp(v) for v in row))


def ce_rows(rows: list[list[float]] = Z, ys: list[int] = Y) -> list[float]:
    return [lse(r) - r[y] for r, y in zip(rows, ys, strict=True)]


def close(t: torch.Tensor, expected: float | list[float], tol: float = 1e-6) -> bool:
    return torch.allclose(t.double(), torch.tensor(expected, dtype=torch.float64), atol=tol, rtol=tol)


# ---------------------------------------------------------------- registry, options, config nodes


def test_every_loss_is_registered_and_unknown_names_list_them() -> None:
    assert LOSSES.names() == sorted([*SINGLE_LABEL, "zlpr"])
    with pytest.raises(KeyError, match="registered losss?: .*focal"):
        build_loss("nope", 3)


def test_unknown_option_is_refused_with_the_accepted_ones() -> None:
    with pytest.raises(TypeError, match=r"loss 'focal' got unknown option\(s\) \['gama'\]; it takes .*gamma"):
        build_loss("focal", 3, gama=2.0)
    assert build_loss(**{"name": "focal", "gamma": 1.0}, num_labels=3).gamma == 1.0  # a config node's shape
    assert loss_options("focal") == {"gamma": 2.0, "alpha": None, "alpha_mode": "none", "beta": 0.9999,
                                     "flood": 0.0}
    assert loss_options("ce") == {"flood": 0.0}


@pytest.mark.parametrize("name", [*SINGLE_LABEL, "zlpr"])
def test_config_node_from_the_signature_builds_the_default_loss(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What mtl/config.py will register as ``loss/<name>``: simple defaults only, and the node builds the loss."""
    monkeypatch.setitem(mtl.config.RUN_SUPPLIED, "loss", RUN_SUPPLIED)
    node = OmegaConf.structured(mtl.config.node_for_class("loss", name, LOSSES.get(name)))
    options = OmegaConf.to_container(node)
    assert isinstance(options, dict) and options["name"] == name
    assert {k: v for k, v in options.items() if k != "name"} == loss_options(name)
    built = build_loss(**options, num_labels=3, class_counts=COUNTS)
    assert isinstance(built, TaskLoss) and built.flood == 0.0


# ---------------------------------------------------------------- helpers


def test_class_prior_and_counts() -> None:
    assert class_counts_from_labels([0, 2, 2], 4) == [1, 0, 2, 0]
    assert class_prior([2, 0, 6]).tolist() == [0.25, 0.0, 0.75]
    assert torch.allclose(class_prior([2, 0, 6], min_count=1), torch.tensor([2 / 9, 1 / 9, 6 / 9], dtype=torch.float64))
    with pytest.raises(ValueError, match="sum to 0"):
        class_prior([0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        class_prior([1, -1])
    with pytest.raises(ValueError, match="labels must lie in"):
        class_counts_from_labels([0, 3], 3)


def test_class_balanced_weights_by_hand() -> None:
    beta, n = 0.99, [100, 10, 1]
    raw = [(1 - beta) / (1 - beta**k) for k in n]
    assert close(class_balanced_weights(n, "effective_number", beta), [3 * r / sum(raw) for r in raw], 1e-12)
    inv = [1 / 100, 1 / 10, 1.0]
    assert close(class_balanced_weights(n, "inverse_frequency"), [3 * r / sum(inv) for r in inv], 1e-12)
    assert close(class_balanced_weights(n, "effective_number", 0.0), [1.0, 1.0, 1.0], 1e-12)
    # a zero count is counted as one example: finite, the largest weight
    inv0 = [1 / 5, 1.0, 1.0]
    assert close(class_balanced_weights([5, 0, 1], "inverse_frequency"), [3 * r / sum(inv0) for r in inv0], 1e-12)
    w = class_balanced_weights([5, 0, 1], "effective_number", 0.9999)
    assert torch.isfinite(w).all() and w.mean().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown class-weight mode"):
        class_balanced_weights(n, "sqrt")


# ---------------------------------------------------------------- the losses


def test_ce_by_hand_and_exactly_torch() -> None:
    loss = build_loss("ce", 3)
    rows = ce_rows()
    assert close(loss(logits(), labels()), sum(rows) / 3)
    assert close(loss(logits(), labels(), reduction="none"), rows)
    assert close(loss(logits(), labels(), reduction="sum"), sum(rows))
    assert torch.equal(loss(logits(), labels()), F.cross_entropy(logits(), labels()))


def test_label_smoothing_by_hand_and_exactly_torch() -> None:
    eps = 0.2
    loss = build_loss("label_smoothing", 3, epsilon=eps)
    rows = [(1 - eps) * (lse(r) - r[y]) + eps * sum(lse(r) - v for v in r) / 3 for r, y in zip(Z, Y, strict=True)]
    assert close(loss(logits(), labels(), reduction="none"), rows)
    assert close(loss(logits(), labels()), sum(rows) / 3)
    assert torch.equal(loss(logits(), labels()), F.cross_entropy(logits(), labels(), label_smoothing=eps))
    assert torch.equal(build_loss("label_smoothing", 3, epsilon=0.0)(logits(), labels()),
                       F.cross_entropy(logits(), labels()))
    with pytest.raises(ValueError, match="epsilon must lie in"):
        build_loss("label_smoothing", 3, epsilon=1.5)


@pytest.mark.parametrize("mode", ["effective_number", "inverse_frequency"])
def test_class_balanced_is_torchs_weighted_mean(mode: str) -> None:
    beta = 0.9
    if mode == "effective_number":
        raw = [(1 - beta) / (1 - beta**k) for k in COUNTS]
    else:
        raw = [1 / k for k in COUNTS]
    w = [3 * r / sum(raw) for r in raw]
    loss = build_loss("class_balanced", 3, COUNTS, mode=mode, beta=beta)
    rows = ce_rows()
    assert close(loss.weight, w)
    assert close(loss(logits(), labels(), reduction="none"), [w[y] * r for y, r in zip(Y, rows, strict=True)])
    weighted_mean = sum(w[y] * r for y, r in zip(Y, rows, strict=True)) / sum(w[y] for y in Y)
    assert close(loss(logits(), labels()), weighted_mean)
    assert torch.equal(loss(logits(), labels()), F.cross_entropy(logits(), labels(), weight=loss.weight))


def test_focal_by_hand() -> None:
    gamma = 2.0
    rows = ce_rows()
    p = [math.exp(-r) for r in rows]
    focal = [(1 - pi) ** gamma * r for pi, r in zip(p, rows, strict=True)]
    loss = build_loss("focal", 3, gamma=gamma)
    assert close(loss(logits(), labels(), reduction="none"), focal)
    assert close(loss(logits(), labels()), sum(focal) / 3)
    # gamma 0 without alpha is cross-entropy
    assert close(build_loss("focal", 3, gamma=0.0)(logits(), labels()), sum(rows) / 3)
    # per-class alpha multiplies each row; the mean is the plain mean over rows
    alpha = [0.25, 1.0, 2.0]
    with_alpha = build_loss("focal", 3, gamma=gamma, alpha=alpha)
    expected = [alpha[y] * f for y, f in zip(Y, focal, strict=True)]
    assert close(with_alpha(logits(), labels(), reduction="none"), expected)
    assert close(with_alpha(logits(), labels()), sum(expected) / 3)


def test_focal_alpha_from_counts() -> None:
    inv = [1 / k for k in COUNTS]
    alpha = [3 * a / sum(inv) for a in inv]
    loss = build_loss("focal", 3, COUNTS, gamma=1.0, alpha_mode="inverse_frequency")
    rows = ce_rows()
    expected = [alpha[y] * (1 - math.exp(-r)) * r for y, r in zip(Y, rows, strict=True)]
    assert close(loss(logits(), labels(), reduction="none"), expected)
    with pytest.raises(ValueError, match="not both"):
        build_loss("focal", 3, COUNTS, alpha=[1, 1, 1], alpha_mode="inverse_frequency")
    with pytest.raises(ValueError, match="alpha must be 3"):
        build_loss("focal", 3, alpha=[1, 1])


def test_focal_stays_finite_when_a_row_is_certain() -> None:
    z = torch.tensor([[60.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    for gamma in (0.5, 2.0):
        out = build_loss("focal", 3, gamma=gamma)(z, torch.tensor([0, 1]))
        (grad,) = torch.autograd.grad(out, z)
        assert torch.isfinite(out) and torch.isfinite(grad).all()


def test_logit_adjusted_by_hand() -> None:
    tau = 1.0
    prior = [c / sum(COUNTS) for c in COUNTS]
    shifted = [[v + tau * math.log(pc) for v, pc in zip(r, prior, strict=True)] for r in Z]
    rows = ce_rows(shifted)
    loss = build_loss("logit_adjusted", 3, COUNTS, tau=tau)
    assert close(loss(logits(), labels(), reduction="none"), rows)
    assert close(loss(logits(), labels()), sum(rows) / 3)
    half = build_loss("logit_adjusted", 3, COUNTS, tau=0.5)
    shifted = [[v + 0.5 * math.log(pc) for v, pc in zip(r, prior, strict=True)] for r in Z]
    assert close(half(logits(), labels()), sum(ce_rows(shifted)) / 3)
    assert torch.equal(build_loss("logit_adjusted", 3, COUNTS, tau=0.0)(logits(), labels()),
                       F.cross_entropy(logits(), labels()))


def test_logit_adjusted_zero_count_counts_as_one() -> None:
    counts = [3, 0, 1]
    prior = [3 / 5, 1 / 5, 1 / 5]
    shifted = [[v + math.log(pc) for v, pc in zip(r, prior, strict=True)] for r in Z]
    out = build_loss("logit_adjusted", 3, counts)(logits(), labels())  # label 1 has zero training count
    assert torch.isfinite(out) and close(out, sum(ce_rows(shifted)) / 3)


@pytest.mark.parametrize(("name", "options", "option"), [
    ("class_balanced", {}, "mode='effective_number'"),
    ("class_balanced", {"mode": "inverse_frequency"}, "mode='inverse_frequency'"),
    ("logit_adjusted", {}, "tau=1.0"),
    ("focal", {"alpha_mode": "effective_number"}, "alpha_mode='effective_number'"),
])
@pytest.mark.parametrize("counts", [None, []])
def test_losses_needing_counts_name_the_loss_and_option(name: str, options: dict, option: str,
                                                         counts: list | None) -> None:
    with pytest.raises(ValueError, match=rf"loss '{name}' \({option}\) needs class_counts"):
        build_loss(name, 3, counts, **options)


def test_counts_must_match_the_labels() -> None:
    with pytest.raises(ValueError, match="class_counts has 2 entries for 3 labels"):
        build_loss("class_balanced", 3, [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        build_loss("logit_adjusted", 3, [1, -2, 3])
    with pytest.raises(ValueError, match=r"logits must be \[N, 3\]"):
        build_loss("ce", 3)(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_zlpr_by_hand() -> None:
    s = [[2.0, -1.0, 0.5], [-0.5, 1.0, 3.0], [1.0, -2.0, 0.0]]
    t = [[1, 0, 1], [0, 0, 0], [1, 1, 1]]
    rows = [
        math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(-2.0) + math.exp(-0.5)),
        math.log(1 + math.exp(-0.5) + math.exp(1.0) + math.exp(3.0)) + 0.0,  # no positives
        0.0 + math.log(1 + math.exp(-1.0) + math.exp(2.0) + math.exp(0.0)),  # no negatives
    ]
    loss = build_loss("zlpr", 3)
    assert loss.multi_label
    for targets in (torch.tensor(t), torch.tensor(t, dtype=torch.float32), torch.tensor(t, dtype=torch.bool)):
        assert close(loss(torch.tensor(s), targets, reduction="none"), rows)
        assert close(loss(torch.tensor(s), targets), sum(rows) / 3)
    with pytest.raises(ValueError, match="multi-hot"):
        loss(torch.tensor(s), torch.tensor([0, 1, 2]))


def test_zlpr_is_stable_for_large_scores() -> None:
    s = torch.tensor([[100.0, -100.0], [-100.0, 100.0]], requires_grad=True)
    out = build_loss("zlpr", 2)(s, torch.tensor([[1, 0], [1, 0]]))
    # row 0 right by a mile: ~0; row 1 wrong by 100 each way: log(1+e^100) + log(1+e^100) ~ 200
    assert out.item() == pytest.approx((0.0 + 200.0) / 2, abs=1e-4)
    (grad,) = torch.autograd.grad(out, s)
    assert torch.isfinite(grad).all()


# ---------------------------------------------------------------- flooding


def test_flood_option_by_hand_and_gradient_reversal() -> None:
    mean_ce = sum(ce_rows()) / 3
    high, low = mean_ce + 0.5, mean_ce - 0.5
    z = logits().requires_grad_()
    plain = build_loss("ce", 3)(z, labels())
    (g_plain,) = torch.autograd.grad(plain, z)
    below = build_loss("ce", 3, flood=high)(z, labels())  # L < b: 2b - L, gradient reversed
    assert close(below, 2 * high - mean_ce)
    (g_below,) = torch.autograd.grad(below, z)
    assert torch.allclose(g_below, -g_plain)
    above = build_loss("ce", 3, flood=low)(z, labels())  # L > b: unchanged
    assert close(above, mean_ce)
    (g_above,) = torch.autograd.grad(above, z)
    assert torch.allclose(g_above, g_plain)
    # per-row and summed values are not flooded
    assert close(build_loss("ce", 3, flood=high)(logits(), labels(), reduction="none"), ce_rows())
    with pytest.raises(ValueError, match="flood must be"):
        build_loss("ce", 3, flood=-1.0)


@pytest.mark.parametrize("name", SINGLE_LABEL)
def test_flooded_wrapper_equals_the_flood_option(name: str) -> None:
    b = 5.0
    wrapped = Flooded(build_loss(name, 3, COUNTS), b)
    option = build_loss(name, 3, COUNTS, flood=b)
    assert torch.equal(wrapped(logits(), labels()), option(logits(), labels()))
    assert torch.equal(wrapped(logits(), labels(), reduction="none"), option(logits(), labels(), reduction="none"))
    with pytest.raises(ValueError, match="floods already"):
        Flooded(option, b)


def test_flooded_wraps_a_plain_function() -> None:
    wrapped = Flooded(F.cross_entropy, 3.0)
    assert close(wrapped(logits(), labels()), 6.0 - sum(ce_rows()) / 3)
    with pytest.raises(ValueError, match="needs a TaskLoss"):
        wrapped(logits(), labels(), reduction="none")
    assert Flooded(build_loss("zlpr", 3), 0.1).multi_label


# ---------------------------------------------------------------- every loss


@pytest.mark.parametrize("name", SINGLE_LABEL)
def test_every_single_label_loss_trains_and_reduces_consistently(name: str) -> None:
    torch.manual_seed(0)
    z = torch.randn(7, 3, requires_grad=True)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    loss = build_loss(name, 3, class_counts_from_labels(y, 3))
    rows = loss(z, y, reduction="none")
    assert rows.shape == (7,) and torch.isfinite(rows).all()
    assert torch.allclose(loss(z, y, reduction="sum"), rows.sum())
    if name != "class_balanced":  # its mean is the weighted mean (checked above)
        assert torch.allclose(loss(z, y), rows.mean())
    (grad,) = torch.autograd.grad(loss(z, y), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reduction must be one of"):
        loss(z, y, reduction="avg")

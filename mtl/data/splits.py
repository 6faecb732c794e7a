"""Train/dev splits and seeded, label-stratified subsampling.

The Tianchi train files contain the CLUE dev sets (OCNLI ids >= 50437, TNEWS ids >= 53360), so those ids
are held out as dev (``id_at_least``); OCEMOTION has no official dev set and gets a seeded stratified
fraction; the CLUE releases ship separate files (``files``). Multi-label tasks, whose rows carry sets of
labels, use ``random_fraction`` (a seeded, unstratified fraction). Every method checks that no id is on
both sides.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from mtl.data.readers import Example

__all__ = [
    "SPLIT_METHODS",
    "check_disjoint",
    "files",
    "id_at_least",
    "random_fraction",
    "stratified_fraction",
    "stratified_subsample",
]

log = logging.getLogger(__name__)

SPLIT_METHODS = ("id_at_least", "stratified_fraction", "random_fraction", "files")


def check_disjoint(train: Sequence[Example], dev: Sequence[Example], source: str = "") -> None:
    """Raise if any id is in both train and dev (leakage would inflate every dev metric)."""
    overlap = {e.id for e in train} & {e.id for e in dev}
    if overlap:
        shown = sorted(overlap)[:5]
        raise ValueError(f"{source or 'split'}: {len(overlap)} ids are in both train and dev, e.g. {shown}")


def id_at_least(examples: Sequence[Example], threshold: int) -> tuple[list[Example], list[Example]]:
    """Rows whose integer id is ``>= threshold`` go to dev, the rest to train (file order kept)."""
    train: list[Example] = []
    dev: list[Example] = []
    for ex in examples:
        try:
            value = int(ex.id)
        except ValueError:
            raise ValueError(
                f"split id_at_least needs integer ids; line {ex.line} has id {ex.id!r}"
            ) from None
        (dev if value >= threshold else train).append(ex)
    check_disjoint(train, dev, "id_at_least")
    return train, dev


def _label_key(ex: Example) -> int | tuple[int, ...]:
    """What stratification groups by: the label (a multi-label row: its label set), -1 when unlabelled."""
    return -1 if ex.label is None else ex.label


def random_fraction(
    examples: Sequence[Example], fraction: float = 0.1, seed: int = 0, source: str = ""
) -> tuple[list[Example], list[Example]]:
    """A seeded dev split of ``fraction`` of the rows (at least one row on each side), not stratified.

    For multi-label tasks, where a row carries a set of labels and stratifying by one label is undefined.
    Both sides keep file order. ``source`` starts every error message.
    """
    where = f"{source}: " if source else ""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{where}dev fraction must be in (0, 1), got {fraction}")
    n = len(examples)
    if n < 2:
        raise ValueError(f"{where}cannot split {n} example(s) into train and dev")
    n_dev = min(max(1, math.ceil(fraction * n - 1e-9)), n - 1)
    dev_set = set(np.random.default_rng(seed).permutation(n)[:n_dev].tolist())
    train = [examples[i] for i in range(n) if i not in dev_set]
    dev = [examples[i] for i in range(n) if i in dev_set]
    check_disjoint(train, dev, "random_fraction")
    return train, dev


def stratified_fraction(
    examples: Sequence[Example], fraction: float = 0.1, seed: int = 0, source: str = ""
) -> tuple[list[Example], list[Example]]:
    """A seeded dev split of ``fraction`` of the rows, stratified by label (sklearn ``train_test_split``).

    On tiny data the dev size is raised to the number of classes when that is possible, so every class is
    in dev; classes with a single row stay in train (sklearn cannot stratify them). Both sides keep file order.
    ``source`` (e.g. the task and its file) starts every error message.
    """
    from sklearn.model_selection import train_test_split

    where = f"{source}: " if source else ""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{where}dev fraction must be in (0, 1), got {fraction}")
    n = len(examples)
    if n < 2:
        raise ValueError(f"{where}cannot split {n} example(s) into train and dev")
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[_label_key(ex)].append(i)
    singletons = [idx[0] for idx in by_label.values() if len(idx) == 1]
    pool = [i for idx in by_label.values() if len(idx) > 1 for i in idx]
    n_classes = sum(1 for idx in by_label.values() if len(idx) > 1)
    n_dev = max(1, math.ceil(fraction * n - 1e-9))
    if n_classes and n_dev < n_classes <= len(pool) - n_classes:
        log.info(
            "dev fraction %.3f of %d rows is fewer than %d classes; using %d dev rows",
            fraction,
            n,
            n_classes,
            n_classes,
        )
        n_dev = n_classes
    if singletons:
        log.warning(
            "%s%d label(s) with a single example kept in train only (cannot stratify)", where, len(singletons)
        )
    if n_dev >= len(pool) or len(pool) - n_dev < n_classes:
        raise ValueError(
            f"{where}cannot take {n_dev} dev rows from {n} examples stratified over {n_classes} labels"
        )
    pool.sort()
    train_idx, dev_idx = train_test_split(
        pool,
        test_size=n_dev,
        random_state=seed,
        shuffle=True,
        stratify=[_label_key(examples[i]) for i in pool],
    )
    train_set = set(train_idx) | set(singletons)
    dev_set = set(dev_idx)
    train = [examples[i] for i in range(n) if i in train_set]
    dev = [examples[i] for i in range(n) if i in dev_set]
    check_disjoint(train, dev, "stratified_fraction")
    return train, dev


def files(train: Sequence[Example], dev: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """Separate train and dev files: ids are namespaced ``train:<id>`` / ``dev:<id>``.

    Each CLUE file numbers its rows from 0, so raw ids collide across files; the prefix keeps them apart.
    """
    train_out = [replace(e, id=f"train:{e.id}") for e in train]
    dev_out = [replace(e, id=f"dev:{e.id}") for e in dev]
    check_disjoint(train_out, dev_out, "files")
    return train_out, dev_out


def stratified_subsample(examples: Sequence[Example], n: int | None, seed: int = 0) -> list[Example]:
    """A seeded subset of ``n`` rows (all when ``n`` is None or not smaller), stratified by label (a
    multi-label row: by its label set).

    Each label gets at least one row when ``n`` is at least the number of labels; the rest is shared in
    proportion to label frequency (largest remainders). File order is kept, so results are reproducible.
    """
    if n is None or n >= len(examples):
        return list(examples)
    if n <= 0:
        raise ValueError(f"subsample size must be positive or null, got {n}")
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[_label_key(ex)].append(i)
    labels = sorted(by_label)
    counts = np.array([len(by_label[k]) for k in labels])
    if n < len(labels):
        chosen = rng.choice(len(labels), size=n, replace=False, p=counts / counts.sum())
        quota = np.zeros(len(labels), dtype=int)
        quota[chosen] = 1
    else:
        quota = np.ones(len(labels), dtype=int)
        rest = n - len(labels)
        extra = counts - 1
        if rest > 0 and extra.sum() > 0:
            share = extra * rest / extra.sum()
            add = np.minimum(np.floor(share).astype(int), extra)
            left = rest - int(add.sum())
            order = np.argsort(-(share - np.floor(share)), kind="stable")
            for j in order:
                if left <= 0:
                    break
                if add[j] < extra[j]:
                    add[j] += 1
                    left -= 1
            quota += add
    picked: list[int] = []
    for k, q in zip(labels, quota, strict=True):
        if q:
            picked.extend(rng.choice(by_label[k], size=int(q), replace=False).tolist())
    picked.sort()
    return [examples[i] for i in picked]

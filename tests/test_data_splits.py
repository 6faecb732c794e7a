"""Splits: id threshold, stratified fraction, separate files, subsampling; train and dev never share an id."""

from __future__ import annotations

from collections import Counter

import pytest

from mtl.data.readers import Example
from mtl.data.splits import check_disjoint, files, id_at_least, stratified_fraction, stratified_subsample


def make(ids: list[int], labels: list[int | None]) -> list[Example]:
    return [
        Example(str(i), (f"text {i}",), y, line=n + 1)
        for n, (i, y) in enumerate(zip(ids, labels, strict=True))
    ]


def ids(examples: list[Example]) -> set[str]:
    return {e.id for e in examples}


def test_id_at_least_threshold_boundary() -> None:
    examples = make(list(range(50430, 50445)), [i % 3 for i in range(15)])
    train, dev = id_at_least(examples, 50437)
    assert ids(dev) == {str(i) for i in range(50437, 50445)}
    assert ids(train) == {str(i) for i in range(50430, 50437)}
    assert "50436" in ids(train) and "50437" in ids(dev)
    assert not ids(train) & ids(dev)
    assert [e.id for e in train] == sorted(ids(train), key=int)  # file order kept


def test_id_at_least_needs_integer_ids() -> None:
    with pytest.raises(ValueError, match="integer ids; line 2 has id 'x7'"):
        id_at_least([Example("1", ("a",), 0, 1), Example("x7", ("b",), 0, 2)], 5)


def test_files_namespaces_ids() -> None:
    train, dev = files(make([0, 1, 2], [0, 1, 0]), make([0, 1], [1, 0]))
    assert [e.id for e in train] == ["train:0", "train:1", "train:2"]
    assert [e.id for e in dev] == ["dev:0", "dev:1"]
    assert not ids(train) & ids(dev)


def test_check_disjoint_raises_on_overlap() -> None:
    with pytest.raises(ValueError, match="1 ids are in both train and dev"):
        check_disjoint(make([1, 2], [0, 0]), make([2, 3], [0, 0]), "t")


def imbalanced(n: int = 1000) -> list[Example]:
    # 60 % / 30 % / 10 % over three labels, interleaved
    labels = [0 if i % 10 < 6 else 1 if i % 10 < 9 else 2 for i in range(n)]
    return make(list(range(n)), labels)  # type: ignore[arg-type]


def test_stratified_fraction_proportions() -> None:
    examples = imbalanced()
    train, dev = stratified_fraction(examples, 0.1, seed=0)
    assert len(dev) == 100 and len(train) == 900
    assert not ids(train) & ids(dev)
    assert ids(train) | ids(dev) == ids(examples)
    counts = Counter(e.label for e in dev)
    assert counts == {0: 60, 1: 30, 2: 10}
    assert [int(e.id) for e in dev] == sorted(int(e.id) for e in dev)  # file order kept


def test_stratified_fraction_is_seeded() -> None:
    examples = imbalanced()
    _, dev_a = stratified_fraction(examples, 0.1, seed=3)
    _, dev_b = stratified_fraction(examples, 0.1, seed=3)
    _, dev_c = stratified_fraction(examples, 0.1, seed=4)
    assert [e.id for e in dev_a] == [e.id for e in dev_b]
    assert ids(dev_a) != ids(dev_c)


def test_stratified_fraction_on_tiny_data_keeps_every_class_in_dev() -> None:
    # 60 rows over 7 classes: 10 % would be 6 dev rows, fewer than the classes; raised to 7, one per class.
    examples = make(list(range(60)), [i % 7 for i in range(60)])
    train, dev = stratified_fraction(examples, 0.1, seed=0)
    assert len(dev) == 7
    assert Counter(e.label for e in dev) == dict.fromkeys(range(7), 1)
    assert len(train) + len(dev) == 60


def test_stratified_fraction_singleton_class_stays_in_train() -> None:
    examples = make(list(range(41)), [i % 2 for i in range(40)] + [2])
    train, dev = stratified_fraction(examples, 0.25, seed=0)
    assert "40" in ids(train)
    assert not ids(train) & ids(dev)
    assert len(train) + len(dev) == 41


def test_stratified_fraction_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="fraction"):
        stratified_fraction(imbalanced(20), 1.5)


def test_subsample_keeps_all_labels_and_is_seeded() -> None:
    examples = imbalanced()
    small = stratified_subsample(examples, 12, seed=1)
    assert len(small) == 12
    counts = Counter(e.label for e in small)
    assert set(counts) == {0, 1, 2}
    assert counts[0] > counts[1] >= counts[2] >= 1  # proportional, but every class present
    assert [e.id for e in small] == [e.id for e in stratified_subsample(examples, 12, seed=1)]
    assert [e.id for e in small] != [e.id for e in stratified_subsample(examples, 12, seed=2)]
    assert [int(e.id) for e in small] == sorted(int(e.id) for e in small)


def test_subsample_rare_classes_and_edges() -> None:
    # 15 classes, one with a single row: a 15-row sample has exactly one of each
    labels = [i % 14 for i in range(200)] + [14]
    examples = make(list(range(201)), labels)  # type: ignore[arg-type]
    small = stratified_subsample(examples, 15, seed=0)
    assert sorted(e.label for e in small) == list(range(15))  # type: ignore[type-var]
    assert stratified_subsample(examples, None) == examples
    assert stratified_subsample(examples, 10_000) == examples
    assert len(stratified_subsample(examples, 3, seed=0)) == 3  # fewer rows than classes still works
    with pytest.raises(ValueError):
        stratified_subsample(examples, 0)

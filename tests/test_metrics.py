"""Macro-F1 over the full label set, the average, and the majority-class floor, checked by hand."""

import math

from mtl.evaluation.metrics import average_macro_f1, format_table, majority_macro_f1, task_scores


def test_macro_f1_counts_unpredicted_classes_as_zero() -> None:
    # labels 0..2; class 2 never appears nor is predicted -> its F1 is 0 and still averaged in
    y_true, y_pred = [0, 0, 1, 1], [0, 1, 1, 1]
    # class 0: P=1, R=.5 -> F1=2/3 ; class 1: P=2/3, R=1 -> F1=.8 ; class 2: 0
    s = task_scores(y_true, y_pred, num_labels=3)
    assert math.isclose(s.macro_f1, (2 / 3 + 0.8 + 0.0) / 3)
    assert math.isclose(s.accuracy, 0.75)


def test_average_and_majority() -> None:
    a = task_scores([0, 1], [0, 1], 2)
    b = task_scores([0, 1], [1, 1], 2)  # class 0 F1 0, class 1 F1 2/3
    assert math.isclose(average_macro_f1({"a": a, "b": b}), (1.0 + 1 / 3) / 2)
    # majority of [0,0,0,1] with 2 labels: predict 0 -> F1_0 = 2*.75/(1.75)=6/7, F1_1 = 0
    assert math.isclose(majority_macro_f1([0, 0, 0, 1], 2), (6 / 7) / 2)
    assert "average" in format_table({"a": a, "b": b})

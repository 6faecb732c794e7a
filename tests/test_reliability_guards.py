"""The non-finite guard counts per task: a task that is always broken stops the run even when other tasks'
good steps come in between (one task per step); the warning names the task; the counters are resumed;
the ``static`` balancer refuses non-finite weights."""

from __future__ import annotations

import logging

import pytest

from mtl.balancers import build_balancer
from mtl.training.trainer import TrainerState, TrainingStopped
from tests.test_guards import nan_head
from tests.toy_trainer import single_thread, toy_trainer


@pytest.fixture(autouse=True)
def _single_thread():
    yield from single_thread()


def test_a_task_that_is_always_nonfinite_stops_the_run_with_one_task_per_step(tmp_path) -> None:
    # round robin: a, b, c, a, b, c, ...: c (steps 2, 5, 8) never trains, a and b train in between
    tr = toy_trainer(tmp_path, sampler="round_robin", max_steps=30, eval_every=30, max_consecutive_nonfinite=3)
    nan_head(tr, "c", None)
    with pytest.raises(TrainingStopped, match=r"3 consecutive steps of task c .*task c at step 8"):
        tr.fit()
    assert tr.state.consecutive_nonfinite_by_task == {"a": 0, "b": 0, "c": 3}
    assert tr.state.nonfinite_skipped == 3


def test_a_good_step_of_a_task_resets_only_its_own_count(tmp_path) -> None:
    tr = toy_trainer(tmp_path, sampler="round_robin", max_steps=12, eval_every=12, max_consecutive_nonfinite=3)
    nan_head(tr, "c", {2, 5, 11})  # c fails twice, trains at step 8, fails again: never 3 in a row
    tr.fit()
    assert tr.step == 12 and tr.state.nonfinite_skipped == 3
    assert tr.state.consecutive_nonfinite_by_task["c"] == 1


def test_the_warning_names_the_task(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    tr = toy_trainer(tmp_path, max_steps=3, eval_every=3)
    nan_head(tr, "b", {1})
    with caplog.at_level(logging.WARNING, logger="mtl.training.trainer"):
        tr.fit()
    assert "step 1: non-finite loss (task b); step skipped" in caplog.text


def test_a_nonfinite_gradient_with_finite_losses_names_the_steps_tasks(tmp_path, caplog) -> None:
    tr = toy_trainer(tmp_path, max_steps=3, eval_every=3)
    tr.model.encoder.lin.weight.register_hook(lambda g: g * float("nan") if tr.step == 1 else g)
    with caplog.at_level(logging.WARNING, logger="mtl.training.trainer"):
        tr.fit()
    assert "non-finite gradient with finite losses (task a, b, c)" in caplog.text
    assert "the gradient (finite losses)" not in caplog.text


def test_the_per_task_counts_are_saved_and_restored(tmp_path) -> None:
    first = toy_trainer(tmp_path / "a", sampler="round_robin", max_steps=6, eval_every=6, max_consecutive_nonfinite=3)
    nan_head(first, "c", None)
    first.fit()  # c failed at steps 2 and 5: two in a row, no stop yet
    state = first.state_dict()
    assert state["trainer"]["consecutive_nonfinite_by_task"] == {"a": 0, "b": 0, "c": 2}
    assert TrainerState.from_dict(state["trainer"]).consecutive_nonfinite_by_task == {"a": 0, "b": 0, "c": 2}
    second = toy_trainer(tmp_path / "b", sampler="round_robin", max_steps=30, eval_every=30,
                         max_consecutive_nonfinite=3)
    second.load_state_dict(state)
    nan_head(second, "c", None)
    with pytest.raises(TrainingStopped, match="task c at step 8"):  # the third in a row, across the resume
        second.fit()


@pytest.mark.parametrize(
    "kwargs",
    [{"weights": {"a": float("inf")}}, {"weights": {"b": float("nan")}}, {"default": float("inf")},
     {"default": -1.0}, {"weights": {"a": "x"}}],
    ids=["inf", "nan", "inf-default", "negative-default", "not-a-number"],
)
def test_static_balancer_refuses_non_finite_weights(kwargs) -> None:
    with pytest.raises(ValueError, match="finite non-negative"):
        build_balancer("static", ["a", "b", "c"], **kwargs)

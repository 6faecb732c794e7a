"""Task samplers: formulas, caps, schedules, reproducibility, resume, epoch length, registry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mtl.config import default_node
from mtl.samplers import (
    SAMPLERS,
    ProbabilitySampler,
    TaskSampler,
    build_sampler,
    register_sampler,
    sampler_options,
)

SIZES = {"a": 100, "b": 400, "c": 1600}
N_DRAWS = 20_000
REPO = Path(__file__).resolve().parents[1]
BUILT_INS = ("proportional", "uniform", "temperature", "annealed", "round_robin", "all_tasks")


def realised(sampler: TaskSampler, n: int = N_DRAWS, max_steps: int = N_DRAWS) -> dict[str, float]:
    for step in range(n):
        sampler.draw(step, max_steps)
    return sampler.proportions()


def assert_binomial_close(observed: dict[str, float], expected: dict[str, float], n: int) -> None:
    """Each realised share is a binomial proportion: std = sqrt(p(1-p)/n). Allow 5 std
    (two-sided p ~ 6e-7 per task), so a correct sampler essentially never fails, while an
    off-by-formula one (e.g. proportional instead of T=2: 0.048 vs 0.143) fails by >30 std."""
    for t, p in expected.items():
        std = math.sqrt(p * (1 - p) / n)
        assert abs(observed[t] - p) <= 5 * std, (t, observed[t], p, std)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("proportional", {}, {"a": 1 / 21, "b": 4 / 21, "c": 16 / 21}),
        ("uniform", {}, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}),
        # sqrt sizes: 10, 20, 40
        ("temperature", {"temperature": 2.0}, {"a": 10 / 70, "b": 20 / 70, "c": 40 / 70}),
        ("temperature", {"temperature": 1.0}, {"a": 1 / 21, "b": 4 / 21, "c": 16 / 21}),
    ],
)
def test_realised_proportions_match_formula(name: str, kwargs: dict, expected: dict[str, float]) -> None:
    s = build_sampler(name, SIZES, seed=0, **kwargs)
    np.testing.assert_allclose(s.probabilities(0, 1), [expected[t] for t in SIZES], rtol=1e-12)
    assert_binomial_close(realised(s), expected, N_DRAWS)


def test_temperature_limits() -> None:
    big = build_sampler("temperature", SIZES, temperature=float("inf"))
    np.testing.assert_allclose(big.probabilities(0, 1), [1 / 3] * 3)
    # Log-space computation: huge sizes and a tiny temperature do not overflow to nan.
    cold = build_sampler("temperature", {"x": 10**9, "y": 10**8}, temperature=0.01)
    assert np.all(np.isfinite(cold.probabilities(0, 1)))
    assert cold.probabilities(0, 1)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="temperature"):
        build_sampler("temperature", SIZES, temperature=0.0)


def test_cap_applies_to_probabilities_and_epoch() -> None:
    s = build_sampler("proportional", SIZES, max_examples_per_task=400)
    assert s.sizes == {"a": 100, "b": 400, "c": 400}
    assert s.raw_sizes == SIZES
    np.testing.assert_allclose(s.probabilities(0, 1), [1 / 9, 4 / 9, 4 / 9])
    assert s.steps_per_epoch(100) == 9
    t = build_sampler("temperature", SIZES, temperature=2.0, max_examples_per_task=400)
    np.testing.assert_allclose(t.probabilities(0, 1), [10 / 50, 20 / 50, 20 / 50])
    with pytest.raises(ValueError, match="max_examples_per_task"):
        build_sampler("proportional", SIZES, max_examples_per_task=0)


def test_annealed_probabilities_at_start_middle_end() -> None:
    s = build_sampler("annealed", SIZES, t_start=1.0, t_end=5.0)
    max_steps = 1000
    # start: T=1 -> proportional 1:4:16
    assert s.temperature_at(0, max_steps) == 1.0
    np.testing.assert_allclose(s.probabilities(0, max_steps), [1 / 21, 4 / 21, 16 / 21])
    # middle: T=3 -> n^(1/3) = 100^(1/3) * (1, 4^(1/3), 16^(1/3))
    assert s.temperature_at(500, max_steps) == 3.0
    w = np.array([1.0, 4 ** (1 / 3), 16 ** (1 / 3)])
    np.testing.assert_allclose(s.probabilities(500, max_steps), w / w.sum())
    # end (and beyond): T=5 -> (1, 4^(1/5), 16^(1/5))
    w = np.array([1.0, 4 ** (1 / 5), 16 ** (1 / 5)])
    np.testing.assert_allclose(s.probabilities(max_steps, max_steps), w / w.sum())
    np.testing.assert_allclose(s.probabilities(5 * max_steps, max_steps), w / w.sum())
    # anneal_steps shortens the schedule: T reaches t_end at step 100 regardless of max_steps.
    short = build_sampler("annealed", SIZES, t_start=1.0, t_end=5.0, anneal_steps=100)
    assert short.temperature_at(50, max_steps) == 3.0
    assert short.temperature_at(100, max_steps) == 5.0
    # The small task's share grows monotonically under the default (proportional -> uniform).
    shares = [s.probabilities(k, max_steps)[0] for k in range(0, max_steps + 1, 100)]
    assert all(x < y for x, y in zip(shares, shares[1:], strict=False))


def test_round_robin_cycle() -> None:
    s = build_sampler("round_robin", SIZES, seed=123)
    drawn = [s.draw(i, 100)[0] for i in range(7)]
    assert drawn == ["a", "b", "c", "a", "b", "c", "a"]
    np.testing.assert_allclose(s.probabilities(0, 100), [1 / 3] * 3)


def test_all_tasks() -> None:
    s = build_sampler("all_tasks", SIZES)
    assert s.one_task_per_step is False
    for name in ("proportional", "uniform", "temperature", "annealed", "round_robin"):
        assert SAMPLERS.get(name).one_task_per_step
    assert s.draw(0, 10) == ["a", "b", "c"]
    assert s.draw(1, 10) == ["a", "b", "c"]
    assert s.counts == {"a": 2, "b": 2, "c": 2}
    assert s.proportions() == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


@pytest.mark.parametrize("name", ["proportional", "uniform", "temperature", "annealed"])
def test_seed_reproducibility(name: str) -> None:
    seq = [build_sampler(name, SIZES, seed=7) for _ in range(2)]
    runs = [[s.draw(i, 500)[0] for i in range(500)] for s in seq]
    assert runs[0] == runs[1]
    other = build_sampler(name, SIZES, seed=8)
    assert [other.draw(i, 500)[0] for i in range(500)] != runs[0]


@pytest.mark.parametrize(
    "name", ["proportional", "uniform", "temperature", "annealed", "round_robin", "all_tasks"]
)
def test_state_dict_resume_gives_identical_continuation(name: str) -> None:
    max_steps = 400
    full = build_sampler(name, SIZES, seed=11)
    reference = [full.draw(i, max_steps) for i in range(max_steps)]

    first = build_sampler(name, SIZES, seed=11)
    for i in range(137):
        first.draw(i, max_steps)
    # Round-trip through JSON: the state must be plain data (checkpoints, metrics files).
    state = json.loads(json.dumps(first.state_dict()))
    resumed = build_sampler(name, SIZES, seed=999)  # the seed must not matter after loading
    resumed.load_state_dict(state)
    continuation = [resumed.draw(i, max_steps) for i in range(137, max_steps)]
    assert continuation == reference[137:]
    assert resumed.counts == full.counts


def test_load_state_dict_rejects_other_tasks_and_samplers() -> None:
    state = build_sampler("proportional", SIZES).state_dict()
    with pytest.raises(ValueError, match="tasks"):
        build_sampler("proportional", {"a": 1, "z": 2}).load_state_dict(state)
    with pytest.raises(ValueError, match="proportional"):
        build_sampler("uniform", SIZES).load_state_dict(state)


def test_steps_per_epoch() -> None:
    # one task per step: ceil(sum n_i / batch) = ceil(2100 / 32) = 66
    for name in ("proportional", "uniform", "temperature", "annealed", "round_robin"):
        assert build_sampler(name, SIZES).steps_per_epoch(32) == 66
    assert build_sampler("proportional", SIZES).steps_per_epoch(2100) == 1
    # all_tasks: every task per step, largest task seen once: ceil(1600 / 32) = 50
    assert build_sampler("all_tasks", SIZES).steps_per_epoch(32) == 50
    assert build_sampler("all_tasks", SIZES, max_examples_per_task=500).steps_per_epoch(32) == 16
    with pytest.raises(ValueError, match="batch_size"):
        build_sampler("uniform", SIZES).steps_per_epoch(0)


def test_unknown_name_lists_registered() -> None:
    with pytest.raises(KeyError) as exc:
        build_sampler("nope", SIZES)
    for name in ("proportional", "uniform", "temperature", "annealed", "round_robin", "all_tasks"):
        assert name in str(exc.value)


def test_unknown_option_is_named() -> None:
    with pytest.raises(TypeError, match="temprature"):
        build_sampler("temperature", SIZES, temprature=3.0)


def test_unknown_option_lists_the_accepted_ones() -> None:
    with pytest.raises(TypeError) as exc:
        build_sampler("annealed", SIZES, t_strat=2.0)
    assert "['t_strat']" in str(exc.value)
    assert "['max_examples_per_task', 't_start', 't_end', 'anneal_steps']" in str(exc.value)
    assert sampler_options(SAMPLERS.get("annealed")) == {
        "max_examples_per_task": None, "t_start": 1.0, "t_end": 5.0, "anneal_steps": None,
    }


@pytest.mark.parametrize("name", BUILT_INS)
def test_python_defaults_are_the_config_defaults(name: str) -> None:
    """One source of defaults: every key of the config node has the constructor's default value."""
    cfg = default_node("sampler", name)
    assert cfg.pop("name") == name
    defaults = sampler_options(SAMPLERS.get(name))
    assert defaults is not None
    assert {k: defaults[k] for k in cfg} == cfg


def test_one_module_per_sampler() -> None:
    modules = {SAMPLERS.get(n).__module__ for n in BUILT_INS}
    assert modules == {f"mtl.samplers.{n}" for n in BUILT_INS}


@pytest.mark.parametrize("sizes", [{}, {"a": 10, "b": 0}])
def test_empty_tasks_rejected(sizes: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        build_sampler("proportional", sizes)


@register_sampler("my_sampler")
class _LastTaskSampler(ProbabilitySampler):
    """A user sampler: always the last task (only ``probabilities`` is written)."""

    def __init__(self, task_sizes, seed: int = 0, max_examples_per_task=None, bias: float = 1.0) -> None:
        super().__init__(task_sizes, seed=seed, max_examples_per_task=max_examples_per_task)
        self.bias = bias

    def probabilities(self, step: int, max_steps: int) -> np.ndarray:
        p = np.zeros(len(self.task_names))
        p[-1] = self.bias
        return p


def test_user_registered_sampler_buildable_by_name() -> None:
    assert "my_sampler" in SAMPLERS
    s = build_sampler("my_sampler", SIZES, seed=0, bias=1.0)
    assert isinstance(s, _LastTaskSampler)
    assert [s.draw(i, 10)[0] for i in range(5)] == ["c"] * 5
    assert s.steps_per_epoch(100) == 21


def test_configs_exist_and_build() -> None:
    """Every registered built-in has a config whose keys the sampler accepts."""
    for name in ("proportional", "uniform", "temperature", "annealed", "round_robin", "all_tasks"):
        cfg = default_node("sampler", name)
        assert cfg.pop("name") == name
        assert "max_examples_per_task" in cfg
        s = build_sampler(name, SIZES, seed=0, **cfg)
        assert s.registry_name == name
    assert default_node("sampler", "temperature")["temperature"] == 2.0

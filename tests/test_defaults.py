"""Every default stated once: the composed config builds the same objects as Python's defaults."""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from mtl.balancers import BALANCERS
from mtl.balancers import build_balancer as py_balancer
from mtl.config import compose_train, group_options
from mtl.data.loading import DataSettings
from mtl.models.multitask import ModelSettings
from mtl.samplers import SAMPLERS
from mtl.samplers import build_sampler as py_sampler
from mtl.training.build import build_balancer, build_sampler, build_settings
from mtl.training.trainer import OPTIM_KEYS, TrainerSettings

TASKS = ["ocnli", "ocemotion", "tnews"]
SIZES = {"ocnli": 100, "ocemotion": 200, "tnews": 400}
NEEDS = {"primary_auxiliary": {"primary": "ocnli"}}  # options without a default


def _plain_attrs(obj: object) -> dict[str, object]:
    """The object's configuration as data: its non-module, non-tensor attributes."""
    out = {}
    for key, value in vars(obj).items():
        if key.startswith("_") or isinstance(value, torch.Tensor | torch.nn.Module | torch.Generator):
            continue
        out[key] = value
    return out


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def test_every_registered_balancer_and_sampler_is_a_config_option() -> None:
    ours = {n for n in BALANCERS.names() if BALANCERS.get(n).__module__.startswith("mtl.")}  # tests add their own
    assert ours <= set(group_options("balancer"))
    assert {n for n in SAMPLERS.names() if SAMPLERS.get(n).__module__.startswith("mtl.")} <= set(group_options("sampler"))


@pytest.mark.parametrize("name", sorted(n for n in BALANCERS.names() if BALANCERS.get(n).__module__.startswith("mtl.")))
def test_balancer_from_the_cli_equals_the_python_default(name: str) -> None:
    extra = NEEDS.get(name, {})
    cfg = compose_train([f"balancer={name}", *(f"balancer.{k}={v}" for k, v in extra.items())])
    cli = build_balancer(cfg.balancer, TASKS)
    py = py_balancer(name, TASKS, **extra)
    assert type(cli) is type(py)
    assert _plain_attrs(cli) == _plain_attrs(py)
    _same_state(cli, py)


@pytest.mark.parametrize("name", sorted(n for n in SAMPLERS.names() if SAMPLERS.get(n).__module__.startswith("mtl.")))
def test_sampler_from_the_cli_equals_the_python_default(name: str) -> None:
    cfg = compose_train([f"sampler={name}"])
    cli = build_sampler(cfg.sampler, SIZES, seed=3)
    py = py_sampler(name, SIZES, seed=3)
    assert type(cli) is type(py)
    assert cli.state_dict() == py.state_dict()
    assert [cli.draw(i, 50) for i in range(20)] == [py.draw(i, 50) for i in range(20)]


def test_uncertainty_trains_its_log_variances_at_the_same_rate_from_python_and_cli() -> None:
    cfg = compose_train(["balancer=uncertainty"])
    assert build_balancer(cfg.balancer, TASKS).lr == py_balancer("uncertainty", TASKS).lr == 0.01


def test_trainer_and_optim_groups_are_the_settings_defaults() -> None:
    cfg = compose_train([])
    assert build_settings(cfg) == TrainerSettings()
    assert set(cfg.optim) == set(OPTIM_KEYS)
    assert set(cfg.optim) | set(cfg.trainer) == {f.name for f in fields(TrainerSettings)}


def test_data_and_model_groups_are_the_settings_defaults() -> None:
    cfg = compose_train([])
    data = OmegaConf.to_container(cfg.data, resolve=False)
    assert data == asdict(DataSettings())
    assert OmegaConf.to_container(cfg.model) == asdict(ModelSettings())


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("balancer.lrr=1", "lrr"),
        ("trainer.max_steps=abc", "max_steps"),
        ("sampler.temprature=3", "temprature"),
        ("data.batch_sise=3", "batch_sise"),
    ],
)
def test_a_bad_key_or_value_fails_at_composition_naming_it(override: str, named: str) -> None:
    group = override.split(".")[0]
    preset = {"balancer": ["balancer=uncertainty"], "sampler": ["sampler=temperature"]}.get(group, [])
    with pytest.raises(ConfigCompositionException) as err:
        compose_train([*preset, override])
    assert named in str(err.value) + str(err.value.__cause__)


def test_static_weights_accept_a_mapping_from_the_command_line() -> None:
    cfg = compose_train(["balancer=static", "balancer.weights={ocnli: 2.0, tnews: 0.5}"])
    b = build_balancer(cfg.balancer, TASKS)
    assert b.last_weights == {} and dict(cfg.balancer.weights) == {"ocnli": 2.0, "tnews": 0.5}

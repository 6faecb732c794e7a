"""Every option of every config group composes, resolves, and builds what it names."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mtl.cli.train import CONFIG_DIR
from mtl.config import group_options
from mtl.training.build import build_balancer, build_sampler, check_compatible

GROUPS = ["encoder", "data", "model", "sampler", "balancer", "optim", "trainer", "logger", "experiment"]
TASKS = ["ocnli", "ocemotion", "tnews"]


def options(group: str) -> list[str]:
    return group_options(group)  # YAML presets and code-registered nodes


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def test_default_config_composes_with_all_three_tasks() -> None:
    cfg = compose_train([])
    assert list(cfg.tasks) == TASKS
    assert cfg.encoder.name_or_path == "embedded:e5-small"
    assert cfg.sampler.name == "proportional" and cfg.balancer.name == "equal"
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group: str, option: str) -> None:
    overrides = [f"{group}={option}"]
    if group == "balancer" and option == "primary_auxiliary":
        overrides.append("balancer.primary=ocnli")
    cfg = compose_train(overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    if group == "balancer":
        b = build_balancer(cfg.balancer, TASKS)
        assert b.registry_name == cfg.balancer.name
    if group == "sampler":
        s = build_sampler(cfg.sampler, {t: 100 for t in TASKS}, seed=0)
        assert s.registry_name == cfg.sampler.name


def test_task_selection_override() -> None:
    cfg = compose_train(["tasks=[ocnli,tnews]", "trainer.max_steps=500", "optim.lr=3e-5", "seed=7"])
    assert list(cfg.tasks) == ["ocnli", "tnews"]
    assert cfg.trainer.max_steps == 500 and cfg.optim.lr == 3e-5 and cfg.seed == 7


def test_clue_task_variants_are_drop_in() -> None:
    cfg = compose_train(["tasks=[ocnli_clue,tnews_clue]"])
    assert list(cfg.tasks) == ["ocnli", "tnews"]


def test_gradient_balancer_with_one_task_sampler_is_refused() -> None:
    cfg = compose_train(["balancer=pcgrad", "sampler=proportional"])
    bal = build_balancer(cfg.balancer, TASKS)
    sam = build_sampler(cfg.sampler, {t: 100 for t in TASKS}, seed=0)
    with pytest.raises(ValueError, match="sampler=all_tasks"):
        check_compatible(bal, sam)


def test_unknown_balancer_name_lists_registered() -> None:
    cfg = compose_train(["balancer.name=nope"])
    with pytest.raises(KeyError, match="registered balancers: .*pcgrad"):
        build_balancer(cfg.balancer, TASKS)

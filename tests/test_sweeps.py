"""Sweeps: the Optuna search runs for real (2 trials), the SLURM launcher and the sweep presets compose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mtl.cli.train import CONFIG_DIR
from mtl.training.build import build_balancer, build_sampler, check_compatible

REPO = Path(__file__).resolve().parents[1]
TASKS = ["ocnli", "ocemotion", "tnews"]


def compose_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_composes(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setenv("SLURM_PARTITION", "gpu-long")
    cfg = compose_hydra(["hydra/launcher=slurm", "hydra.launcher.timeout_min=30"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu-long" and launcher.gpus_per_node == 1 and launcher.timeout_min == 30
    assert launcher.submitit_folder.endswith("/.submitit/%j")
    monkeypatch.delenv("SLURM_PARTITION")
    assert compose_hydra(["hydra/launcher=slurm"]).hydra.launcher.partition is None  # cluster default


def test_optuna_search_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_hydra(["hparams_search=optuna", "experiment=quickstart"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.sampler.seed is not None
    assert {"optim.lr", "optim.head_lr", "model.dropout", "balancer"} <= set(sweeper.params)
    assert cfg.name == "quickstart"  # the experiment's settings stay in force


@pytest.mark.parametrize("balancer", ["equal", "uncertainty", "pcgrad"])
def test_sweep_balancers_preset_works_with_gradient_balancers(balancer: str) -> None:
    cfg = compose_hydra(["experiment=sweep_balancers", f"balancer={balancer}"])
    assert cfg.hydra.sweeper.params.balancer == "equal,uncertainty,pcgrad"
    assert cfg.encoder.kwargs.num_hidden_layers == 4
    b = build_balancer(cfg.balancer, TASKS)
    s = build_sampler(cfg.sampler, dict.fromkeys(TASKS, 100), seed=0)
    check_compatible(b, s)  # all_tasks: pcgrad is allowed


def test_best_recipe_composes() -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=best_recipe"])
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.sampler.name == "annealed" and cfg.trainer.max_epochs == 3
    b = build_balancer(cfg.balancer, TASKS)
    s = build_sampler(cfg.sampler, dict.fromkeys(TASKS, 100), seed=0)
    check_compatible(b, s)


def test_optuna_sweep_runs_trials(fixture_data_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "MTL_DATA_DIR"}
    env["MTL_CACHE_DIR"] = str(tmp_path / "cache")
    cmd = [
        sys.executable, "-m", "mtl.train", "-m", "hparams_search=optuna",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
        "encoder=tiny_random", f"data.root={fixture_data_root}", "data.batch_size=16",
        "trainer.max_steps=3", "trainer.eval_every=3", "trainer.progress=false",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    trials = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in trials] == ["0", "1"]
    values = [json.loads((p / "metrics.json").read_text())["avg_macro_f1"] for p in trials]
    assert results["best_value"] == pytest.approx(max(values))
    assert set(results["best_params"]) == {"optim.lr", "optim.head_lr", "model.dropout", "balancer"}
    # each trial ran the parameters Optuna proposed
    for p in trials:
        overrides = yaml.safe_load((p / ".hydra" / "overrides.yaml").read_text())
        assert any(o.startswith("optim.lr=") for o in overrides)

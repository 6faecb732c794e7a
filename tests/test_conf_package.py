"""The configs ship inside the package (``mtl/conf``, ``pkg://mtl.conf``): the Hydra app composes from there,
a user's own config folder joins through Hydra's search path, and the wheel carries every YAML file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib import resources
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from mtl.cli.train import CONFIG_DIR, CONFIG_MODULE
from tests.helpers import TINY_RUN

REPO = Path(__file__).resolve().parents[1]
USER_CONFIGS = REPO / "docs" / "examples" / "user_configs"
#: top-level folders a build of the repository must not copy (git, caches, build outputs, runs, data)
NOT_SOURCES = {".git", "build", "dist", ".cache", ".pytest_cache", ".ruff_cache", ".benchmarks", "outputs",
               "multirun", "wandb", "data", ".whl"}


def shipped_yaml() -> set[str]:
    """Every config file under ``mtl/conf``, as ``mtl/conf/<group>/<name>.yaml``."""
    return {f"mtl/conf/{p.relative_to(CONFIG_DIR).as_posix()}" for p in Path(CONFIG_DIR).rglob("*.yaml")}


def mtl_train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m mtl.train`` from ``cwd`` (outside the checkout), reading fixture data only."""
    env = {k: v for k, v in os.environ.items() if k not in ("MTL_DATA_DIR", "MTL_DEBUG")}
    return subprocess.run([sys.executable, "-m", "mtl.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


# --- the package location ----------------------------------------------------------------------------------


def job_config(cwd: Path, *args: str) -> dict:
    """The composed job config that ``mtl-train --cfg job`` prints, run from ``cwd``."""
    proc = mtl_train(cwd, "--cfg", "job", *args)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    return yaml.safe_load(proc.stdout)


def test_configs_live_in_the_package() -> None:
    assert CONFIG_MODULE == "mtl.conf"
    assert Path(CONFIG_DIR) == Path(str(resources.files(CONFIG_MODULE))).resolve()
    assert (Path(CONFIG_DIR) / "train.yaml").is_file()
    assert not (REPO / "configs").exists(), "the configs moved to mtl/conf/ (pkg://mtl.conf)"
    groups = {p.parent.relative_to(CONFIG_DIR).parts[0] for p in Path(CONFIG_DIR).glob("*/*.yaml")}
    assert {"encoder", "tasks", "experiment", "hydra"} <= groups


def test_app_composes_from_the_package_in_any_directory(tmp_path: Path) -> None:
    proc = mtl_train(tmp_path, "--info", "searchpath")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert re.search(r"\|\s*main\s*\|\s*pkg://mtl\.conf\s*\|", proc.stdout), proc.stdout
    cfg = job_config(tmp_path, "experiment=quickstart")
    assert cfg["name"] == "quickstart" and list(cfg["tasks"]) == ["ocnli", "ocemotion", "tnews"]


# --- a user's own config folder ----------------------------------------------------------------------------


def test_user_preset_composes_through_the_search_path(tmp_path: Path) -> None:
    """``hydra.searchpath=[file://...]``: the example preset extends the shipped quickstart."""
    cfg = job_config(tmp_path, f"hydra.searchpath=[file://{USER_CONFIGS}]", "experiment=my_quickstart")
    assert cfg["name"] == "my_quickstart"
    assert cfg["trainer"]["max_steps"] == 60 and cfg["data"]["max_train_per_task"] == 1000
    assert cfg["encoder"]["freeze_embeddings"] is True and cfg["data"]["batch_size"] == 32  # from quickstart


def test_user_preset_runs_from_outside_the_repository(tmp_path: Path, fixture_data_root: Path) -> None:
    user = tmp_path / "my_configs"
    shutil.copytree(USER_CONFIGS, user)  # the user's folder, outside the checkout
    run_dir = tmp_path / "run"
    proc = mtl_train(
        tmp_path, "--config-dir", str(user), "experiment=my_quickstart", *TINY_RUN, f"data.root={fixture_data_root}",
        "data.batch_size=16", "trainer.max_steps=2", "trainer.eval_every=2", f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["avg_macro_f1"] <= 1.0
    assert OmegaConf.load(run_dir / "config.yaml").name == "my_quickstart"


def test_documented_primary_config_with_searchpath(tmp_path: Path) -> None:
    """The docs' own primary config (``defaults: [train]`` + ``hydra.searchpath``) composes as written."""
    text = (REPO / "docs" / "workflow.md").read_text(encoding="utf-8")
    section = text.split("### Your own config folders", 1)[1]
    yaml_text = re.search(r"```yaml\n(# ~/mtl_configs/my_train\.yaml\n.*?)```", section, re.S).group(1)
    user = tmp_path / "mtl_configs"
    shutil.copytree(USER_CONFIGS, user)
    (user / "my_train.yaml").write_text(yaml_text, encoding="utf-8")
    cfg = job_config(tmp_path, "--config-dir", str(user), "--config-name", "my_train", "experiment=my_quickstart")
    assert cfg["name"] == "my_quickstart" and cfg["seed"] == 7


# --- what a build carries ----------------------------------------------------------------------------------


def copy_sources(dest: Path) -> Path:
    """A clean copy of the checkout: an in-tree build would leave build/ behind, whose stale files leak."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        top = NOT_SOURCES if Path(folder) == REPO else set()
        return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


@pytest.mark.slow
def test_wheel_carries_every_config(tmp_path: Path) -> None:
    src = copy_sources(tmp_path / "src")
    dist = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist),
         str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = dist.glob("mtl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n for n in names if n.startswith("mtl/conf/") and n.endswith(".yaml")} == shipped_yaml()
    assert "mtl/conf/__init__.py" in names and "mtl/cli/train.py" in names


@pytest.mark.slow
def test_sdist_carries_every_config(tmp_path: Path) -> None:
    src = copy_sources(tmp_path / "src")
    dist = tmp_path / "dist"
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sdist,) = dist.glob("mtl-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {n for n in names if n.startswith("mtl/conf/") and n.endswith(".yaml")} == shipped_yaml()

"""The composed config is validated before any data is read, each error naming the key and the value;
``mtl-train`` shows these (and refused run directories and unreadable checkpoints) as one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from mtl.training import run as run_mod
from mtl.training.run import run
from mtl.training.validate import ConfigError, validate_config
from tests.helpers import compose_train, tiny_run_cfg, tiny_run_env

POSITIVE = "must be a positive integer"
BAD = [
    (("optim.lr=-1",), "optim.lr=-1", "must be a finite number > 0"),
    (("optim.head_lr=-0.001",), "optim.head_lr=-0.001", "must be a finite number > 0"),
    (("trainer.max_steps=0",), "trainer.max_steps=0", POSITIVE),
    (("trainer.max_steps=-3",), "trainer.max_steps=-3", POSITIVE),
    (("trainer.eval_every=0",), "trainer.eval_every=0", POSITIVE),
    (("trainer.log_every=0",), "trainer.log_every=0", POSITIVE),
    (("trainer.max_epochs=-1",), "trainer.max_epochs=-1", "must be a finite number > 0"),
    (("tasks=[]",), "tasks=[]", "no tasks selected"),
    (("data.batch_size=0",), "data.batch_size=0", POSITIVE),
    (("model.dropout=1.5",), "model.dropout=1.5", "must be a finite number >= 0 and < 1"),
    (("balancer=mgda_ub", "sampler=proportional"), "balancer=mgda_ub with sampler=proportional", "gradient-level"),
]


@pytest.fixture(autouse=True)
def _tiny_runs(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch, plots=False)


@pytest.mark.parametrize(("overrides", "key_value", "why"), BAD, ids=[" ".join(o) for o, _, _ in BAD])
def test_a_bad_value_is_named_with_its_key(overrides: tuple[str, ...], key_value: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(compose_train(*overrides))
    msg = str(err.value)
    assert msg.startswith(key_value) and why in msg and "\n" not in msg, msg


def test_the_default_config_and_the_presets_are_valid() -> None:
    for overrides in ((), ("experiment=quickstart",), ("experiment=sweep_balancers", "balancer=pcgrad"),
                      ("balancer=static",), ("trainer.max_epochs=1.5",), ("optim.head_lr=null", "optim.grad_clip=null")):
        validate_config(compose_train(*overrides))


def test_several_problems_are_all_named() -> None:
    with pytest.raises(ConfigError, match=r"optim.lr=-1.*and 1 more: trainer.eval_every=0"):
        validate_config(compose_train("optim.lr=-1", "trainer.eval_every=0"))


@pytest.mark.parametrize(
    "overrides", [("trainer.eval_every=0",), ("balancer=mgda_ub", "sampler=proportional"), ("tasks=[]",)]
)
def test_run_refuses_before_reading_data_or_writing_files(
    tmp_path: Path, fixture_data_root: Path, monkeypatch: pytest.MonkeyPatch, overrides: tuple[str, ...]
) -> None:
    monkeypatch.setattr(run_mod, "build_data", lambda *a, **k: pytest.fail("the data was read"))
    with pytest.raises(ConfigError):
        run(tiny_run_cfg(fixture_data_root, *overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_mistyped_value_fails_at_composition_naming_the_key() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_train("trainer.max_steps=abc")
    text = f"{err.value} {err.value.__cause__}"
    assert "trainer.max_steps" in text and "abc" in text


def mtl_train(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MTL_DATA_DIR", "MTL_DEBUG", "HYDRA_FULL_ERROR")}
    return subprocess.run(
        [sys.executable, "-m", "mtl.train", "encoder=tiny_random", "trainer.progress=false", *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


CLI = [
    (("optim.lr=-1",), "optim.lr=-1"),
    (("trainer.eval_every=0",), "trainer.eval_every=0"),
    (("trainer.max_steps=abc",), "trainer.max_steps"),
    (("tasks=[]",), "tasks=[]"),
    (("balancer=mgda_ub", "sampler=proportional"), "balancer=mgda_ub with sampler=proportional"),
    (("trainer.resume=EMPTY",), "empty.pt is empty"),
    (("RUN_DIR=FINISHED",), "already holds a run"),
]


@pytest.mark.parametrize(("overrides", "named"), CLI, ids=[" ".join(o) for o, _ in CLI])
def test_mtl_train_shows_one_line_and_no_traceback(tmp_path: Path, overrides: tuple[str, ...], named: str) -> None:
    run_dir = tmp_path / "run"
    if overrides == ("trainer.resume=EMPTY",):
        (tmp_path / "empty.pt").write_bytes(b"")
        overrides = (f"trainer.resume={tmp_path / 'empty.pt'}",)
    if overrides == ("RUN_DIR=FINISHED",):
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "config.yaml").write_text("seed: 1\n")
        (run_dir / "metrics.json").write_text("{}")
        overrides = ()
    proc = mtl_train(tmp_path, f"hydra.run.dir={run_dir}", f"data.root={tmp_path / 'no-data'}", *overrides)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    # one line says what is wrong (ours: "<Type>: <message>"; Hydra's composition errors: "Error merging ...")
    assert any(named in line and "Error" in line for line in out.splitlines()), out[-3000:]
    if (run_dir / "metrics.json").exists():
        assert (run_dir / "config.yaml").read_text() == "seed: 1\n"  # the run there is left as it was
    else:
        assert not (run_dir / "config.yaml").exists()

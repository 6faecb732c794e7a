"""Task losses in a run: chosen from the command line, per task, through every balancer mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl.losses import LOSSES
from mtl.training.build import build_losses, loss_config
from mtl.training.run import run
from tests.helpers import compose_train, tiny_run_cfg, tiny_run_env


@pytest.fixture(autouse=True)
def _fixture_data_only(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch, plots=False, one_thread=True)


def test_every_loss_is_a_config_option_and_ce_is_the_default() -> None:
    cfg = compose_train()
    assert cfg.loss.name == "ce"
    for name in LOSSES.names():
        node = compose_train(f"loss={name}").loss
        assert node.name == name


def test_a_task_overrides_the_global_loss() -> None:
    cfg = compose_train("loss=focal", "loss.gamma=1.5", "+tasks.ocemotion.loss={name: logit_adjusted, tau: 0.5}",
                        "+tasks.tnews.loss={gamma: 3.0}")
    assert loss_config(cfg, "ocnli") == {"name": "focal", "gamma": 1.5, "alpha": None, "alpha_mode": "none",
                                         "beta": 0.9999, "flood": 0.0}
    assert loss_config(cfg, "ocemotion") == {"name": "logit_adjusted", "tau": 0.5, "flood": 0.0}
    assert loss_config(cfg, "tnews")["gamma"] == 3.0 and loss_config(cfg, "tnews")["name"] == "focal"
    losses = build_losses(cfg, {"ocnli": 3, "ocemotion": 7, "tnews": 15},
                          {"ocnli": [5, 5, 5], "ocemotion": [9, 1, 1, 1, 1, 1, 1], "tnews": [1] * 15})
    assert [type(x).__name__ for x in losses.values()] == ["Focal", "LogitAdjusted", "Focal"]


def test_ce_loss_module_is_exactly_cross_entropy() -> None:
    (loss,) = build_losses(compose_train(), {"ocnli": 4}).values()
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.equal(loss(logits, y), torch.nn.functional.cross_entropy(logits, y))


@pytest.mark.parametrize(
    ("loss", "balancer", "sampler"),
    [("logit_adjusted", "pcgrad", "all_tasks"), ("class_balanced", "mgda", "all_tasks"), ("focal", "equal", "proportional")],
)
def test_a_run_trains_with_a_non_default_loss(fixture_data_root: Path, tmp_path: Path, loss: str, balancer: str,
                                              sampler: str) -> None:
    cfg = tiny_run_cfg(fixture_data_root, f"loss={loss}", f"balancer={balancer}", f"sampler={sampler}",
                       "trainer.max_steps=2", "trainer.eval_every=2")
    metrics = run(cfg, tmp_path / "run")
    assert metrics["steps"] == 2 and 0.0 <= metrics["avg_macro_f1"] <= 1.0
    assert metrics["nonfinite_steps_skipped"] == 0

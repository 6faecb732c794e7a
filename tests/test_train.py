"""End to end on fixture data with the tiny random encoder: the loss goes down, the run leaves its files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtl.training.run import run
from tests.helpers import tiny_run_cfg, tiny_run_env


def tiny_cfg(data_root: Path, *extra: str):
    return tiny_run_cfg(data_root, "data.batch_size=16", "trainer.max_steps=120", "trainer.eval_every=60", *extra)


@pytest.fixture(autouse=True)
def _fixture_data_only(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch)


def test_training_lowers_dev_loss_and_writes_run_files(fixture_data_root: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(fixture_data_root)
    metrics = run(cfg, tmp_path)
    for name in ("config.yaml", "metrics.json", "train_log.csv", "eval_log.csv", "checkpoints/best.pt"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == 120 and set(saved["tasks"]) == {"ocnli", "ocemotion", "tnews"}
    for key in ("avg_macro_f1", "wall_seconds", "samples_per_second", "majority_macro_f1", "sampler", "data"):
        assert key in saved
    # learnt: every task above its majority-class macro-F1 on the fixture's keyword signal
    for task, s in metrics["tasks"].items():
        assert s["macro_f1"] > metrics["majority_macro_f1"][task] + 0.1, task
    # the realised shares of the proportional sampler follow the training set sizes (about 3.5 binomial
    # standard deviations over 120 one-task steps)
    shares = saved["sampler"]["proportions"]
    sizes = {t: saved["data"][t]["train"] for t in shares}
    assert abs(sum(shares.values()) - 1) < 1e-9
    assert all(abs(shares[t] - sizes[t] / sum(sizes.values())) < 0.15 for t in shares), (shares, sizes)


def test_first_steps_lower_the_training_loss(fixture_data_root: Path, tmp_path: Path) -> None:
    import torch

    from mtl.training import run as run_mod

    cfg = tiny_cfg(fixture_data_root, "trainer.max_steps=40", "trainer.eval_every=40", "sampler=all_tasks")
    captured = {}
    original = run_mod.Trainer.train_step

    def spy(self):
        res = original(self)
        if res is not None:
            captured.setdefault("losses", []).append(float(res.losses.mean()))
        return res

    run_mod.Trainer.train_step = spy
    try:
        run(cfg, tmp_path)
    finally:
        run_mod.Trainer.train_step = original
    losses = torch.tensor(captured["losses"])
    assert losses[-10:].mean() < 0.8 * losses[:5].mean()


@pytest.mark.parametrize("balancer", ["pcgrad", "mgda", "uncertainty", "famo"])
def test_balancers_run_end_to_end(fixture_data_root: Path, tmp_path: Path, balancer: str) -> None:
    cfg = tiny_cfg(fixture_data_root, f"balancer={balancer}", "sampler=all_tasks", "trainer.max_steps=12",
                   "trainer.eval_every=12")
    metrics = run(cfg, tmp_path)
    assert metrics["balancer"]["name"] == balancer
    assert set(metrics["balancer"]["last_weights"]) == {"ocnli", "ocemotion", "tnews"}


def test_gradient_balancer_with_one_task_sampler_stops_at_start(fixture_data_root: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(fixture_data_root, "balancer=mgda_ub", "sampler=proportional")
    with pytest.raises(ValueError, match="gradient-level"):
        run(cfg, tmp_path)


def test_same_seed_same_result(fixture_data_root: Path, tmp_path: Path) -> None:
    """Seeded CPU runs are reproducible to the last digit."""
    cfg = tiny_cfg(fixture_data_root, "trainer.max_steps=15", "trainer.eval_every=15", "seed=3")
    a = run(cfg, tmp_path / "a")
    b = run(cfg, tmp_path / "b")
    assert a["tasks"] == b["tasks"]
    other = run(tiny_cfg(fixture_data_root, "trainer.max_steps=15", "trainer.eval_every=15", "seed=4"), tmp_path / "c")
    assert other["tasks"] != a["tasks"]

"""torch.distributed on CPU: two gloo processes with batch B each train like one process with batch 2B.

TaskBatchSampler gives rank r the rows ``perm[r::2]`` of every task's permutation, so batch j of
the two ranks together holds exactly the rows of batch j of one process with twice the batch size
(``perm[2Bj : 2B(j+1)]``). With dropout off, per-rank mean losses, gradients averaged across
ranks, and the balancers fed rank-averaged losses / Gramians, the parameters after a few steps
and the (gathered) dev metrics must agree with the single process up to float rounding.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from mtl.training import checkpoint as ckpt
from mtl.training.run import run
from tests.helpers import no_plots, tiny_run_cfg, tiny_run_env

B = 4  # rows per task per rank

CASES = {
    "famo-proportional": ("balancer=famo", "sampler=proportional"),  # loss mode, loss-dependent weights
    "mgda-parameters": ("balancer=mgda", "sampler=all_tasks"),  # Jacobian rows all-reduced
    "mgda_ub-representation-accum2": ("balancer=mgda_ub", "sampler=all_tasks", "trainer.grad_accum_steps=2"),
}


@pytest.fixture(autouse=True)
def _tiny_runs(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch, plots=False, one_thread=True)  # plots: not tested here, saves time


def cfg_for(data_root: Path, batch_size: int, extra: tuple[str, ...]):
    cfg = tiny_run_cfg(
        data_root, f"data.batch_size={batch_size}", "+encoder.kwargs.hidden_dropout_prob=0.0",
        "+encoder.kwargs.attention_probs_dropout_prob=0.0", "model.dropout=0.0", "trainer.max_steps=6",
        "trainer.eval_every=3", "trainer.checkpoint_every=3", *extra,
    )
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # plain, picklable, resolved here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, jobs: list) -> None:
    """One torchrun-like process: env:// rendezvous, then the same run() a `torchrun -m mtl.train` calls."""
    import torch.distributed as dist

    from mtl.training import distributed as mdist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), MTL_DIST_BACKEND="gloo")
    torch.set_num_threads(1)
    from mtl.training import run as run_module

    run_module.write_run_outputs = no_plots
    info = mdist.init_distributed()
    assert info.world_size == world and info.created and dist.get_backend() == "gloo"
    try:
        for cfg, run_dir in jobs:
            # each rank proposes its own directory (as Hydra's ${now:} might); all must use rank 0's
            run(cfg, run_dir if rank == 0 else f"{run_dir}-rank{rank}")
    finally:
        dist.destroy_process_group()


def spawn(world: int, jobs: list):
    return mp.spawn(_worker, args=(world, _free_port(), jobs), nprocs=world, join=False)


def wait(ctx, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers still running after {timeout_s:.0f} s")


def test_two_gloo_ranks_match_one_process_with_the_union_batch(fixture_data_root: Path, tmp_path: Path) -> None:
    jobs = [(cfg_for(fixture_data_root, B, extra), str(tmp_path / f"ddp-{name}")) for name, extra in CASES.items()]
    workers = spawn(2, jobs)
    # the single-process references run while the two ranks start up and train
    refs = {name: run(cfg_for(fixture_data_root, 2 * B, extra), tmp_path / f"single-{name}")
            for name, extra in CASES.items()}
    wait(workers)
    for name, ref in refs.items():
        ddp_dir = tmp_path / f"ddp-{name}"
        assert not (tmp_path / f"ddp-{name}-rank1").exists(), "rank 1 must write into rank 0's run directory"
        ddp = json.loads((ddp_dir / "metrics.json").read_text())
        assert ddp["world_size"] == 2 and ddp["steps"] == ref["steps"] == 6
        assert ddp["sampler"]["counts"] == ref["sampler"]["counts"], name
        # dev metrics gathered from both ranks' shards == the single process's full-dev metrics
        for h_ddp, h_ref in zip(ddp["history"], ref["history"], strict=True):
            assert h_ddp.keys() == h_ref.keys()
            for k, v in h_ref.items():
                assert h_ddp[k] == pytest.approx(v, rel=1e-4, abs=1e-5), (name, k)
        for t, s in ref["tasks"].items():
            assert ddp["tasks"][t]["n"] == s["n"]  # every dev row counted exactly once
        # parameters after 6 steps
        a = ckpt.load(ddp_dir / "checkpoints" / "last.pt")
        b = ckpt.load(tmp_path / f"single-{name}" / "checkpoints" / "last.pt")
        assert a["world_size"] == 2 and len(a["rng"]) == 2  # each rank's RNG state is in the checkpoint
        for k, v in b["model"].items():
            torch.testing.assert_close(a["model"][k], v, rtol=1e-4, atol=2e-5, msg=f"{name}: {k}")
        for w_ddp, w_ref in zip(ddp["balancer"]["last_weights"].values(), ref["balancer"]["last_weights"].values(),
                                strict=True):
            assert w_ddp == pytest.approx(w_ref, rel=1e-3, abs=1e-5), name

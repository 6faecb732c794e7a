"""Guards: non-finite losses/gradients skip the step and are counted; runs of them stop the run;
fp16 overflow skips are the scaler's business; out-of-memory names the settings to lower."""

from __future__ import annotations

import pytest
import torch

from mtl.training import trainer as trainer_mod
from mtl.training.trainer import OutOfMemory, TrainingStopped
from tests.toy_trainer import flat_params, single_thread, toy_trainer


@pytest.fixture(autouse=True)
def _single_thread():
    yield from single_thread()


def nan_head(tr, task: str, steps: set[int] | None) -> None:
    """Task ``task``'s head returns NaN logits at ``steps`` (every step when None)."""

    def hook(_module, _inp, out):
        return out * float("nan") if steps is None or tr.step in steps else out

    tr.model.heads[task].register_forward_hook(hook)


@pytest.mark.parametrize("sampler", ["all_tasks", "round_robin"])
def test_nan_loss_skips_the_step_and_is_counted(tmp_path, sampler: str) -> None:
    tr = toy_trainer(tmp_path, sampler=sampler, max_steps=8, eval_every=8)
    bad_steps = {2, 4} if sampler == "all_tasks" else {1, 4}  # round robin: a, b, c, a, b, ...: b at 1 and 4
    nan_head(tr, "b", bad_steps)
    before = {}
    orig = tr.train_step

    def spy():
        before[tr.step] = flat_params(tr.model)
        return orig()

    tr.train_step = spy
    out = tr.fit()
    assert tr.state.nonfinite_skipped == 2 and tr.step == 8
    for s in bad_steps:  # a skipped step leaves the parameters as they were
        torch.testing.assert_close(before[s + 1], before[s], rtol=0, atol=0)
    assert not torch.equal(before[1], before[0])  # normal steps do update
    assert out.last_eval.step == 8


def test_consecutive_nan_losses_stop_the_run_naming_task_and_step(tmp_path) -> None:
    tr = toy_trainer(tmp_path, max_steps=20, max_consecutive_nonfinite=3)
    nan_head(tr, "c", None)
    with pytest.raises(TrainingStopped, match=r"3 consecutive steps .*task c at step 2"):
        tr.fit()
    assert tr.state.nonfinite_skipped == 3


@pytest.mark.parametrize("grad_clip", [1.0, None])
def test_nan_gradient_with_finite_loss_is_skipped(tmp_path, grad_clip) -> None:
    tr = toy_trainer(tmp_path, max_steps=4, eval_every=4, grad_clip=grad_clip)
    weight = tr.model.encoder.lin.weight
    weight.register_hook(lambda g: g * float("nan") if tr.step == 1 else g)
    tr.fit()
    assert tr.state.nonfinite_skipped == 1


def test_out_of_memory_message_suggests_smaller_batches(tmp_path, monkeypatch) -> None:
    tr = toy_trainer(tmp_path, max_steps=3, grad_accum_steps=2)

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tr.engine, "step", boom)
    with pytest.raises(OutOfMemory) as info:
        tr.fit()
    msg = str(info.value)
    assert "data.batch_size" in msg and "trainer.grad_accum_steps=4" in msg and "at step 0" in msg
    assert "rows x" in msg and isinstance(info.value.__cause__, torch.OutOfMemoryError)


def test_out_of_memory_in_evaluation_suggests_eval_batch_size(tmp_path, monkeypatch) -> None:
    tr = toy_trainer(tmp_path, max_steps=2, eval_every=2)
    monkeypatch.setattr(tr, "_evaluate", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
    with pytest.raises(OutOfMemory, match="data.eval_batch_size"):
        tr.fit()


@pytest.fixture
def cpu_fp16(monkeypatch):
    """fp16 + GradScaler on the CPU (refused for users: too slow to be useful; fine for testing the logic)."""
    monkeypatch.setattr(trainer_mod, "resolve_precision", lambda name, device: "fp16")


def test_fp16_overflow_skips_are_the_scalers_not_counted_as_nonfinite(tmp_path, cpu_fp16) -> None:
    tr = toy_trainer(tmp_path, max_steps=8, eval_every=8, max_consecutive_nonfinite=2)
    assert tr.precision == "fp16" and tr.scaler.is_enabled()
    weight = tr.model.encoder.lin.weight
    weight.register_hook(lambda g: g * float("inf") if tr.step < 3 else g)  # "overflow" for 3 steps
    scale0 = tr.scaler.get_scale()
    tr.fit()
    assert tr.state.overflow_skipped == 3 and tr.state.nonfinite_skipped == 0
    assert tr.scaler.get_scale() < scale0  # the scaler lowered its scale and then trained on
    assert tr.state.samples_seen > 0


def test_fp16_persistent_inf_gradient_stops_once_the_scale_is_down_to_one(tmp_path, cpu_fp16) -> None:
    tr = toy_trainer(tmp_path, max_steps=40, max_consecutive_nonfinite=2)
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=8.0)  # 8 -> 4 -> 2 -> 1, then real non-finite steps
    tr.engine.loss_scale = tr.scaler.scale
    tr.engine.scale_value = lambda: float(tr.scaler.get_scale())
    tr.model.encoder.lin.weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(TrainingStopped, match="gradient"):
        tr.fit()
    assert tr.state.overflow_skipped == 3 and tr.state.nonfinite_skipped == 2


def test_fp16_gramian_balancer_sees_unscaled_gradients(tmp_path, cpu_fp16) -> None:
    """Through the Trainer: the Gramian under a loss scale equals the fp32 one (to fp16 accuracy)."""
    seen = {}
    for fp16 in (False, True):
        tr = toy_trainer(tmp_path / str(fp16), balancer="mgda", balancer_kwargs={"source": "parameters"})
        if not fp16:  # the plain fp32 reference: no autocast, no loss scale
            tr.precision = "fp32"
            tr.engine.loss_scale = lambda x: x
            tr.engine.scale_value = lambda: 1.0
            tr.scaler = torch.amp.GradScaler("cpu", enabled=False)
        res = tr.train_step()
        seen[fp16] = res.gramian
        if fp16:
            assert tr.scaler.get_scale() >= 2.0**15
    torch.testing.assert_close(seen[True], seen[False], rtol=2e-2, atol=1e-6)

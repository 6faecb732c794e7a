"""The CUDA-only choices of the training loop, checked on the CPU: device and precision resolution,
autocast settings, TF32 flags, and checkpoints moving between a GPU and the CPU.

No GPU is needed: ``torch.cuda`` queries are monkeypatched, a GPU-written checkpoint is simulated by
saving with a ``cuda:0`` location tag, and fused AdamW (what the trainer builds on CUDA) also has a
CPU kernel.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mtl.training import checkpoint as ckpt
from mtl.training.build import pin_memory_for
from mtl.training.trainer import Trainer
from mtl.utils.device import resolve_device, resolve_precision
from tests.toy_trainer import flat_params, single_thread, toy_trainer

CUDA0 = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def _single_thread():
    yield from single_thread()


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.cuda`` says one GPU is there (current device 0); nothing is allocated on it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize(
    ("native", "expected"),
    [(True, "bf16"), (False, "fp16")],
    ids=["ampere-or-newer", "pre-ampere"],
)
def test_auto_precision_picks_bf16_only_where_the_gpu_has_it_natively(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: str
) -> None:
    def is_bf16_supported(including_emulation: bool = True) -> bool:  # torch's semantics on such a GPU
        return native or including_emulation  # pre-Ampere GPUs can emulate bf16 (slowly)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_precision("auto", CUDA0) == expected
    assert resolve_precision("fp16", CUDA0) == "fp16" and resolve_precision("bf16", CUDA0) == "bf16"
    monkeypatch.setattr("mtl.utils.device.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))


def test_device_is_this_process_gpu(fake_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("auto") == CUDA0 and resolve_device("cuda") == CUDA0
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    # under torchrun: cuda:LOCAL_RANK
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 3) and resolve_device("cuda") == torch.device("cuda", 3)


def test_device_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device(name)


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_on_the_trainer_device_type_with_the_precision_dtype(precision: str, dtype) -> None:
    with warnings.catch_warnings():  # "CUDA is not available ... Disabling autocast": a CPU-only torch
        warnings.simplefilter("ignore", UserWarning)
        ctx = Trainer._autocast(SimpleNamespace(precision=precision, device=torch.device("cuda", 1)))
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == dtype
    fp32 = Trainer._autocast(SimpleNamespace(precision="fp32", device=torch.device("cuda", 1)))
    assert not isinstance(fp32, torch.autocast)


def test_tf32_flags_stay_consistent_for_legacy_and_new_readers() -> None:
    """After ``enable_tf32`` both torch APIs read TF32, and the legacy readers (used by Inductor's
    autotuning, among others) do not raise "mix of the legacy and new APIs". In a subprocess: global state."""
    code = (
        "import torch\n"
        "from mtl.training.trainer import enable_tf32\n"
        "enable_tf32()\n"
        "m = torch.backends.cuda.matmul\n"
        "print(m.allow_tf32, torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32,\n"
        "      getattr(m, 'fp32_precision', 'tf32'), getattr(torch.backends.cudnn.conv, 'fp32_precision', 'tf32'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "high", "True", "tf32", "tf32"]


def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    tr = toy_trainer(tmp_path / "gpu", max_steps=6, eval_every=6)
    resumed = toy_trainer(tmp_path / "cpu", max_steps=6, eval_every=6)
    for _ in range(3):
        tr.train_step()
    state = tr.state_dict()
    state["rng"][0]["cuda"] = torch.zeros(16, dtype=torch.uint8)  # a GPU run saves its CUDA RNG state too
    path = tmp_path / "last.pt"
    with monkeypatch.context() as m:  # every tensor stored as on cuda:0, as a GPU run writes them
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        ckpt.atomic_save(state, path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):  # the file really wants a GPU without map_location
            torch.load(path, weights_only=False)
    resumed.load_checkpoint(path)
    assert resumed.step == 3
    tensors = [*resumed.model.parameters(), *resumed.model.buffers()]
    tensors += [v for st in resumed.optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    torch.testing.assert_close(flat_params(resumed.model), flat_params(tr.model), rtol=0, atol=0)
    for _ in range(3):  # and it trains on exactly like the run that wrote it
        tr.train_step()
        resumed.train_step()
    torch.testing.assert_close(flat_params(resumed.model), flat_params(tr.model), rtol=0, atol=0)


def _adamw_state(fused: bool | None) -> dict:
    """An AdamW state after one step, round-tripped through a file like a checkpoint."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, fused=fused)
    lin(torch.randn(5, 4)).square().mean().backward()
    opt.step()
    return {"optimizer": opt.state_dict()}


def _resuming_adamw(fused: bool | None) -> tuple[nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    return lin, torch.optim.AdamW(lin.parameters(), lr=1e-2, fused=fused)


def test_resumed_optimizer_keeps_fused_adamw_under_the_loss_scaler(tmp_path) -> None:
    """A checkpoint from torch's default AdamW (a CPU run) resumed where the trainer builds fused AdamW
    (CUDA) with an fp16 loss scaler: the scaler hands fused AdamW its inf flag, which the default
    implementation refuses ("Expected grad_scale and found_inf to be None") if the checkpoint's
    ``fused=None`` replaced this run's ``fused=True``."""
    path = ckpt.atomic_save(_adamw_state(fused=None), tmp_path / "cpu.pt")
    lin, opt = _resuming_adamw(fused=True)
    ckpt.load_optimizer_state(opt, ckpt.load(path)["optimizer"])
    assert all(g["fused"] is True for g in opt.param_groups)
    steps = [opt.state[p]["step"] for p in lin.parameters()]
    assert all(s.dtype == torch.float32 and s.device == p.device for s, p in zip(steps, lin.parameters(), strict=True))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = [p.detach().clone() for p in lin.parameters()]
    scaler.scale(lin(torch.randn(5, 4)).square().mean()).backward()
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    assert all(not torch.equal(b, p) for b, p in zip(before, lin.parameters(), strict=True))
    assert all(float(opt.state[p]["step"]) == 2.0 for p in lin.parameters())


def test_resumed_optimizer_leaves_a_gpu_runs_fused_choice_behind(tmp_path) -> None:
    path = ckpt.atomic_save(_adamw_state(fused=True), tmp_path / "gpu.pt")
    lin, opt = _resuming_adamw(fused=None)
    ckpt.load_optimizer_state(opt, ckpt.load(path)["optimizer"])
    assert all(g["fused"] is None for g in opt.param_groups)
    assert all(opt.state[p]["step"].device.type == "cpu" for p in lin.parameters())
    lin(torch.randn(5, 4)).square().mean().backward()
    opt.step()
    assert all(float(opt.state[p]["step"]) == 2.0 for p in lin.parameters())



def test_host_memory_is_pinned_only_for_a_gpu_run(fake_gpu: None) -> None:
    assert pin_memory_for("auto") and pin_memory_for("cuda") and pin_memory_for("cuda:0")
    assert not pin_memory_for("cpu")  # a CPU run on a GPU machine


def test_no_pinning_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only machine")
    assert not pin_memory_for("auto") and not pin_memory_for("cpu")


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_a_cpu_is_bf16_only_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: str
) -> None:
    monkeypatch.setattr("mtl.utils.device.cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from pathlib import Path

    from mtl.utils import device

    real = Path.read_text
    for flags, expected in (("fpu avx512f avx512_bf16 sse", True), ("fpu avx512f avx512bw", False),
                            ("fpu amx_bf16 amx_tile", True)):
        text = f"processor\t: 0\nflags\t\t: {flags}\n"
        monkeypatch.setattr(Path, "read_text", lambda self, *a, t=text, **k: t if str(self) == "/proc/cpuinfo"
                            else real(self, *a, **k))
        assert device.cpu_has_native_bf16() is expected

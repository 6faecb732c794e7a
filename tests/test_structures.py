"""Model structures beyond hard sharing (docs/structures.md): per-task features, per-task heads and the
shared-private encoders, their shared representation / shared parameters, and every balancer mode with them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from mtl.balancers import build_balancer
from mtl.config import group_options
from mtl.models.encoder import tiny_random_encoder
from mtl.models.heads import pool
from mtl.models.multitask import MultiTaskModel, model_kwargs, task_specs
from mtl.training.engine import GradientEngine
from mtl.training.validate import ConfigError, validate_config
from tests.helpers import compose_train
from tests.toy_trainer import single_thread

TASKS = {"a": 3, "b": 5}
MAX_LEN = 12

#: every structure option as MultiTaskModel keyword arguments (the presets, and more combinations)
STRUCTURES: dict[str, dict[str, Any]] = {
    "hard": {},
    "mlp": {"head": "mlp"},
    "layer_index": {"layer": 1},
    "layer_from_top": {"layer": -2},
    "scalar_mix": {"layer": "mix"},
    "scalar_mix_max": {"layer": "mix", "task_pooling": "max"},
    "concat_layers": {"layer": "concat", "concat_layers": 2},
    "max_pooling": {"task_pooling": "max"},
    "attention_pooling": {"task_pooling": "attention"},
    "bilstm_heads": {"head": "bilstm", "task_pooling": "max", "head_hidden": 16},
    "bigru_heads": {"head": "bigru", "task_pooling": "attention"},
    "cnn_heads": {"head": "cnn", "task_pooling": "max", "head_hidden": 8},
    "mixed_heads": {"layer": "concat", "heads": {"a": {"kind": "bilstm", "layer": "mix", "pooling": "mean"},
                                                 "b": {"kind": "cnn", "layer": 2, "hidden": 6}}},
    "private_top": {"sharing": "private_top", "private_layers": 1},
    "private_top_mix": {"sharing": "private_top", "private_layers": 2, "layer": "mix",
                        "heads": {"b": {"kind": "bilstm"}}},
    "private_top_pooler": {"sharing": "private_top", "private_layers": 1, "task_pooling": "pooler"},
    "adapters": {"sharing": "adapters", "adapter_size": 4},
    "adapters_houlsby": {"sharing": "adapters", "adapter_size": 4, "adapter_placement": "houlsby"},
    "lora": {"sharing": "lora", "lora_r": 2},
    "lora_attention": {"sharing": "lora", "lora_r": 2, "task_pooling": "attention"},
}
#: the presets of the ``model`` group and the options above they stand for
PRESETS = ("adapters", "attention_pooling", "bilstm_heads", "cnn_heads", "concat_layers", "lora", "private_top",
           "scalar_mix")


@pytest.fixture(autouse=True)
def _single_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_random_encoder(num_layers=3)


def model_for(tiny: tuple[Any, Any], seed: int = 0, dropout: float = 0.1, **kwargs: Any) -> MultiTaskModel:
    torch.manual_seed(seed)
    return MultiTaskModel(copy.deepcopy(tiny[0]), TASKS, pooling="mean", dropout=dropout, max_length=MAX_LEN,
                          **kwargs)


def batch_of(tok: Any, texts: list[str], num_labels: int, seed: int = 0) -> dict[str, torch.Tensor]:
    b = dict(tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt"))
    g = torch.Generator().manual_seed(seed)
    b["labels"] = torch.randint(0, num_labels, (len(texts),), generator=g)
    return b


TEXTS = ["今天天气很好", "你好", "这部电影真的非常好看啊", "好", "我们明天去北京", "新闻：股市上涨"]


def batches(tok: Any) -> dict[str, dict[str, torch.Tensor]]:
    return {"a": batch_of(tok, TEXTS, 3, seed=1), "b": batch_of(tok, TEXTS[::-1][:5], 5, seed=2)}


# ------------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_shapes_gradients_and_the_shared_private_split(tiny, name: str) -> None:
    model = model_for(tiny, **STRUCTURES[name]).train()
    data = batches(tiny[1])
    total = 0
    for task, b in data.items():
        z = model.encode(b, task)
        assert z.shape == (len(b["labels"]), model.representation_size)
        logits = model.head(task, z, b)
        assert logits.shape == (len(b["labels"]), TASKS[task])
        total = total + logits.float().logsumexp(-1).sum()
    total.backward()
    shared = model.shared_parameters()
    private = {t: model.head_parameters(t) for t in TASKS}
    ids = [id(p) for p in shared] + [id(p) for ps in private.values() for p in ps]
    assert len(ids) == len(set(ids)), "a parameter is both shared and private, or private to two tasks"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(ids) == trainable, "every trainable weight is shared or private to exactly one task"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in shared)
    for t, ps in private.items():
        assert all(p.grad is not None for p in ps), (t, "a private weight got no gradient")
    counts = model.parameter_counts()
    assert counts["shared"] == sum(p.numel() for p in shared)
    assert counts["tasks"]["a"]["head"] + counts["tasks"]["a"]["private"] == sum(p.numel() for p in private["a"])
    text = model.describe()
    assert "shared representation" in text and "step cost estimate" in text


def test_the_default_is_the_pooled_vector_and_a_linear_head(tiny) -> None:
    model = model_for(tiny).eval()
    b = batches(tiny[1])["a"]
    out = model.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                        token_type_ids=b["token_type_ids"])
    z = model.encode(b)
    torch.testing.assert_close(z, pool(out.last_hidden_state, b["attention_mask"], "mean", None), rtol=0, atol=0)
    head = model.heads["a"]
    torch.testing.assert_close(model.head("a", z), head.net(z), rtol=0, atol=0)
    assert sorted(k for k in model.state_dict() if k.startswith("heads.")) == [
        "heads.a.net.bias", "heads.a.net.weight", "heads.b.net.bias", "heads.b.net.weight"]
    assert model.private is None and model.representation_size == 32
    assert {id(p) for p in model.shared_parameters()} == {id(p) for p in model.encoder.parameters()}


@pytest.mark.parametrize("name", ["private_top", "private_top_pooler", "adapters", "adapters_houlsby", "lora"])
def test_shared_private_encoders_start_as_hard_sharing(tiny, name: str) -> None:
    """Private top layers are copies, adapters and LoRA start as the identity: the same logits at the start."""
    kwargs = STRUCTURES[name]
    pooling = kwargs.get("task_pooling")
    hard = model_for(tiny, task_pooling=pooling).eval()
    model = model_for(tiny, **kwargs).eval()
    for t, b in batches(tiny[1]).items():
        torch.testing.assert_close(model(t, b), hard(t, b), rtol=1e-5, atol=1e-6)


def test_private_top_layers_are_the_tasks_own(tiny) -> None:
    model = model_for(tiny, **STRUCTURES["private_top"])
    assert len(model.encoder.encoder.layer) == 2 and model.encoder.pooler is None
    assert model.shared_depth == 2 and model.reads[0].what == "tokens"
    a, b = model.private["a"].layers[0], model.private["b"].layers[0]
    assert a is not b and all(p is not q for p, q in zip(a.parameters(), b.parameters(), strict=True))
    keys = model.state_dict().keys()
    assert not any(k.startswith("encoder.encoder.layer.2.") for k in keys)
    assert "private.a.layers.0.attention.self.query.weight" in keys


def test_scalar_mix_of_pooled_vectors_is_the_pooled_mix(tiny) -> None:
    """cls/mean pooling and the mix are linear: the representation holds each layer's pooled vector."""
    model = model_for(tiny, dropout=0.0, layer="mix").eval()
    assert [r.what for r in model.reads] == ["mean"] * 4 and not model.specs["a"].token_level
    with torch.no_grad():
        model.heads["a"].mix.weights.copy_(torch.tensor([0.3, -1.0, 0.5, 2.0]))
        model.heads["a"].mix.gamma.fill_(1.7)
    b = batches(tiny[1])["a"]
    out = model.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                        token_type_ids=b["token_type_ids"], output_hidden_states=True)
    s = torch.softmax(torch.tensor([0.3, -1.0, 0.5, 2.0]), 0)
    mixed = 1.7 * sum(s[j] * h for j, h in enumerate(out.hidden_states))
    expected = model.heads["a"].net(pool(mixed, b["attention_mask"], "mean", None))
    torch.testing.assert_close(model("a", b), expected, rtol=1e-5, atol=1e-6)
    mix_max = model_for(tiny, layer="mix", task_pooling="max")  # max is not linear: token states, mixed first
    assert mix_max.specs["a"].token_level and {r.what for r in mix_max.reads} == {"tokens"}


def test_per_task_heads_are_chosen_independently(tiny) -> None:
    model = model_for(tiny, **STRUCTURES["mixed_heads"])
    a, b = model.specs["a"], model.specs["b"]
    assert (a.kind, a.combine, a.layers, a.pooling) == ("bilstm", "mix", (0, 1, 2, 3), "mean")
    assert (b.kind, b.combine, b.layers, b.pooling, b.hidden) == ("cnn", "single", (2,), "mean", 6)
    assert model.heads["a"].seq.kind == "bilstm" and model.heads["b"].seq.kind == "cnn"


def test_attention_pooling_ignores_padding_columns(tiny) -> None:
    model = model_for(tiny, dropout=0.0, task_pooling="attention").eval()
    b = batches(tiny[1])["a"]
    z = model.encode(b, "a")
    padded = {**b, "attention_mask": torch.nn.functional.pad(b["attention_mask"], (0, 3)),
              "input_ids": torch.nn.functional.pad(b["input_ids"], (0, 3)),
              "token_type_ids": torch.nn.functional.pad(b["token_type_ids"], (0, 3))}
    torch.testing.assert_close(model("a", padded), model.head("a", z, b), rtol=1e-5, atol=1e-6)


def test_pooler_pooling_falls_back_to_cls_only_where_it_was_not_asked_for(tiny) -> None:
    specs = task_specs(["a"], layer="mix", encoder_pooling="pooler", n_layers=3)
    assert specs["a"].pooling == "cls"
    specs = task_specs(["a"], head="bilstm", encoder_pooling="pooler", n_layers=3)
    assert specs["a"].pooling == "cls" and specs["a"].token_level
    with pytest.raises(ValueError, match="pooling=pooler"):
        task_specs(["a"], layer="concat", pooling="pooler", n_layers=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"heads": {"c": {"kind": "bilstm"}}}, "unknown tasks"),
        ({"heads": {"a": {"knd": "bilstm"}}}, "unknown keys"),
        ({"head": "transformer"}, "choose one of"),
        ({"layer": 7}, "hidden states 0..3"),
        ({"layer": "middle"}, "choose last, mix, concat"),
        ({"task_pooling": "sum"}, "choose one of"),
        ({"sharing": "private_top", "private_layers": 4}, "choose 1..3"),
        ({"sharing": "shared"}, "choose one of"),
        ({"sharing": "adapters", "adapter_placement": "everywhere"}, "pfeiffer"),
        ({"sharing": "lora", "lora_targets": ["nothing_like_this"]}, "nothing_like_this"),
    ],
)
def test_bad_structure_options_are_refused(tiny, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        model_for(tiny, **kwargs)


def test_token_states_longer_than_max_length_need_padding_there(tiny) -> None:
    model = model_for(tiny, task_pooling="attention").eval()
    b = batches(tiny[1])["a"]
    extra = MAX_LEN - b["input_ids"].shape[1] + 2
    long = {k: torch.nn.functional.pad(v, (0, extra)) if v.dim() == 2 else v for k, v in b.items()}
    torch.testing.assert_close(model("a", long), model("a", b), rtol=1e-5, atol=1e-6)  # padding columns only
    long["attention_mask"][0, -1] = 1
    with pytest.raises(ValueError, match="longer than max_length"):
        model("a", long)


def test_adapters_and_lora_need_the_task(tiny) -> None:
    for name in ("adapters", "lora"):
        model = model_for(tiny, **STRUCTURES[name])
        with pytest.raises(ValueError, match="encode\\(batch, task\\)"):
            model.encode(batches(tiny[1])["a"])


def test_lora_runs_each_tasks_own_matrices(tiny) -> None:
    model = model_for(tiny, **STRUCTURES["lora"]).eval()
    b = batches(tiny[1])["a"]
    before = model.encode(b, "a")
    with torch.no_grad():
        for n, p in model.encoder.named_parameters():
            if ".lora_B.b." in n:
                p.normal_()
    torch.testing.assert_close(model.encode(b, "a"), before, rtol=0, atol=0)  # b's matrices: not a's pass
    assert not torch.allclose(model.encode(b, "b"), before)
    names = {n for n, p in model.encoder.named_parameters() if any(p is q for q in model.head_parameters("b"))}
    assert names and all(".lora_A.b." in n or ".lora_B.b." in n for n in names)
    assert all(p.requires_grad for p in model.encoder.parameters())  # peft froze nothing: the base is shared


# ------------------------------------------------------------------------------------------------ balancers


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(STRUCTURES))
@pytest.mark.parametrize(("balancer", "source"), [("pcgrad", "representation"), ("mgda", "parameters")])
def test_gramian_modes_and_accumulation_work_with_every_structure(tiny, name: str, balancer: str,
                                                                   source: str) -> None:
    """A step in each Gramian mode; three micro-batches (each cut to its own length) give the full batch's
    Gramian, weights and gradients."""
    data = batches(tiny[1])
    results = {}
    for k in (1, 3):
        model = model_for(tiny, dropout=0.0, **STRUCTURES[name]).eval()  # no dropout: comparable gradients
        engine = GradientEngine(model, build_balancer(balancer, list(TASKS), source=source), accum_steps=k)
        res = engine.step(data, 0, 10)
        assert res.gramian is not None and res.gramian.shape == (2, 2) and torch.isfinite(res.gramian).all()
        results[k] = (res, _grads(model))
    (r1, g1), (r3, g3) = results[1], results[3]
    torch.testing.assert_close(r3.gramian, r1.gramian, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(r3.weights, r1.weights, rtol=1e-4, atol=1e-6)
    assert g1.keys() == g3.keys()
    for n in g1:
        torch.testing.assert_close(g3[n], g1[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize(
    ("name", "tricks", "samples"),
    [("lora_attention", {"adversarial": "fgm"}, 1), ("private_top_mix", {"adversarial": "pgd", "adv_steps": 2}, 1),
     ("adapters", {"rdrop_alpha": 1.0}, 1), ("bilstm_heads", {}, 3)],
)
def test_training_tricks_work_with_the_structures(tiny, name: str, tricks: dict, samples: int) -> None:
    """FGM / PGD (through the word embeddings), R-Drop and multi-sample dropout reach the structures' heads."""
    from mtl.training.tricks import Tricks

    model = model_for(tiny, dropout_samples=samples, **STRUCTURES[name]).train()
    engine = GradientEngine(model, build_balancer("mgda_ub", list(TASKS)), tricks=Tricks(**tricks))
    res = engine.step(batches(tiny[1]), 0, 10)
    assert torch.isfinite(res.losses).all() and res.gramian is not None
    assert all(p.grad is not None for p in model.head_parameters())


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("encoder", group_options("encoder"))
def test_presets_compose_with_every_encoder(preset: str, encoder: str) -> None:
    cfg = compose_train(f"model={preset}", f"encoder={encoder}")
    validate_config(cfg)
    assert cfg.model.dropout == 0.1  # on top of model/default
    model_kwargs(OmegaConf.to_container(cfg.model, resolve=True))


def test_every_preset_is_listed_and_builds_on_the_tiny_encoder(tiny) -> None:
    from mtl.training.build import build_model

    assert set(group_options("model")) == {"default", *PRESETS}
    for preset in PRESETS:
        cfg = compose_train(f"model={preset}", "encoder=tiny_random", "encoder.kwargs.num_layers=3")
        model = build_model(cfg, copy.deepcopy(tiny[0]), {"ocnli": 3, "ocemotion": 7, "tnews": 15})
        assert model.sharing == cfg.model.sharing


def test_per_task_head_overrides_from_the_command_line() -> None:
    cfg = compose_train("model=scalar_mix", "model.heads.tnews.kind=bilstm", "model.heads.tnews.pooling=max",
                        "model.heads.ocnli={layer: -2}")
    validate_config(cfg)
    assert OmegaConf.to_container(cfg.model.heads) == {"tnews": {"kind": "bilstm", "pooling": "max"},
                                                      "ocnli": {"layer": -2}}
    for bad, match in (("model.heads.tnwes.kind=bilstm", "no task 'tnwes'"),
                       ("model.heads.tnews.knd=bilstm", "unknown keys"),
                       ("model.heads.tnews.kind=lstm", "kind=lstm"),
                       ("model.sharing=soft", "model.sharing=soft"),
                       ("model.layer=middle", "model.layer=middle")):
        with pytest.raises(ConfigError, match=match):
            validate_config(compose_train(bad))


# ------------------------------------------------------------------------------------------------ runs

RUNS = {  # preset (or overrides) -> the gradient balancer its two-step run uses
    "scalar_mix": ("pcgrad", ()),
    "concat_layers": ("mgda", ()),
    "attention_pooling": ("mgda", ()),
    "bilstm_heads": ("pcgrad", ()),
    "cnn_heads": ("mgda", ()),
    "adapters": ("pcgrad", ()),
    "lora": ("mgda", ()),
    "private_top": ("pcgrad", ("model.private_layers=1",)),
    "default": ("pcgrad", ("model.heads.ocnli.kind=bigru", "model.heads.tnews.layer=mix",
                           "model.heads.tnews.pooling=attention")),
}


@pytest.fixture
def _tiny_runs(monkeypatch: pytest.MonkeyPatch):
    from tests.helpers import tiny_run_env

    yield from tiny_run_env(monkeypatch, plots=False, one_thread=True)


def run_cfg(data_root: Path, preset: str, *extra: str) -> Any:
    from tests.helpers import tiny_run_cfg

    return tiny_run_cfg(data_root, f"model={preset}", "data.batch_size=8", "trainer.eval_every=2",
                        "trainer.max_steps=2", *extra)


@pytest.mark.parametrize("preset", list(RUNS))
def test_two_steps_with_a_gradient_balancer(_tiny_runs, fixture_data_root: Path, tmp_path: Path,
                                            preset: str) -> None:
    from mtl.training.run import run

    balancer, extra = RUNS[preset]
    metrics = run(run_cfg(fixture_data_root, preset, "sampler=all_tasks", f"balancer={balancer}",
                          "trainer.grad_accum_steps=2", *extra), tmp_path)
    assert metrics["steps"] == 2 and metrics["nonfinite_steps_skipped"] == 0
    assert set(metrics["tasks"]) == {"ocnli", "ocemotion", "tnews"}


@pytest.mark.parametrize("preset", ["private_top", "lora", "adapters", "scalar_mix", "bilstm_heads"])
def test_checkpoints_rebuild_and_predict(_tiny_runs, fixture_data_root: Path, tmp_path: Path, preset: str) -> None:
    import zipfile

    from mtl.cli.predict import main as predict_main
    from mtl.inference import load_checkpoint
    from mtl.training.run import run

    run(run_cfg(fixture_data_root, preset, "trainer.max_steps=3", "trainer.eval_every=3"), tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run", device="cpu")
    saved = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]
    state = ckpt.model.state_dict()
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    cfg = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert ckpt.model.sharing == cfg.model.sharing and ckpt.model.specs == model_for_specs(cfg)
    out = tmp_path / "sub"
    assert predict_main([str(tmp_path / "run"), "--split", "a", "--data-root", str(fixture_data_root),
                         "--out", str(out), "--device", "cpu"]) == 0
    with zipfile.ZipFile(out / "result.zip") as zf:
        assert sorted(zf.namelist()) == ["ocemotion_predict.json", "ocnli_predict.json", "tnews_predict.json"]


def model_for_specs(cfg: Any) -> dict:
    kwargs = model_kwargs(OmegaConf.to_container(cfg.model, resolve=True))
    return task_specs(["ocnli", "ocemotion", "tnews"], head=kwargs["head"], layer=kwargs["layer"],
                      concat_layers=kwargs["concat_layers"], pooling=kwargs["task_pooling"],
                      encoder_pooling=cfg.encoder.pooling, head_hidden=kwargs["head_hidden"], heads=kwargs["heads"],
                      n_layers=2)


def test_resumed_run_ends_like_an_uninterrupted_one(_tiny_runs, fixture_data_root: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mtl.training import checkpoint as ckpt
    from mtl.training import run as run_mod

    extra = ("sampler=all_tasks", "balancer=pcgrad", "model.heads.tnews.kind=bilstm", "trainer.max_steps=6",
             "trainer.eval_every=3", "trainer.checkpoint_every=2", "model.private_layers=1")
    full = run_mod.run(run_cfg(fixture_data_root, "private_top", *extra), tmp_path / "full")
    original = run_mod.Trainer.train_step

    def dying(self):
        if self.step == 5:
            raise RuntimeError("killed")
        return original(self)

    with monkeypatch.context() as m:
        m.setattr(run_mod.Trainer, "train_step", dying)
        with pytest.raises(RuntimeError, match="killed"):
            run_mod.run(run_cfg(fixture_data_root, "private_top", *extra), tmp_path / "resumed")
    again = run_mod.run(run_cfg(fixture_data_root, "private_top", *extra, "trainer.resume=auto"),
                        tmp_path / "resumed")
    assert again["resumed_from"] and again["history"] == full["history"]
    a = ckpt.load(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = ckpt.load(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_vocabulary_trimming_with_lora(_tiny_runs, fixture_data_root: Path, tmp_path: Path) -> None:
    from mtl.inference import load_checkpoint
    from mtl.models.vocab_trim import RemappedEmbedding
    from mtl.training.run import run

    run(run_cfg(fixture_data_root, "lora", "encoder.trim_vocab=true", "sampler=all_tasks", "balancer=mgda"),
        tmp_path)
    ckpt = load_checkpoint(tmp_path, device="cpu")
    emb = ckpt.model.encoder.get_input_embeddings()
    assert isinstance(emb, RemappedEmbedding) and emb.num_embeddings < emb.original_num_embeddings / 10
    saved = torch.load(tmp_path / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]
    state = ckpt.model.state_dict()
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)


DDP_CASES = {
    "private_top-mgda_ub": ("model=private_top", "model.private_layers=1", "model.heads.tnews.kind=bilstm",
                            "balancer=mgda_ub", "sampler=all_tasks"),  # representation mode, token-level
    "lora-mgda": ("model=lora", "model.lora_dropout=0.0", "balancer=mgda", "sampler=all_tasks"),  # parameters
}


def test_two_gloo_ranks_train_a_structure_like_one_process(_tiny_runs, fixture_data_root: Path,
                                                           tmp_path: Path) -> None:
    """torch.distributed (tests/test_ddp.py's protocol): two ranks with batch B = one process with 2B."""
    from mtl.training import checkpoint as ckpt
    from mtl.training.run import run
    from tests.test_ddp import B, cfg_for, spawn, wait

    jobs = [(cfg_for(fixture_data_root, B, extra), str(tmp_path / f"ddp-{n}")) for n, extra in DDP_CASES.items()]
    workers = spawn(2, jobs)
    refs = {n: run(cfg_for(fixture_data_root, 2 * B, extra), tmp_path / f"single-{n}") for n, extra in DDP_CASES.items()}
    wait(workers)
    for name in refs:
        a = ckpt.load(tmp_path / f"ddp-{name}" / "checkpoints" / "last.pt")
        b = ckpt.load(tmp_path / f"single-{name}" / "checkpoints" / "last.pt")
        assert a["world_size"] == 2 and a["model"].keys() == b["model"].keys()
        for k, v in b["model"].items():
            torch.testing.assert_close(a["model"][k], v, rtol=1e-4, atol=2e-5, msg=f"{name}: {k}")


def test_a_resume_with_another_per_task_head_is_refused() -> None:
    from mtl.training.validate import identity_differences

    old = {"model": {"head": "linear", "heads": {}}}
    assert identity_differences(old, {"model": {"head": "linear", "heads": {"tnews": {"kind": "bilstm"}}}}) == [
        "model.heads.tnews: <unset> -> {'kind': 'bilstm'}"]
    assert identity_differences(old, {"model": {"head": "mlp", "heads": {}}}) == ["model.head: linear -> mlp"]
    assert identity_differences({"model": {"head": "linear"}}, old) == []  # a checkpoint from before the key

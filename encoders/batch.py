"""Batch embedding of a catalog, resumable through a content-hash cache.

Every item gets a key = sha256(encoder fingerprint, text kind, title, description, image-bytes hash). Vectors
are stored per key in a SQLite file (stdlib, one transaction per batch), so
  - an unchanged item is never embedded twice (a second run embeds 0 items),
  - a changed title, description or image changes the key and is re-embedded,
  - a crash keeps every batch committed before it.
The fingerprint includes the encoders' versions (and the adapter's weights), so vectors from another model
are never served. Undecodable images are counted and survived: the item keeps its text and fused vectors.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from encoders.base import TextEncoder

log = logging.getLogger(__name__)

VECTOR_FIELDS = ("text", "image", "fused")


def item_text(title: str | None, description: str | None) -> str | None:
    """The text embedded for an item: its title, then its description when there is one."""
    parts = [p.strip() for p in (title, description) if isinstance(p, str) and p.strip()]
    return "\n".join(parts) if parts else None


def _get(item: Any, name: str) -> Any:
    if isinstance(item, Mapping):
        return item.get(name)
    return getattr(item, name, None)


def _image_of(item: Any) -> Any:
    """An item's image: `image` (bytes / PIL / path) if present, else `image_path`."""
    img = _get(item, "image")
    return img if img is not None else _get(item, "image_path")


def image_digest(image: Any) -> str:
    """Hash of an image's bytes, so a re-saved identical file hits the cache and an edited one does not.

    An unreadable path hashes as 'unreadable:<path>' so that the item still has a stable key (and the error
    is reported when the encoder tries it).
    """
    if image is None:
        return "none"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(image)).hexdigest()
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as fh:
                return hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError:
            return f"unreadable:{os.fspath(image)}"
    if hasattr(image, "tobytes"):  # a PIL image
        h = hashlib.sha256(f"{getattr(image, 'mode', '')}{getattr(image, 'size', '')}".encode())
        h.update(image.tobytes())
        return h.hexdigest()
    raise TypeError(f"cannot hash an image of type {type(image).__name__}")


# ------------------------------------------------------------------------------------------ the store


class VectorStore:
    """key -> (text, image, fused) float32 vectors in one SQLite file; None where a modality is missing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, text BLOB, image BLOB, "
                         "fused BLOB, image_error TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        self._db.commit()

    def set_meta(self, name: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value)))
        self._db.commit()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def get_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        uniq = list(dict.fromkeys(keys))
        for s in range(0, len(uniq), 500):  # SQLite's bound-parameter limit
            chunk = uniq[s : s + 500]
            rows = self._db.execute(
                f"SELECT key, text, image, fused, image_error FROM vectors WHERE key IN ({','.join('?' * len(chunk))})",
                chunk).fetchall()
            for key, text, image, fused, err in rows:
                out[key] = {"text": _unblob(text), "image": _unblob(image), "fused": _unblob(fused),
                            "image_error": err}
        return out

    def put_many(self, records: dict[str, dict[str, Any]]) -> None:
        """Insert one batch in a single transaction: all of it survives a later crash, or none."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?)",
                [(k, _blob(r.get("text")), _blob(r.get("image")), _blob(r.get("fused")), r.get("image_error"))
                 for k, r in records.items()])

    def close(self) -> None:
        self._db.close()


def _blob(vec: np.ndarray | None) -> bytes | None:
    if vec is None:
        return None
    vec = np.asarray(vec, dtype=np.float32)
    return None if not np.isfinite(vec).all() else vec.tobytes()


def _unblob(data: bytes | None) -> np.ndarray | None:
    return None if data is None else np.frombuffer(data, dtype=np.float32)


# ---------------------------------------------------------------------------------------- the embedder


@dataclass
class EmbedStats:
    items: int = 0
    embedded: int = 0  # items that went through the models in this run
    cache_hits: int = 0
    image_errors: int = 0
    without_text: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first few image errors, for the report

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        return (f"{self.items:,} items: {self.embedded:,} embedded, {self.cache_hits:,} from cache, "
                f"{self.image_errors:,} bad images (kept with text only), {self.without_text:,} without text; "
                f"{self.seconds:.1f}s ({self.items_per_s:,.1f} items/s)")


@contextlib.contextmanager
def torch_threads(n: int | None, *encoders: Any) -> Iterator[None]:
    """Run with `n` torch/BLAS threads (and tell encoders with their own pools), restoring afterwards."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    for enc in encoders:
        if enc is not None and hasattr(enc, "set_threads"):
            enc.set_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TextOnlyEncoder:
    """Gives a bare TextEncoder the MultimodalEncoder.encode() shape: fused = text, no image."""

    def __init__(self, text_encoder: TextEncoder, text_kind: str = "passage"):
        self.text_encoder = text_encoder
        self.image_encoder = None
        self.dim = int(text_encoder.dim)
        self.text_kind = text_kind

    def describe(self) -> dict[str, Any]:
        return {"text_encoder": self.text_encoder.name, "image_encoder": None, "text_kind": self.text_kind}

    def encode(self, titles: Sequence[str | None], images: Sequence[Any] | None = None, *,
               errors: str = "skip", progress: bool = False) -> dict[str, Any]:
        n = len(titles)
        text = np.full((n, self.dim), np.nan, dtype=np.float32)
        idx = [i for i, t in enumerate(titles) if isinstance(t, str) and t.strip()]
        if idx:
            text[idx] = self.text_encoder.encode([titles[i] for i in idx], kind=self.text_kind)
        return {"text": text, "image": np.full((n, self.dim), np.nan, np.float32), "fused": text.copy(),
                "has_image": np.zeros(n, bool), "image_errors": {}}


def fingerprint(encoder: Any) -> str:
    """A hash of everything that determines the vectors: encoder versions, adapter weights, fusion config."""
    from encoders.text import encoder_version

    desc = dict(encoder.describe()) if hasattr(encoder, "describe") else {}
    desc["text_version"] = encoder_version(encoder.text_encoder)
    img = getattr(encoder, "image_encoder", None)
    if img is not None:
        desc["image_version"] = str(getattr(img, "version", None) or img.name)
    adapter = getattr(encoder, "adapter", None)
    if adapter is not None and hasattr(adapter, "net"):
        h = hashlib.sha256()
        for name, tensor in sorted(adapter.net.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().numpy().tobytes())
        desc["adapter_weights"] = h.hexdigest()
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    from encoders.e5 import cache_root

    return cache_root() / "embeddings"


@dataclass
class BatchEmbedder:
    """Embeds items in batches with a progress bar, through the content-hash cache.

    encoder: a `encoders.fusion.MultimodalEncoder` (text + image + fused) or a bare `TextEncoder` (text only).
    batch_size: items per model call; threads: torch/BLAS threads for the run (None: leave as is);
    cache_dir: where the SQLite store lives (None: $MMREC_CACHE/embeddings; False: no cache).
    """

    encoder: Any
    batch_size: int = 64
    threads: int | None = None
    cache_dir: str | Path | None | bool = None
    progress: bool = True
    stats: EmbedStats = field(default_factory=EmbedStats)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1")
        if not hasattr(self.encoder, "text_encoder"):  # a bare TextEncoder
            self.encoder = TextOnlyEncoder(self.encoder)
        self.fingerprint = fingerprint(self.encoder)
        self.store: VectorStore | None = None
        if self.cache_dir is not False:
            root = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
            self.store = VectorStore(root / f"{self.fingerprint}.sqlite")
            self.store.set_meta("encoder", self.encoder.describe() if hasattr(self.encoder, "describe") else {})

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    def key(self, title: str | None, description: str | None, image: Any) -> str:
        h = hashlib.sha256()
        for part in (self.fingerprint, title or "", description or "", image_digest(image)):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()

    def embed(self, items: Iterable[Any], *, total: int | None = None) -> dict[str, Any]:
        """Vectors for every item, in order: {"text": (n, D), "image": (n, D), "fused": (n, D)} float32 arrays
        (NaN rows where a modality is missing), "has_image" (n,) bool, "image_errors" {row: message}."""
        from tqdm.auto import tqdm

        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        stats = self.stats = EmbedStats()
        start = time.perf_counter()
        chunks: dict[str, list[np.ndarray]] = {f: [] for f in VECTOR_FIELDS}
        errors: dict[int, str] = {}
        offset = 0
        bar = tqdm(total=total, desc="embedding", unit="item", disable=not self.progress, dynamic_ncols=True)
        with torch_threads(self.threads, self.encoder.text_encoder, getattr(self.encoder, "image_encoder", None)):
            for batch in _batched(items, self.batch_size):
                out, errs = self._embed_batch(batch, stats)
                for f in VECTOR_FIELDS:
                    chunks[f].append(out[f])
                errors.update({offset + i: m for i, m in errs.items()})
                offset += len(batch)
                bar.update(len(batch))
                bar.set_postfix(cached=stats.cache_hits, bad_images=stats.image_errors, refresh=False)
        bar.close()
        stats.seconds = time.perf_counter() - start
        stats.items = offset
        result = {f: (np.concatenate(chunks[f]) if chunks[f] else np.zeros((0, self.dim), np.float32))
                  for f in VECTOR_FIELDS}
        result["has_image"] = np.isfinite(result["image"]).all(axis=1) if offset else np.zeros(0, bool)
        result["image_errors"] = errors
        if errors:
            log.warning("%d images could not be decoded; those items got text-only vectors (first: %s)",
                        len(errors), next(iter(errors.values())))
        return result

    def _embed_batch(self, batch: list[Any], stats: EmbedStats) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        n = len(batch)
        texts = [item_text(_get(it, "title"), _get(it, "description")) for it in batch]
        has_images = self.encoder.image_encoder is not None
        images = [_image_of(it) if has_images else None for it in batch]
        keys = [self.key(_get(it, "title"), _get(it, "description"), img) for it, img in zip(batch, images)]
        cached = self.store.get_many(keys) if self.store is not None else {}
        out = {f: np.full((n, self.dim), np.nan, dtype=np.float32) for f in VECTOR_FIELDS}
        errors: dict[int, str] = {}
        todo: list[int] = []
        for i, k in enumerate(keys):
            rec = cached.get(k)
            if rec is None:
                todo.append(i)
                continue
            stats.cache_hits += 1
            for f in VECTOR_FIELDS:
                if rec[f] is not None:
                    out[f][i] = rec[f]
            if rec["image_error"]:
                errors[i] = rec["image_error"]
        if todo:
            res = self.encoder.encode([texts[i] for i in todo], [images[i] for i in todo], errors="skip")
            fresh: dict[str, dict[str, Any]] = {}
            for j, i in enumerate(todo):
                rec = {f: res[f][j] for f in VECTOR_FIELDS}
                rec["image_error"] = res["image_errors"].get(j)
                if rec["image_error"]:
                    errors[i] = rec["image_error"]
                for f in VECTOR_FIELDS:
                    out[f][i] = rec[f]
                fresh[keys[i]] = rec
            if self.store is not None:
                self.store.put_many(fresh)
            stats.embedded += len(todo)
        stats.image_errors += len(errors)
        if len(stats.errors) < 5:
            stats.errors.extend(list(errors.values())[: 5 - len(stats.errors)])
        stats.without_text += sum(1 for t in texts if t is None)
        return out, errors

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def embed_dataset(dataset: Any, embedder: BatchEmbedder, *, prefix: str = "") -> Any:
    """A `datasets.Dataset` (or anything iterable of dict-like items) with text_vector, image_vector (None
    where no usable image) and fused_vector columns added. Items without text or image get None vectors."""
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        rows = [dict(r) if isinstance(r, Mapping) else _as_dict(r) for r in dataset]
        if not rows:
            raise ValueError("nothing to embed: the catalog is empty")
        dataset = datasets.Dataset.from_list(rows)
    if len(dataset) == 0:
        raise ValueError("nothing to embed: the catalog is empty")
    if "title" not in dataset.column_names:
        raise ValueError(f"the catalog has no 'title' column (columns: {', '.join(dataset.column_names)})")
    wanted = [c for c in ("title", "description", "image", "image_path") if c in dataset.column_names]
    view = dataset.select_columns(wanted)
    res = embedder.embed(_iter_rows(view, embedder.batch_size), total=len(dataset))
    feature = datasets.Sequence(datasets.Value("float32"), length=embedder.dim)
    out = dataset
    for f in VECTOR_FIELDS:
        col = f"{prefix}{f}_vector"
        if col in out.column_names:
            out = out.remove_columns(col)
        arr = res[f]
        values = [None if not np.isfinite(row).all() else row for row in arr]
        out = out.add_column(col, values, feature=feature)
    return out


def _iter_rows(ds: Any, chunk: int) -> Iterator[dict[str, Any]]:
    """Rows of a Dataset read in column slices (much faster than row-by-row indexing)."""
    for s in range(0, len(ds), max(chunk, 256)):
        block = ds[s : s + max(chunk, 256)]
        cols = list(block)
        for j in range(len(block[cols[0]])):
            yield {c: block[c][j] for c in cols}


def _as_dict(item: Any) -> dict[str, Any]:
    if hasattr(item, "to_row"):
        return item.to_row()
    if hasattr(item, "__dict__"):
        return dict(vars(item))
    raise TypeError(f"cannot embed an item of type {type(item).__name__}: give dicts, dataclasses or a Dataset")

"""Batch embedding: (text, image) inputs in, text / image / fused vectors out, in batches with a progress
bar, through the content-hash `EmbeddingCache` (so a run is resumable and an unchanged input is embedded
once). The inputs are what a recipe made of each item (mmrec's `ItemRecipe`): this module knows no catalog
columns. Undecodable images are counted and survived: the item keeps its text and fused vectors.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from encoders.base import ImageDecodeError
from encoders.cache import VECTOR_FIELDS, EmbeddingCache, content_key
from encoders.multimodal import MultimodalEncoder
from encoders.threads import torch_threads

log = logging.getLogger(__name__)

Input = tuple[str | None, Any]  # (text, image) of one item; either may be None


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


def default_cache_dir() -> Path:
    from encoders.e5 import cache_root

    return cache_root() / "embeddings"


@dataclass
class BatchEmbedder:
    """Embeds (text, image) inputs in batches with a progress bar, through the content-hash cache.

    encoder: a `MultimodalEncoder` (a bare `TextEncoder` is wrapped into a text-only one).
    batch_size: inputs per model call; threads: torch/BLAS threads during `embed` (None: leave as is);
    cache_dir: where the SQLite cache lives (None: $MMREC_CACHE/embeddings; False: no cache).
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
        if not isinstance(self.encoder, MultimodalEncoder):
            self.encoder = MultimodalEncoder(self.encoder)  # text only: fused = text
        self.identity = self.encoder.identity()
        self.cache: EmbeddingCache | None = None
        if self.cache_dir is not False:
            root = Path(self.cache_dir) if self.cache_dir else default_cache_dir()
            self.cache = EmbeddingCache(root / f"{self.identity}.sqlite")
            self.cache.set_meta("encoder", self.encoder.describe())

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    def embed(self, inputs: Iterable[Input], *, total: int | None = None) -> dict[str, Any]:
        """Vectors for every input, in order: {"text": (n, D), "image": (n, D), "fused": (n, D)} float32 arrays
        (NaN rows where a modality is missing), "has_image" (n,) bool, "image_errors" {row: message}.
        Holds every vector in memory: for a large catalog use `embed_batches`, which streams."""
        chunks: dict[str, list[np.ndarray]] = {f: [] for f in VECTOR_FIELDS}
        errors: dict[int, str] = {}
        offset = 0
        for out in self.embed_batches(inputs, total=total):
            for f in VECTOR_FIELDS:
                chunks[f].append(out[f])
            errors.update({offset + i: m for i, m in out["image_errors"].items()})
            offset += len(out["fused"])
        result: dict[str, Any] = {f: (np.concatenate(chunks[f]) if chunks[f] else np.zeros((0, self.dim), np.float32))
                                  for f in VECTOR_FIELDS}
        result["has_image"] = np.isfinite(result["image"]).all(axis=1) if offset else np.zeros(0, bool)
        result["image_errors"] = errors
        return result

    def embed_batches(self, inputs: Iterable[Input], *, total: int | None = None) -> Iterator[dict[str, Any]]:
        """The same vectors as `embed`, yielded one batch of `batch_size` inputs at a time (in order; each
        batch's "image_errors" keys are rows of that batch). Only one batch is held at a time, so memory stays
        flat however large the catalog; every batch is in the cache before it is yielded (resumable). The
        run's counts are in `stats` while it goes and when it ends."""
        from tqdm.auto import tqdm

        if total is None and hasattr(inputs, "__len__"):
            total = len(inputs)  # type: ignore[arg-type]
        stats = self.stats = EmbedStats()
        resumed = time.perf_counter()  # stats.seconds counts this generator's own time, not the caller's
        first_error: str | None = None
        bar = tqdm(total=total, desc="embedding", unit="item", disable=not self.progress, dynamic_ncols=True)
        try:
            with torch_threads(self.threads, self.encoder.text_encoder, self.encoder.image_encoder):
                for batch in _batched(inputs, self.batch_size):
                    texts, images = [t for t, _ in batch], [i for _, i in batch]
                    out = self.embed_batch(texts, images, errors="skip", stats=stats)
                    stats.items += len(batch)
                    if first_error is None and out["image_errors"]:
                        first_error = next(iter(out["image_errors"].values()))
                    bar.update(len(batch))
                    bar.set_postfix(cached=stats.cache_hits, bad_images=stats.image_errors, refresh=False)
                    stats.seconds += time.perf_counter() - resumed
                    yield out
                    resumed = time.perf_counter()
                stats.seconds += time.perf_counter() - resumed
        finally:
            bar.close()
        if stats.image_errors:
            log.warning("%d images could not be decoded; those items got text-only vectors (first: %s)",
                        stats.image_errors, first_error)

    def embed_batch(self, texts: Sequence[str | None], images: Sequence[Any], *, errors: str = "skip",
                    stats: EmbedStats | None = None) -> dict[str, Any]:
        """One batch through the cache and the encoder. errors="raise": an undecodable image (fresh or
        remembered by the cache) raises ImageDecodeError before anything of the batch is cached."""
        n = len(texts)
        if self.encoder.image_encoder is None:
            images = [None] * n
        keys = [content_key(self.identity, t, img) for t, img in zip(texts, images)]
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        out: dict[str, Any] = {f: np.full((n, self.dim), np.nan, dtype=np.float32) for f in VECTOR_FIELDS}
        bad: dict[int, str] = {}
        todo: list[int] = []
        for i, k in enumerate(keys):
            rec = cached.get(k)
            if rec is None:
                todo.append(i)
                continue
            if rec["image_error"] and errors == "raise":
                raise ImageDecodeError(rec["image_error"])
            for f in VECTOR_FIELDS:
                if rec[f] is not None:
                    out[f][i] = rec[f]
            if rec["image_error"]:
                bad[i] = rec["image_error"]
        if todo:
            res = self.encoder.encode([texts[i] for i in todo], [images[i] for i in todo], errors=errors)
            fresh: dict[str, dict[str, Any]] = {}
            for j, i in enumerate(todo):
                rec = {f: res[f][j] for f in VECTOR_FIELDS}
                rec["image_error"] = res["image_errors"].get(j)
                if rec["image_error"]:
                    bad[i] = rec["image_error"]
                for f in VECTOR_FIELDS:
                    out[f][i] = rec[f]
                fresh[keys[i]] = rec
            if self.cache is not None:
                self.cache.put_many(fresh)
        out["has_image"] = np.isfinite(out["image"]).all(axis=1)
        out["image_errors"] = bad
        if stats is not None:
            stats.cache_hits += n - len(todo)
            stats.embedded += len(todo)
            stats.image_errors += len(bad)
            stats.errors.extend(list(bad.values())[: max(0, 5 - len(stats.errors))])
            stats.without_text += sum(1 for t in texts if t is None)
        return out

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch

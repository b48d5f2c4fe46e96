"""`mmrec.embed`: a catalog in, the same catalog with text / image / fused vectors out.

The first thing users touch. Composes the encoders (text, image, adapter, fusion) and the batch embedder
with its content-hash cache, so re-running on a grown catalog only embeds the new or changed items.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import datasets

from mmrec.errors import UserError

log = logging.getLogger(__name__)


def _as_dataset(catalog: Any) -> datasets.Dataset:
    """A Dataset from a Dataset, a built-in dataset name, a catalog file, or an iterable of items/dicts."""
    if isinstance(catalog, datasets.Dataset):
        return catalog
    if isinstance(catalog, (str, Path)):
        from mmrec.embedding.image_adapter import load_catalog_items

        return load_catalog_items(str(catalog))
    if isinstance(catalog, Iterable):
        rows = []
        for item in catalog:
            if hasattr(item, "to_row"):
                rows.append(item.to_row())
            elif isinstance(item, dict):
                rows.append(item)
            else:
                raise UserError(f"cannot embed an item of type {type(item).__name__}: give mmrec.Item, dicts or a Dataset")
        if not rows:
            raise UserError("nothing to embed: the catalog is empty")
        return datasets.Dataset.from_list(rows)
    raise UserError(f"cannot embed {type(catalog).__name__}: give a Dataset, a catalog path or an iterable of items")


def build_encoder(text_encoder: Any = "default", image_encoder: Any = "default", adapter: Any = "default",
                  fusion: Any = None, *, progress: bool = True) -> Any:
    """The encoder `embed` uses: text only when image_encoder is None, else a MultimodalEncoder."""
    from encoders.text import TextEncoderError
    from mmrec.embedding.text_model import load_text

    try:
        if image_encoder is None:
            return load_text(text_encoder)
        from encoders.image import DEFAULT_IMAGE_ENCODER, ModelUnavailableError
        from mmrec.embedding.image_adapter import load_multimodal_encoder

        image = DEFAULT_IMAGE_ENCODER if image_encoder == "default" else image_encoder
        try:
            return load_multimodal_encoder(text_encoder, image, adapter, fusion, progress=progress)
        except ModelUnavailableError as exc:
            raise UserError(str(exc)) from None
    except TextEncoderError as exc:
        raise UserError(str(exc)) from None


def embed(catalog: Any, *, text_encoder: Any = "default", image_encoder: Any = "default", adapter: Any = "default",
          fusion: Any = None, batch_size: int = 64, threads: int | None = None,
          cache_dir: str | Path | None | bool = None, progress: bool = True, return_stats: bool = False) -> Any:
    """Embed a catalog; returns it as a `datasets.Dataset` with `text_vector`, `image_vector` (None where the
    item has no usable image) and `fused_vector` columns (all in the text space; see encoders/fusion.py).

    catalog: a Dataset, a built-in dataset name, a JSONL/Parquet/CSV file, or an iterable of Items/dicts.
    text_encoder / image_encoder: specs (see mmrec.embedding.text_model.load_text / encoders.load_image_encoder) or encoder
      objects; image_encoder=None embeds text only (fused = text).
    adapter: "default" (trained on emoji-market into the cache on first use), a saved adapter path, or None
      (the training-free class-name bridge only).
    threads: torch/BLAS threads during the run (None leaves the process setting alone).
    cache_dir: the content-hash cache (None: $MMREC_CACHE/embeddings; False: no cache).
    return_stats: also return the run's `EmbedStats` (items embedded, cache hits, bad images, items/s).
    """
    from encoders.batch import BatchEmbedder, embed_dataset

    ds = _as_dataset(catalog)
    encoder = build_encoder(text_encoder, image_encoder, adapter, fusion, progress=progress)
    try:
        embedder = BatchEmbedder(encoder, batch_size=batch_size, threads=threads, cache_dir=cache_dir,
                                 progress=progress)
        try:
            out = embed_dataset(ds, embedder)
        finally:
            embedder.close()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    log.info("embedded %s", embedder.stats.summary())
    return (out, embedder.stats) if return_stats else out

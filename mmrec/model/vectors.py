"""The content vectors the fusion transformer reads: one unit vector per item, and the space they live in.

Made by the one `ItemEncoder` (so they are exactly what `mmrec embed` and the service make for the same
item), or read from a service data dir's store (what the service will retrieve with, never re-embedded).
``ItemVectors.version`` names the space; a checkpoint records it and refuses vectors from another.

Specs (`catalog_vectors`):
  text:<text spec>     the recipe's text through a text encoder (no images), e.g. text:use-m3
  service[:DATA_DIR]   the fused vectors a service data dir stores (its recorded encoders and recipe; default
                       `mmrec serve` settings without DATA_DIR)
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from encoders.base import l2_normalize
from mmrec.embedding.item_encoder import EncoderConfig, ItemEncoder, load_item_encoder
from mmrec.embedding.recipe import ItemRecipe
from mmrec.errors import UserError
from mmrec.store.catalog_store import CatalogConfig, CatalogStore

log = logging.getLogger(__name__)


@dataclass
class ItemVectors:
    """Unit-norm content vectors of a catalog, row i = ``item_ids[i]``."""

    item_ids: np.ndarray  # (n,) object
    vectors: np.ndarray  # (n, C) float32, L2-normalised
    spec: str  # how they were made, e.g. "text:use-m3"
    version: str  # identity of the vector space (recipe + encoders); checkpoints check it

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def index(self) -> dict[str, int]:
        return {str(x): i for i, x in enumerate(self.item_ids)}

    def aligned(self, item_ids: Sequence[Any]) -> np.ndarray:
        """(len(item_ids), C) rows for the given ids (e.g. a split's item vocabulary), in that order."""
        where = self.index()
        missing = [x for x in item_ids if str(x) not in where]
        if missing:
            raise UserError(f"{len(missing)} item ids have no content vector, e.g. {missing[:3]}")
        return self.vectors[[where[str(x)] for x in item_ids]]


def vectors_version(item_vectors: np.ndarray, spec: str = "") -> str:
    """A short hash of a content-vector matrix (for vectors that come without a named space)."""
    h = hashlib.sha256(spec.encode())
    h.update(np.ascontiguousarray(item_vectors, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _rows(items: Any) -> list[dict[str, Any]]:
    if hasattr(items, "to_list"):  # datasets.Dataset
        rows = items.to_list()
    elif hasattr(items, "to_dict") and hasattr(items, "columns"):  # pandas
        rows = items.to_dict("records")
    else:
        rows = [dict(r) for r in items]
    if not rows:
        raise UserError("the catalog is empty")
    return rows


def encoded_vectors(items: Any, encoder: ItemEncoder, spec: str) -> ItemVectors:
    """Every item through `encoder` (batched, cached); items without text or usable image are an error."""
    rows = _rows(items)
    out = encoder.embed(rows)
    fused = out["fused"]
    bad = np.flatnonzero(~np.isfinite(fused).all(axis=1))
    if len(bad):
        raise UserError(f"{len(bad)} items have neither a title nor a usable image, e.g. {rows[int(bad[0])]['item_id']!r}")
    ids = np.asarray([r["item_id"] for r in rows], dtype=object)
    if not encoder.multimodal.mix.normalize:  # the model reads unit vectors, like the cosine index
        fused = l2_normalize(fused)
    return ItemVectors(item_ids=ids, vectors=fused, spec=spec, version=encoder.space)


def text_vectors(items: Any, spec: str = "use-m3", *, recipe: ItemRecipe | None = None, cache: bool = True,
                 batch_size: int = 512, progress: bool = True) -> ItemVectors:
    """The recipe's text of each item through the text encoder ``spec`` (no images); cached by content."""
    recipe = recipe or ItemRecipe()
    config = EncoderConfig(text_encoder=spec, image_encoder=None, adapter=None, recipe=recipe.fields)
    encoder = load_item_encoder(config, cache_dir=None if cache else False, batch_size=batch_size, progress=progress)
    try:
        return encoded_vectors(items, encoder, f"text:{spec}")
    finally:
        encoder.close()


def store_config(data_dir: str | Path | None) -> CatalogConfig:
    """The catalog config a service data dir was built with (catalog.json), or the `mmrec serve` defaults."""
    if not data_dir:
        return CatalogConfig()
    recorded = CatalogConfig.recorded(data_dir)
    if recorded is None:
        raise UserError(f"{data_dir} is not a service data dir (no catalog.json)")
    return recorded


def store_vectors(items: Any, data_dir: str | Path | None = None, *, progress: bool = True) -> ItemVectors:
    """The fused vectors for these items in the space of the service data dir: read from its store where it
    holds them (never re-embedded), the rest embedded by the store's own `ItemEncoder` (same recipe, same
    space) without being written. Without a data dir: the default service encoders, embedded."""
    rows = _rows(items)
    config = store_config(data_dir)
    if not data_dir:
        encoder = load_item_encoder(config, progress=progress)
        try:
            return encoded_vectors(rows, encoder, f"service:{encoder.name}")
        finally:
            encoder.close()
    catalog = CatalogStore.open(data_dir, config)
    try:
        ids = [str(r["item_id"]) for r in rows]
        found: dict[str, np.ndarray] = {}
        steps = range(0, len(ids), 1024)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=f"read vectors from {data_dir}", unit="batch", leave=False)
        for s in steps:
            found.update({k: v for k, (v, _) in catalog.item_vectors(ids[s : s + 1024]).items()})
        missing = [r for r in rows if str(r["item_id"]) not in found]
        if missing:
            log.info("%d of %d items are not in %s: embedding them with its encoders", len(missing), len(rows), data_dir)
            extra = encoded_vectors(missing, catalog.encoder, "")
            found.update(zip(map(str, extra.item_ids), extra.vectors))
        vectors = l2_normalize(np.stack([found[i] for i in ids]))
        return ItemVectors(item_ids=np.asarray(ids, dtype=object), vectors=vectors,
                           spec=f"service:{catalog.encoder.name}", version=catalog.encoder.space)
    finally:
        catalog.close()


def catalog_vectors(items: Any, spec: str = "text:use-m3", *, recipe: ItemRecipe | None = None,
                    progress: bool = True) -> ItemVectors:
    """Content vectors for a catalog by spec (see the module docstring); ``recipe`` applies to text specs
    (a data dir keeps its own)."""
    kind, _, rest = spec.partition(":")
    if kind == "text":
        return text_vectors(items, rest or "use-m3", recipe=recipe, progress=progress)
    if kind == "service":
        return store_vectors(items, rest or None, progress=progress)
    raise UserError(f"unknown item-vector spec {spec!r}: use 'text:<encoder>' or 'service[:DATA_DIR]'")

"""Content vectors for a catalog, built by composing the encoders and cached on disk.

The fusion transformer reads every item through a frozen content vector; this module makes the
(n_items, C) matrix for a catalog and says which *space* it lives in (``version``), so a checkpoint
trained on one space refuses vectors from another. The version depends on the encoder and how the
text is composed, not on the catalog rows: adding products keeps the space, changing the encoder
does not.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmrec.errors import UserError
from mmrec.paths import cache_dir

log = logging.getLogger(__name__)

TEXT_RECIPE = "item_text/1"  # bump when `item_text` changes
DEFAULT_FIELDS: tuple[str, ...] = ("title", "alt_title", "year", "description", "category")


@dataclass
class ItemVectors:
    """Unit-norm content vectors of a catalog, row i = ``item_ids[i]``."""

    item_ids: np.ndarray  # (n,) object
    vectors: np.ndarray  # (n, C) float32, L2-normalised
    spec: str  # how they were made, e.g. "text:use-m3"
    version: str  # identity of the vector space (encoder + recipe); checkpoints check it

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
    """A short hash of a content-vector matrix (and the encoder spec that made it)."""
    h = hashlib.sha256(spec.encode())
    h.update(np.ascontiguousarray(item_vectors, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def item_text(row: dict[str, Any], fields: Sequence[str] = DEFAULT_FIELDS) -> str:
    """The text that stands for an item, from the chosen ``fields`` (title, alt_title, year, description,
    category). ML-1M with the defaults: "Heat (1995). Action, Crime, Thriller".

    For a multilingual catalog use ``fields=("title",)``: category words in one language on every
    listing would make translations look alike because of the shared words, not the product.
    """
    attrs = row.get("attributes") or "{}"
    attrs = json.loads(attrs) if isinstance(attrs, str) else dict(attrs)
    title = str(row.get("title") or "")
    if "alt_title" in fields and attrs.get("alt_title"):
        title += f" ({attrs['alt_title']})"
    if "year" in fields and attrs.get("year"):
        title += f" ({attrs['year']})"
    parts = [title] if "title" in fields else []
    if "description" in fields and row.get("description"):
        parts.append(str(row["description"]))
    category = row.get("category")
    if "category" in fields and category:
        parts.append(", ".join(p for p in str(category).replace("/", "|").split("|") if p))
    return ". ".join(parts)


def _rows(items: Any) -> list[dict[str, Any]]:
    if hasattr(items, "to_list"):  # datasets.Dataset
        return items.to_list()
    if hasattr(items, "to_dict") and hasattr(items, "columns"):  # pandas
        return items.to_dict("records")
    return [dict(r) for r in items]


def text_vectors(
    items: Any,
    spec: str = "use-m3",
    *,
    texts: Sequence[str] | None = None,
    fields: Sequence[str] = DEFAULT_FIELDS,
    cache: bool = True,
    batch_size: int = 512,
    progress: bool = True,
) -> ItemVectors:
    """Embed each item's `item_text` (``fields``) with the text encoder ``spec``; cached by content hash.

    ``items``: a `datasets.Dataset`, DataFrame or list of item dicts (needs item_id and title).
    """
    from encoders.text import encoder_version
    from mmrec.embedding.text_model import load_text

    rows = _rows(items)
    if not rows:
        raise UserError("the catalog is empty")
    ids = np.asarray([r["item_id"] for r in rows], dtype=object)
    texts = list(texts) if texts is not None else [item_text(r, fields) for r in rows]
    encoder = load_text(spec)
    space = f"text:{spec}|{encoder_version(encoder)}|{TEXT_RECIPE}|{'+'.join(fields)}"
    version = hashlib.sha256(space.encode()).hexdigest()[:16]
    key = hashlib.sha256((space + "\n" + "\n".join(texts)).encode()).hexdigest()[:24]
    path = cache_dir("item_vectors") / f"{key}.npy"
    if cache and path.exists():
        vectors = np.load(path)
    else:
        chunks = []
        steps = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=f"embed items ({spec})", unit="batch", leave=False)
        for s in steps:
            chunks.append(np.asarray(encoder.encode(texts[s : s + batch_size], kind="passage"), dtype=np.float32))
        vectors = np.concatenate(chunks)
        if cache:
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, vectors)
            tmp.replace(path)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return ItemVectors(item_ids=ids, vectors=vectors, spec=f"text:{spec}", version=version)


def catalog_vectors(items: Any, spec: str = "text:use-m3", **kwargs: Any) -> ItemVectors:
    """Content vectors for a catalog by spec:
    ``text:<encoder spec>``  the item text (title, year, category...) through a text encoder;
    ``service[:DATA_DIR]``   the fused text + image vectors the service stores (its encoder settings: the
                             defaults of `mmrec serve`, or those recorded in DATA_DIR/catalog.json), so a
                             checkpoint trained on them can be served with `mmrec serve --model`.
    """
    kind, _, rest = spec.partition(":")
    if kind == "text":
        return text_vectors(items, rest or "use-m3", **kwargs)
    if kind == "service":
        return service_vectors(items, rest or None, **{k: v for k, v in kwargs.items() if k == "progress"})
    raise UserError(f"unknown item-vector spec {spec!r}: use 'text:<encoder>' or 'service[:DATA_DIR]'")


def encoder_space_version(encoder: Any) -> str:
    """Identity of the vector space a `MultimodalEncoder` (the service's) writes: its encoders, adapter
    provenance and fusion weights. A checkpoint records it; the service refuses a checkpoint from
    another space."""
    desc = encoder.describe() if hasattr(encoder, "describe") else {}
    desc = {"name": getattr(encoder, "name", ""), "dim": getattr(encoder, "dim", 0), **desc}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def service_vectors(items: Any, data_dir: str | None = None, *, batch_size: int = 64,
                    progress: bool = True) -> ItemVectors:
    """The fused vectors `mmrec serve` would store for these items (title + image, same encoders)."""
    from dataclasses import fields as dc_fields
    from pathlib import Path

    from mmrec.store.catalog_store import CatalogConfig, load_encoder

    config = CatalogConfig()
    if data_dir:
        meta = Path(data_dir) / "catalog.json"
        if not meta.exists():
            raise UserError(f"{data_dir} is not a service data dir (no catalog.json)")
        stored = json.loads(meta.read_text()).get("config", {})
        config = CatalogConfig(**{f.name: stored[f.name] for f in dc_fields(CatalogConfig) if f.name in stored})
    encoder = load_encoder(config)
    rows = _rows(items)
    if not rows:
        raise UserError("the catalog is empty")
    version = encoder_space_version(encoder)
    ids = np.asarray([r["item_id"] for r in rows], dtype=object)
    text_only = encoder.image_encoder is None
    key = None
    if text_only:  # cacheable by content: the titles say everything
        key = hashlib.sha256((version + "\n" + "\n".join(str(r.get("title")) for r in rows)).encode()).hexdigest()[:24]
        path = cache_dir("item_vectors") / f"service-{key}.npy"
        if path.exists():
            return ItemVectors(item_ids=ids, vectors=np.load(path), spec=f"service:{encoder.name}", version=version)
    batch_size = 512 if text_only else batch_size
    steps = range(0, len(rows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="embed items (service encoders)", unit="batch", leave=False)
    chunks = []
    for s in steps:
        batch = rows[s : s + batch_size]
        images = [r.get("image_path") if encoder.image_encoder is not None else None for r in batch]
        chunks.append(encoder.encode([r.get("title") for r in batch], images, errors="skip")["fused"])
    vectors = np.concatenate(chunks).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    if key is not None:
        tmp = cache_dir("item_vectors") / f"service-{key}.tmp.npy"
        np.save(tmp, vectors)
        tmp.replace(cache_dir("item_vectors") / f"service-{key}.npy")
    return ItemVectors(item_ids=ids, vectors=vectors, spec=f"service:{encoder.name}", version=version)

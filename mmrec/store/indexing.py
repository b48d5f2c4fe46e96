"""Filling a catalog store from a whole catalog, and reading its vectors back as a matrix: the first step of
training on exactly what the service retrieves with."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import datasets
import numpy as np

from mmrec.data.schema import Item
from mmrec.errors import UserError
from mmrec.store.catalog_store import CatalogStore


def index_catalog(catalog: CatalogStore, items: Any, *, batch_size: int = 128, progress: bool = True,
                  chunk: int = 4096) -> int:
    """Embed and upsert the listings not yet in the store; returns how many were embedded.

    items: a `datasets.Dataset` of catalog rows (or any iterable of row dicts / `Item`s). Streams: `chunk`
    rows at a time are read, checked against the store and embedded + upserted in batches of
    `batch_size`, and their vectors are not kept in the process (`remember=False`), so peak memory stays
    flat however large the catalog; an interrupted run resumes with the first listing not yet stored."""
    if batch_size < 1 or chunk < 1:
        raise UserError("batch_size and chunk must be >= 1")
    total = len(items) if hasattr(items, "__len__") else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="embed + index listings", unit="item", dynamic_ncols=True)
    added = skipped = 0
    try:
        for block in _row_blocks(items, chunk):
            present = {p.item_id for p in catalog.store.get([_item_id(r) for r in block])}
            todo = [r for r in block if _item_id(r) not in present]
            skipped += len(block) - len(todo)
            for s in range(0, len(todo), batch_size):
                part = todo[s : s + batch_size]
                catalog.upsert_items([_item(r) for r in part], remember=False)
                added += len(part)
                if bar is not None:
                    bar.update(len(part))
                    bar.set_postfix(embedded=added, already_stored=skipped, refresh=False)
            if bar is not None:
                bar.update(len(block) - len(todo))
    finally:
        if bar is not None:
            bar.close()
    if added:
        catalog.store.build_index()
    return added


def _row_blocks(items: Any, chunk: int) -> Iterator[list[Any]]:
    """Catalog rows as lists of at most `chunk` row dicts (or `Item`s, kept as they are): Dataset rows are
    read a column slice at a time, never all at once."""
    if isinstance(items, datasets.Dataset):
        for s in range(0, len(items), chunk):
            block = items[s : s + chunk]
            cols = list(block)
            yield [{c: block[c][j] for c in cols} for j in range(len(block[cols[0]]))]
        return
    block: list[dict[str, Any]] = []
    for it in items:
        block.append(it if isinstance(it, Item) else dict(it))
        if len(block) == chunk:
            yield block
            block = []
    if block:
        yield block


def _item_id(r: Any) -> str:
    return r.item_id if isinstance(r, Item) else r["item_id"]


def _item(r: Any) -> Item:
    """A catalog row as the `Item` the store embeds (its image is the row's image_path)."""
    if isinstance(r, Item):
        return r
    return Item(item_id=r["item_id"], title=r["title"], description=r.get("description"),
                language=r.get("language"), market=r.get("market"), category=r.get("category"),
                product_id=r.get("product_id"), price=r.get("price"), created_at=r.get("created_at"),
                image=r.get("image_path"), attributes=r.get("attributes") or {})


def upsert_embedded_rows(catalog: CatalogStore, batches: Iterable[Any], *, total: int | None = None,
                         progress: bool = True, build: bool = True) -> int:
    """Upsert rows that already carry text_vector / image_vector / fused_vector columns (`mmrec embed`'s
    output, Arrow tables or record batches) into the store, without embedding again; returns how many.
    build: build the HNSW graph at the end (a caller feeding chunk after chunk builds once, after the last)."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="upsert listings", unit="item")
    done = 0
    dim = catalog.encoder.dim
    for batch in batches:
        rows = batch.to_pylist()
        if not rows:
            continue
        vectors = {name: np.asarray([r[f"{name}_vector"] if r[f"{name}_vector"] is not None else [np.nan] * dim
                                     for r in rows], dtype=np.float32) for name in ("text", "image", "fused")}
        catalog.upsert_embedded([_record(r) for r in rows], vectors, remember=False)
        done += len(rows)
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    if done and build:
        catalog.store.build_index()
    return done


def _record(r: dict[str, Any]) -> Item:
    return Item(item_id=r["item_id"], title=r["title"], description=r.get("description"),
                language=r.get("language"), market=r.get("market"), category=r.get("category"),
                image_path=r.get("image_path"), price=r.get("price"), attributes=r.get("attributes") or {},
                product_id=r.get("product_id"), created_at=r.get("created_at"))


def stored_vectors(catalog: CatalogStore, item_ids: np.ndarray, *, chunk: int = 2048) -> np.ndarray:
    """(n, C) the fused vectors the catalog's store holds for ``item_ids``, in that order: the model trains
    on exactly what the service will retrieve with. Read from the store `chunk` ids at a time straight into
    the matrix (not through the serving cache, which would hold a second copy)."""
    ids = [str(x) for x in item_ids]
    out = np.empty((len(ids), catalog.encoder.dim), dtype=np.float32)
    missing: list[str] = []
    for s in range(0, len(ids), chunk):
        part = ids[s : s + chunk]
        found = {p.item_id: p.vectors["fused"] for p in catalog.store.get(part, with_vectors=True)
                 if "fused" in p.vectors}
        for j, i in enumerate(part):
            if i in found:
                out[s + j] = found[i]
            else:
                missing.append(i)
    if missing:
        raise UserError(f"{len(missing)} listings have no fused vector in the store, e.g. {missing[:3]}")
    return out

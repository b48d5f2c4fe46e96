"""Filling a catalog store from a whole catalog, and reading its vectors back as a matrix: the first step of
training on exactly what the service retrieves with."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from mmrec.errors import UserError
from mmrec.data.schema import Item
from mmrec.store.catalog_store import CatalogStore


def index_catalog(catalog: CatalogStore, items: Any, *, batch_size: int = 128, progress: bool = True) -> int:
    """Embed and upsert the listings not yet in the store; returns how many were embedded."""
    ids = list(items["item_id"])
    present = {p.item_id for s in range(0, len(ids), 1024) for p in catalog.store.get(ids[s : s + 1024])}
    todo = [r for r in items.to_list() if r["item_id"] not in present]
    steps = range(0, len(todo), batch_size)
    if progress and todo:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="embed + index listings", unit="batch")
    for s in steps:
        catalog.upsert_items([
            Item(item_id=r["item_id"], title=r["title"], description=r.get("description"),
                       language=r.get("language"), market=r.get("market"), category=r.get("category"),
                       product_id=r.get("product_id"), price=r.get("price"), created_at=r.get("created_at"),
                       image=r.get("image_path"), attributes=r.get("attributes") or {})
            for r in todo[s : s + batch_size]])
    if todo:
        catalog.store.build_index()
    return len(todo)


def upsert_embedded_rows(catalog: CatalogStore, batches: Iterable[Any], *, total: int | None = None,
                         progress: bool = True) -> int:
    """Upsert rows that already carry text_vector / image_vector / fused_vector columns (`mmrec embed`'s
    output, Arrow tables or record batches) into the store, without embedding again; returns how many."""
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
        catalog.upsert_embedded([_record(r) for r in rows], vectors)
        done += len(rows)
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    if done:
        catalog.store.build_index()
    return done


def _record(r: dict[str, Any]) -> Item:
    return Item(item_id=r["item_id"], title=r["title"], description=r.get("description"),
                language=r.get("language"), market=r.get("market"), category=r.get("category"),
                image_path=r.get("image_path"), price=r.get("price"), attributes=r.get("attributes") or {},
                product_id=r.get("product_id"), created_at=r.get("created_at"))


def stored_vectors(catalog: CatalogStore, item_ids: np.ndarray) -> np.ndarray:
    """(n, C) the fused vectors the catalog's store holds for ``item_ids``, in that order: the model trains
    on exactly what the service will retrieve with."""
    ids = [str(x) for x in item_ids]
    found = catalog.item_vectors(ids)
    missing = [i for i in ids if i not in found]
    if missing:
        raise UserError(f"{len(missing)} listings have no fused vector in the store, e.g. {missing[:3]}")
    return np.stack([np.asarray(found[i][0], dtype=np.float32) for i in ids])

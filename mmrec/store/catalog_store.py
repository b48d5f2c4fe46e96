"""Catalog items -> vectors -> the vector store, and the queries the service answers from it.

This is the one place where `encoders` (titles and images to vectors in the shared text space) meets
`index` (Qdrant): items become points with named vectors text / image / fused and the indexed payload;
text queries, image queries, "similar items" and history-based recommendations become store queries
grouped by product, so a product listed in 14 languages takes one slot of a result page.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from cachetools import LRUCache

from encoders.base import ImageInput
from index import CollectionSchema, Filter, Group, Point, SearchRequest, VectorStore, open_store
from index.store import average_vector_query
from mmrec.data.schema import Item
from mmrec.embedding.item_encoder import EncoderConfig, ItemEncoder, load_item_encoder

log = logging.getLogger(__name__)

# Payload keys returned with results, besides the indexed fields.
DISPLAY_FIELDS = ("title", "description", "has_image")


@dataclass
class CatalogConfig(EncoderConfig):
    """An `EncoderConfig` (what turns items into vectors) plus where the vectors are kept.

    store: "edge" (a directory under the data dir) or "server" with `store_url` (its API key from
      $QDRANT_API_KEY), `shard_number` and `replication_factor` applying when the collection is created.
    reindex_every: build the HNSW graph in the background once this many points are not in it (checked
      at startup and after upserts); until then new points are scanned exactly, which is fast at that size.
    """

    store: str = "edge"
    store_url: str | None = None
    collection: str = "items"
    shard_number: int | None = None  # server: shards / copies of a new collection (a cluster's defaults if None)
    replication_factor: int | None = None
    reindex_every: int = 5_000

    @classmethod
    def recorded(cls, data_dir: str | Path) -> "CatalogConfig | None":
        """The config a data dir was built with (its catalog.json), None for a new data dir."""
        meta = Path(data_dir) / "catalog.json"
        if not meta.exists():
            return None
        stored = json.loads(meta.read_text()).get("config", {})
        return cls(**{f.name: stored[f.name] for f in fields(cls) if f.name in stored})


ItemRecord = Item  # the 0.1 name of an upserted item: one item class now (`mmrec.Item`); kept one release


class VectorCache:
    """item id -> (fused vector, product id), most recently used kept, bounded.

    Recommending from a history needs the history items' vectors on every request; fetching 50 vectors
    from the engine costs more than the ANN query itself, so they are kept here (filled on upsert and on
    first use, dropped on delete). The store stays the source of truth: a miss just reads it."""

    def __init__(self, max_items: int = 200_000):
        self._data: LRUCache[str, tuple[np.ndarray, str]] = LRUCache(max_items)
        self._lock = threading.Lock()

    def get_many(self, item_ids: Sequence[str]) -> tuple[dict[str, tuple[np.ndarray, str]], list[str]]:
        found, missing = {}, []
        with self._lock:
            for i in item_ids:
                entry = self._data.get(i)
                if entry is None:
                    missing.append(i)
                else:
                    found[i] = entry
        return found, missing

    def put(self, item_id: str, vector: np.ndarray, product_id: str) -> None:
        with self._lock:
            self._data[item_id] = (np.asarray(vector, dtype=np.float32), product_id)

    def drop(self, item_ids: Sequence[str]) -> None:
        with self._lock:
            for i in item_ids:
                self._data.pop(i, None)


@dataclass
class ContentRequest:
    """One request of a batch (`CatalogStore.recommend_many`): the arguments of `recommend`."""

    history: Sequence[str]
    k: int = 10
    filter: Filter | None = None
    negatives: Sequence[str] = ()


@dataclass
class Recommendation:
    """One result: the item, its score, its stored payload, and the history items that most support it
    as (item_id, attribution) pairs: how much the result's score drops without that history item (largest
    first, positive only; `ServingConfig.reasons="cosine"` gives similarities instead). Content-based and
    model-based recommending both return these."""

    item_id: str
    score: float
    payload: dict[str, Any]
    reasons: list[tuple[str, float]] = field(default_factory=list)
    explored: bool = False  # shown in an exploration slot (mmrec.serving.exploration), not for its rank


class CatalogStore:
    """The item encoder + the vector store. Thread-safe: encoder calls are serialised by a lock (torch
    models are not re-entrant); the store handles its own concurrency."""

    def __init__(self, encoder: ItemEncoder, store: VectorStore, reindex_every: int = 5_000):
        self.encoder = encoder
        self.store = store
        self.reindex_every = reindex_every
        self._encode_lock = threading.Lock()
        self._written_since_index = 0
        self._indexing: threading.Thread | None = None
        self.vectors = VectorCache()
        info = store.info()
        self._maybe_reindex(max(int(info.get("points") or 0) - int(info.get("indexed_vectors") or 0), 0))

    @classmethod
    def open(cls, data_dir: str | Path, config: CatalogConfig, encoder: ItemEncoder | None = None) -> "CatalogStore":
        """Open the store in `data_dir` (creating it on first use) with the item encoder the config names.
        The vector space (recipe + encoders, `ItemEncoder.space`) is kept in `data_dir/catalog.json`:
        reopening with another recipe or encoder would mix incomparable vectors, so it is refused."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        encoder = encoder or load_item_encoder(config)
        meta_file = data_dir / "catalog.json"
        if meta_file.exists():
            stored = json.loads(meta_file.read_text())
            if stored.get("space") != encoder.space:
                raise ValueError(
                    f"{data_dir} holds vectors of space {stored.get('space')} (encoder {stored.get('encoder')}, "
                    f"recipe {stored.get('recipe')}); this service makes space {encoder.space} (encoder "
                    f"{encoder.name}, recipe {encoder.recipe.id}). Use the same encoders and recipe, or a new data dir")
        else:
            described = {"space": encoder.space, "encoder": encoder.name, "recipe": encoder.recipe.id,
                         "dim": encoder.dim, "config": _jsonable_config(config)}
            tmp = meta_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(described, indent=2))
            tmp.replace(meta_file)
        dim = encoder.dim
        schema = CollectionSchema(text_dim=dim, image_dim=dim, fused_dim=dim, name=config.collection)
        if config.store == "edge":
            store = open_store("edge", path=data_dir / "store", schema=schema)
        else:
            # the server's API key comes from the environment, never from catalog.json
            store = open_store("server", url=config.store_url, schema=schema, collection=config.collection,
                               shard_number=config.shard_number, replication_factor=config.replication_factor,
                               api_key=os.environ.get("QDRANT_API_KEY") or None)
        return cls(encoder, store, config.reindex_every)

    # --- writes -----------------------------------------------------------------------------------------
    def upsert_items(self, items: Sequence[Item], *, remember: bool = True) -> list[str]:
        """Embed and store items; searchable and recommendable as soon as this returns. Raises
        encoders.base.ImageDecodeError (naming the item) before anything is written if an image is bad.
        remember: also keep their vectors in the in-memory `VectorCache` (what a serving process wants for
        fresh items; a bulk load passes False so memory does not grow with the catalog)."""
        if not items:
            return []
        with self._encode_lock:
            out = self.encoder.encode(items, errors="raise")
        return self.upsert_embedded(items, out, remember=remember)

    def upsert_embedded(self, items: Sequence[Item], out: dict[str, np.ndarray], *,
                        remember: bool = True) -> list[str]:
        """Store items whose vectors this store's encoder already made (e.g. `mmrec embed --store`):
        `out` = {"text", "image", "fused"} (n, D) arrays, NaN rows where a modality is missing.
        remember: as in `upsert_items`."""
        now = int(time.time())
        points = []
        for i, it in enumerate(items):
            has_image = bool(np.all(np.isfinite(out["image"][i])))
            vectors: dict[str, np.ndarray] = {"fused": out["fused"][i]}
            if np.all(np.isfinite(out["text"][i])):
                vectors["text"] = out["text"][i]
            if has_image:
                vectors["image"] = out["image"][i]
            payload = {
                "product_id": it.product_id or it.item_id, "language": it.language, "market": it.market,
                "category": it.category, "price": it.price, "in_stock": it.in_stock,
                "created_at": it.created_at if it.created_at is not None else now,
                "title": it.title, "description": it.description, "has_image": has_image,
            }
            points.append(Point(it.item_id, vectors, payload))
        self.store.upsert(points, batch_size=max(len(points), 1))
        if remember:
            for point in points:  # what is now stored (cosine: unit length, as the store returns it)
                fused = np.asarray(point.vectors["fused"], dtype=np.float32)
                self.vectors.put(point.item_id, fused / np.linalg.norm(fused), point.payload["product_id"])
        else:  # a re-upserted item must not keep its old vector in the cache
            self.vectors.drop([point.item_id for point in points])
        self._maybe_reindex(len(points))
        return [it.item_id for it in items]

    def delete(self, item_id: str) -> bool:
        if not self.store.get([item_id]):
            return False
        self.vectors.drop([item_id])
        self.store.delete([item_id])
        return True

    def item_vectors(self, item_ids: Sequence[str]) -> dict[str, tuple[np.ndarray, str]]:
        """(fused vector, product id) of the items that exist, from the cache or else the store."""
        found, missing = self.vectors.get_many(item_ids)
        if missing:
            for p in self.store.get(missing, with_vectors=True):
                if "fused" in p.vectors:
                    product = p.payload.get("product_id", p.item_id)
                    self.vectors.put(p.item_id, p.vectors["fused"], product)
                    found[p.item_id] = (p.vectors["fused"], product)
        return found

    def _maybe_reindex(self, written: int) -> None:
        self._written_since_index += written
        if self._written_since_index < self.reindex_every or (self._indexing and self._indexing.is_alive()):
            return
        self._written_since_index = 0

        def run() -> None:
            try:
                self.store.build_index()
            except Exception:  # noqa: BLE001 - searches still work unindexed; log and go on
                log.exception("background index build failed")

        self._indexing = threading.Thread(target=run, name="mmrec-build-index", daemon=True)
        self._indexing.start()

    # --- reads ------------------------------------------------------------------------------------------
    def get(self, item_id: str) -> dict[str, Any] | None:
        found = self.store.get([item_id])
        return found[0].payload if found else None

    def count(self) -> int:
        return self.store.count()

    def embed_query(self, text: str) -> np.ndarray:
        with self._encode_lock:
            return self.encoder.encode_query(text)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """(n, D) search queries in one text-encoder call (the service batches concurrent /search queries);
        row i is `embed_query(texts[i])` up to float rounding."""
        with self._encode_lock:
            return self.encoder.text_encoder.encode(list(texts), kind="query")

    def embed_image(self, image: ImageInput) -> np.ndarray:
        """An image in the shared space. Raises ImageDecodeError for undecodable input, ValueError if the
        service runs without an image encoder."""
        with self._encode_lock:
            return self.encoder.encode_image(image)

    def search_vector(self, vector: np.ndarray, k: int, filter: Filter | None) -> list[Group]:
        return self.store.search_groups(vector, using="fused", k=k, filter=filter)

    def similar(self, item_id: str, k: int, filter: Filter | None) -> list[Group] | None:
        """Items like `item_id`, other products only (its own translations are not "similar items")."""
        found = self.store.get([item_id])
        if not found:
            return None
        product = found[0].payload.get("product_id", item_id)
        flt = merge_filter(filter, exclude_products=[product])
        return self.store.recommend_groups([item_id], k=k, filter=flt)

    def recommend(self, history: Sequence[str], k: int, filter: Filter | None, negatives: Sequence[str] = (),
                  max_history: int = 50) -> tuple[list[Recommendation], list[str]]:
        """Content-based: products whose fused vectors are near the mean of the (most recent) history
        items' and away from `negatives` (e.g. low ratings; Qdrant's average_vector rule), never an item
        or product already seen. Each result carries as reasons the history items whose removal lowers
        its score most, with that drop (`leave_one_out_reasons`). Returns (recommendations, history item
        ids actually used, newest first)."""
        return self.recommend_many([ContentRequest(history, k, filter, negatives)], max_history)[0]

    def recommend_many(self, requests: Sequence[ContentRequest], max_history: int = 50
                       ) -> list[tuple[list[Recommendation], list[str]]]:
        """`recommend` for several requests at once (the service's micro-batches): one read of every
        history's vectors, one batched grouped search, one read of the results' vectors; answer i is what
        `recommend` gives request i alone."""
        plans = []
        for r in requests:
            excluded = set(r.negatives)
            recent = [i for i in dict.fromkeys(reversed(list(r.history))) if i not in excluded][:max_history]
            plans.append((recent, list(dict.fromkeys(r.negatives))[:max_history]))
        known = self.item_vectors(list(dict.fromkeys(i for recent, negs in plans for i in (*recent, *negs))))
        out: list[tuple[list[Recommendation], list[str]]] = [([], []) for _ in requests]
        searches = []  # (request index, history ids used, their vectors, negatives' vectors, the search)
        for n, (r, (recent, negs)) in enumerate(zip(requests, plans)):
            used = [i for i in recent if i in known]  # newest first; deleted items drop out
            if not used:
                continue
            negs = [i for i in negs if i in known]
            hist = np.stack([known[i][0] for i in used])
            neg_vectors = np.stack([known[i][0] for i in negs]) if negs else None
            query = average_vector_query(hist, neg_vectors)
            if not np.any(query):
                out[n] = ([], used)
                continue
            # Every stored item has a product_id (it defaults to the item id), so excluding the history's
            # products also excludes the history items themselves.
            products = sorted({known[i][1] for i in (*used, *negs)})
            searches.append((n, used, hist, neg_vectors,
                             SearchRequest(query, k=r.k, filter=merge_filter(r.filter, exclude_products=products))))
        found = self.store.search_groups_batch([s[-1] for s in searches]) if searches else []
        pages = [[g.hits[0] for g in groups] for groups in found]
        result_vectors = self.item_vectors(list(dict.fromkeys(h.item_id for hits in pages for h in hits)))
        for (n, used, hist, neg_vectors, _), hits in zip(searches, pages):
            recs = []
            for hit in hits:
                reasons: list[tuple[str, float]] = []
                if hit.item_id in result_vectors:
                    drops = leave_one_out_reasons(hist, neg_vectors, result_vectors[hit.item_id][0])
                    reasons = [(used[int(j)], float(drops[j])) for j in np.argsort(-drops, kind="stable")[:2]
                               if drops[j] > 0]
                recs.append(Recommendation(hit.item_id, hit.score, hit.payload, reasons))
            out[n] = (recs, used)
        return out

    def close(self) -> None:
        if self._indexing is not None:
            self._indexing.join()
        self.store.close()
        self.encoder.close()


def leave_one_out_reasons(history: np.ndarray, negatives: np.ndarray | None, result: np.ndarray) -> np.ndarray:
    """(h,) for each history vector: cos(query, result) - cos(query without it, result), the query being
    `average_vector_query` (what the store searched with). Exact leave-one-out, in closed form: the mean
    without row i is (sum - row i) / (h - 1). A history left empty scores 0, so the only item of a
    one-item history is credited with its whole cosine."""
    history = np.asarray(history, dtype=np.float64)
    result = np.asarray(result, dtype=np.float64)

    def cosine(q: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(q, axis=-1)
        return np.where(norm > 0, q @ result / np.where(norm > 0, norm, 1.0), 0.0)

    full = cosine(average_vector_query(history, negatives))
    n = len(history)
    if n == 1:
        return np.array([full])
    means = (history.sum(axis=0)[None, :] - history) / (n - 1)  # (h, C): the mean without row i
    if negatives is not None and len(negatives):
        means = 2 * means - np.asarray(negatives, dtype=np.float64).mean(axis=0)[None, :]
    return full - cosine(means)


def _jsonable_config(config: CatalogConfig) -> dict[str, Any]:
    """The config as recorded in catalog.json (objects given instead of specs are named by their class)."""
    return {k: (v if isinstance(v, (str, int, float, bool, type(None), list, tuple, dict)) else type(v).__name__)
            for k, v in asdict(config).items()}


def merge_filter(base: Filter | None, exclude_items: Sequence[str] = (), exclude_products: Sequence[str] = (), *,
                 markets: tuple[str, ...] | None = None) -> Filter:
    """``base`` plus excluded items/products (and, if given, the markets to keep)."""
    kwargs: dict[str, Any] = {}
    if base is not None:
        kwargs = {name: getattr(base, name) for name in base.__dataclass_fields__}
    if markets is not None:
        kwargs["markets"] = markets
    kwargs["exclude_item_ids"] = tuple(kwargs.get("exclude_item_ids", ())) + tuple(exclude_items)
    kwargs["exclude_product_ids"] = tuple(kwargs.get("exclude_product_ids", ())) + tuple(exclude_products)
    return Filter(**kwargs)

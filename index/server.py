"""The server backend: `qdrant-client` talking to a Qdrant server or cluster by URL.

This is how a catalog scales past one machine: `shard_number` spreads a collection over the cluster's
nodes, `replication_factor` keeps copies. `url=":memory:"` runs the client's local mode (pure-Python
brute force): the same client calls, used by the tests where no server can be installed.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.errors import SchemaError, StoreError
from index.filters import Filter
from index.schema import HNSW_PAYLOAD_FIELDS, PAYLOAD_INDEXES, CollectionSchema, Group, Hit, Point, point_id
from index.store import SearchRequest, VectorStore

from qdrant_client import QdrantClient, models

_DISTANCE = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT, "euclid": models.Distance.EUCLID}
_INDEX_PARAMS = {
    "keyword": lambda hnsw: models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, enable_hnsw=hnsw),
    "float": lambda hnsw: models.FloatIndexParams(type=models.FloatIndexType.FLOAT, enable_hnsw=hnsw),
    "bool": lambda hnsw: models.BoolIndexParams(type=models.BoolIndexType.BOOL, enable_hnsw=hnsw),
    "integer": lambda hnsw: models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=False, range=True,
                                                      enable_hnsw=hnsw),
}
_STRATEGY = {
    "average_vector": models.RecommendStrategy.AVERAGE_VECTOR,
    "best_score": models.RecommendStrategy.BEST_SCORE,
    "sum_scores": models.RecommendStrategy.SUM_SCORES,
}


@dataclass
class ServerOptions:
    """Collection settings used when the collection is created (an existing one is kept as it is)."""

    api_key: str | None = None
    timeout: int = 30
    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None
    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    payload_m: int | None = 16
    hnsw_payload_fields: tuple[str, ...] = HNSW_PAYLOAD_FIELDS
    hnsw_ef: int | None = None
    on_disk: bool = False
    quantization: str | None = None
    prefer_grpc: bool = False


class ServerStore(VectorStore):
    """A collection on a Qdrant server (or the client's in-process local mode for `url=":memory:"`)."""

    kind = "server"

    def __init__(self, url: str, schema: CollectionSchema | None = None, options: ServerOptions | None = None,
                 collection: str | None = None):
        self.options = options or ServerOptions()
        if self.options.quantization not in (None, "int8"):
            raise SchemaError(f"quantization must be None or 'int8', got {self.options.quantization!r}")
        if not isinstance(url, str) or not url:
            raise StoreError("the server backend needs url='http://host:6333' (or ':memory:' for local mode)")
        self.url = url
        self.local = url == ":memory:"
        self._lock = threading.RLock()  # local mode is not thread-safe; a remote client is, the lock is cheap
        try:
            if self.local:
                self._client: QdrantClient | None = QdrantClient(location=":memory:")
            else:
                self._client = QdrantClient(url=url, api_key=self.options.api_key, timeout=self.options.timeout,
                                            prefer_grpc=self.options.prefer_grpc)
        except Exception as exc:
            raise StoreError(f"cannot connect to Qdrant at {url}: {exc}") from None
        self.collection = collection or (schema.name if schema is not None else "items")
        self.schema = self._ensure_collection(schema)

    # --- collection -------------------------------------------------------------------------------------
    def _ensure_collection(self, schema: CollectionSchema | None) -> CollectionSchema:
        client = self._live()
        try:
            exists = client.collection_exists(self.collection)
        except Exception as exc:
            raise StoreError(f"cannot reach Qdrant at {self.url}: {exc}") from None
        if exists:
            stored = self._stored_schema()
            if schema is not None:
                schema.check_compatible(stored, f"collection {self.collection!r} at {self.url}")
            self._ensure_payload_indexes()
            return schema or stored
        if schema is None:
            raise SchemaError(f"no collection {self.collection!r} at {self.url}; pass a CollectionSchema to create it")
        opt = self.options
        quant = None
        if opt.quantization == "int8":
            quant = models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True)
            )
        client.create_collection(
            self.collection,
            vectors_config={
                name: models.VectorParams(size=dim, distance=_DISTANCE[schema.distance], on_disk=opt.on_disk)
                for name, dim in schema.vectors.items()
            },
            shard_number=opt.shard_number,
            replication_factor=opt.replication_factor,
            write_consistency_factor=opt.write_consistency_factor,
            hnsw_config=models.HnswConfigDiff(m=opt.hnsw_m, ef_construct=opt.hnsw_ef_construct, payload_m=opt.payload_m),
            quantization_config=quant,
        )
        self._ensure_payload_indexes()
        return schema

    def _stored_schema(self) -> CollectionSchema:
        info = self._live().get_collection(self.collection)
        vectors = info.config.params.vectors
        if not isinstance(vectors, dict) or set(vectors) != {"text", "image", "fused"}:
            raise SchemaError(f"collection {self.collection!r} at {self.url} does not have the named vectors "
                              f"text/image/fused; it is not an mmrec collection")
        distances = {v.distance for v in vectors.values()}
        distance = next(name for name, d in _DISTANCE.items() if d in distances)
        return CollectionSchema(text_dim=vectors["text"].size, image_dim=vectors["image"].size,
                                fused_dim=vectors["fused"].size, distance=distance, name=self.collection)

    def _ensure_payload_indexes(self) -> None:
        if self.local:  # local mode keeps no payload indexes (and warns on each); filters work without
            return
        client = self._live()
        existing = set(client.get_collection(self.collection).payload_schema or {})
        for field_name, kind in PAYLOAD_INDEXES.items():
            if field_name not in existing:
                params = _INDEX_PARAMS[kind](field_name in self.options.hnsw_payload_fields)
                client.create_payload_index(self.collection, field_name, params, wait=True)

    # --- plumbing ---------------------------------------------------------------------------------------
    def _live(self) -> QdrantClient:
        if self._client is None:
            raise self._closed_error()
        return self._client

    def _call(self, what: str, fn: Any) -> Any:
        with self._lock:
            client = self._live()
            try:
                return fn(client)
            except StoreError:
                raise
            except Exception as exc:
                raise StoreError(f"Qdrant {what} failed on {self.collection!r} at {self.url}: {exc}") from None

    @staticmethod
    def _to_hit(sp: Any, with_vectors: bool) -> Hit:
        payload = dict(sp.payload or {})
        vectors = None
        if with_vectors and isinstance(sp.vector, dict):
            vectors = {name: np.asarray(v, dtype=np.float32) for name, v in sp.vector.items()}
        return Hit(item_id=payload.get("item_id", str(sp.id)), score=float(sp.score), payload=payload, vectors=vectors)

    def _params(self, exact: bool, hnsw_ef: int | None = None) -> models.SearchParams | None:
        if self.local:  # local mode is always exact and warns about any search params
            return None
        return models.SearchParams(hnsw_ef=hnsw_ef or self.options.hnsw_ef, exact=exact)

    def _groups(self, query: Any, using: str, k: int, group_by: str, group_size: int, flt: Any,
                exact: bool, with_vectors: bool = False) -> list[Group]:
        result = self._call("query_points_groups", lambda c: c.query_points_groups(
            self.collection, group_by=group_by, query=query, using=using, query_filter=flt,
            search_params=self._params(exact), limit=k, group_size=group_size, with_payload=True,
            with_vectors=[using] if with_vectors else False,
        ))
        return [Group(key=g.id, hits=[self._to_hit(h, with_vectors) for h in g.hits]) for g in result.groups]

    @staticmethod
    def _reco(pos: list[str], neg: list[str], strategy: str) -> models.RecommendQuery:
        return models.RecommendQuery(recommend=models.RecommendInput(
            positive=[point_id(i) for i in pos], negative=[point_id(i) for i in neg], strategy=_STRATEGY[strategy]
        ))

    # --- backend hooks ----------------------------------------------------------------------------------
    def _upsert(self, batch: list[tuple[str, dict[str, list[float]], dict[str, Any]]]) -> None:
        points = [models.PointStruct(id=point_id(i), vector=v, payload=p) for i, v, p in batch]
        self._call("upsert", lambda c: c.upsert(self.collection, points=points, wait=True))

    def _delete(self, item_ids: list[str]) -> None:
        selector = models.PointIdsList(points=[point_id(i) for i in item_ids])
        self._call("delete", lambda c: c.delete(self.collection, points_selector=selector, wait=True))

    def _get(self, item_ids: list[str], with_vectors: bool | list[str]) -> list[Point]:
        records = self._call("retrieve", lambda c: c.retrieve(
            self.collection, ids=[point_id(i) for i in item_ids], with_payload=True, with_vectors=with_vectors
        ))
        out = []
        for rec in records:
            payload = dict(rec.payload or {})
            vectors = {}
            if with_vectors and isinstance(rec.vector, dict):
                vectors = {name: np.asarray(v, dtype=np.float32) for name, v in rec.vector.items()}
            out.append(Point(item_id=payload.get("item_id", str(rec.id)), vectors=vectors, payload=payload))
        return out

    def _count(self, filter: Filter | None) -> int:
        return int(self._call("count", lambda c: c.count(
            self.collection, count_filter=server_filter(filter), exact=True)).count)

    def _search(self, query: np.ndarray, using: str, k: int, filter: Filter | None, exact: bool,
                hnsw_ef: int | None, with_vectors: bool) -> list[Hit]:
        result = self._call("query_points", lambda c: c.query_points(
            self.collection, query=query.tolist(), using=using, query_filter=server_filter(filter),
            search_params=self._params(exact, hnsw_ef), limit=k, with_payload=True,
            with_vectors=[using] if with_vectors else False,
        ))
        return [self._to_hit(sp, with_vectors) for sp in result.points]

    def _search_batch(self, requests: list[SearchRequest]) -> list[list[Hit]]:
        """One `query_batch_points` call for the whole batch (the server plans them together)."""
        batch = [models.QueryRequest(query=r.vector.tolist(), using=r.using, filter=server_filter(r.filter),
                                     params=self._params(r.exact, r.hnsw_ef), limit=r.k, with_payload=True,
                                     with_vector=[r.using] if r.with_vectors else False) for r in requests]
        result = self._call("query_batch_points", lambda c: c.query_batch_points(self.collection, requests=batch))
        return [[self._to_hit(sp, r.with_vectors) for sp in answer.points] for answer, r in zip(result, requests)]

    def _search_groups(self, query: np.ndarray, using: str, k: int, group_by: str, group_size: int,
                       filter: Filter | None, exact: bool, with_vectors: bool) -> list[Group]:
        return self._groups(query.tolist(), using, k, group_by, group_size, server_filter(filter), exact,
                            with_vectors)

    def _recommend(self, pos: list[str], neg: list[str], vectors: dict[str, np.ndarray], using: str, k: int,
                   filter: Filter | None, strategy: str, exact: bool) -> list[Hit]:
        # By id: the server looks the examples' vectors up itself and leaves the examples out of results.
        result = self._call("recommend", lambda c: c.query_points(
            self.collection, query=self._reco(pos, neg, strategy), using=using, query_filter=server_filter(filter),
            search_params=self._params(exact), limit=k, with_payload=True,
        ))
        return [self._to_hit(sp, False) for sp in result.points]

    def _recommend_groups(self, pos: list[str], neg: list[str], vectors: dict[str, np.ndarray], using: str,
                          k: int, group_by: str, group_size: int, filter: Filter | None, strategy: str,
                          exact: bool) -> list[Group]:
        flt = server_filter(filter, exclude=pos + neg)  # grouped queries do not drop the examples themselves
        return self._groups(self._reco(pos, neg, strategy), using, k, group_by, group_size, flt, exact)

    # --- maintenance ------------------------------------------------------------------------------------
    def build_index(self, timeout_s: float = 600.0) -> None:
        """Wait until the server has finished optimizing (indexing) the collection."""
        if self.local:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            status = self._call("get_collection", lambda c: c.get_collection(self.collection)).status
            if status == models.CollectionStatus.GREEN or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def info(self) -> dict[str, Any]:
        i = self._call("get_collection", lambda c: c.get_collection(self.collection))
        return {"kind": self.kind, "url": self.url, "collection": self.collection, "points": i.points_count,
                "indexed_vectors": i.indexed_vectors_count, "segments": i.segments_count}

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            if client is not None:
                client.close()


def server_filter(f: Filter | None, exclude: list[str] | None = None) -> models.Filter | None:
    """Our Filter as a qdrant_client Filter (None when there is nothing to filter)."""
    must: list[Any] = []
    must_not: list[Any] = []
    excluded = list(exclude or [])
    if f is not None:
        for attr, key in Filter.in_set_fields().items():
            values = getattr(f, attr)
            if values is not None:
                must.append(models.FieldCondition(key=key, match=models.MatchAny(any=list(values))))
        if f.in_stock is not None:
            must.append(models.FieldCondition(key="in_stock", match=models.MatchValue(value=f.in_stock)))
        if f.price_min is not None or f.price_max is not None:
            must.append(models.FieldCondition(key="price", range=models.Range(gte=f.price_min, lte=f.price_max)))
        if f.created_from is not None or f.created_to is not None:
            must.append(models.FieldCondition(key="created_at", range=models.Range(gte=f.created_from, lte=f.created_to)))
        excluded += list(f.exclude_item_ids)
        if f.exclude_product_ids:
            must_not.append(models.FieldCondition(key="product_id", match=models.MatchAny(any=list(f.exclude_product_ids))))
    if excluded:
        must_not.append(models.HasIdCondition(has_id=[point_id(i) for i in excluded]))
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)

"""The embedded backend: the real Qdrant engine in-process (`qdrant-edge-py`), one directory per store.

Layout of a store directory: `schema.json` (our CollectionSchema) and `shard/` (the engine's segments
and write-ahead log). Every acknowledged write is in the WAL, which the engine replays on open, so it
survives a kill -9 of the process; `flush()` additionally persists segments (needed against power loss
only). The engine locks the WAL: one process per directory.

Edge has no grouping or by-id recommend API, so both are done here: grouping by over-fetching and
grouping, recommend by retrieving the examples' stored vectors (the engine's own `retrieve`, measured
at well under a millisecond for a handful of ids at 100k points) and querying with them.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from index.errors import SchemaError, StoreError, StoreLockedError
from index.filters import Filter
from index.row_cache import VersionedRows
from index.schema import HNSW_PAYLOAD_FIELDS, PAYLOAD_INDEXES, CollectionSchema, Group, Hit, Point, point_id
from index.store import HitArrays, SearchRequest, VectorStore, average_vector_query, group_hits

try:
    import qdrant_edge as qe
except ImportError as exc:  # pragma: no cover - it is a declared dependency
    raise ImportError("the edge backend needs the `qdrant-edge-py` package: pip install qdrant-edge-py") from exc

_DISTANCE = {"cosine": qe.Distance.Cosine, "dot": qe.Distance.Dot, "euclid": qe.Distance.Euclid}
_INDEX_PARAMS = {
    "keyword": lambda hnsw: qe.KeywordIndexParams(enable_hnsw=hnsw),
    "float": lambda hnsw: qe.FloatIndexParams(enable_hnsw=hnsw),
    "bool": lambda hnsw: qe.BoolIndexParams(enable_hnsw=hnsw),
    "integer": lambda hnsw: qe.IntegerIndexParams(lookup=False, range=True, enable_hnsw=hnsw),
}
_GROUP_FETCH_CAP = 16_384


@dataclass
class EdgeOptions:
    """Engine settings. HNSW is built by `build_index()` for segments above `indexing_threshold_kb`;
    smaller segments are scanned exactly (fast at that size). `payload_m` adds graph links per indexed
    payload value so filtered searches (one market) stay on the graph; only the `hnsw_payload_fields` get
    them, as each costs about one more graph build. `quantization="int8"` keeps a
    scalar-quantized copy in RAM (Qdrant's recipe: int8, 0.99 quantile, in RAM) that the graph is built
    and searched with (2.4x less build CPU than float at 20k x 512-d, measured); searches then rescore
    `quantization_oversampling` x k candidates on the original vectors (`quantization_rescore`), and
    `exact=True` ignores the int8 copy. Recall at scale: bench/results/store.json.
    `indexing_threads` is how many threads build the graph (0 = one per CPU this process may use). The
    build has no idle time (measured with /proc schedstat: its threads are runnable throughout, waiting
    only for a CPU), so its wall time is its CPU time / threads on an idle machine, and stretches by the
    share of the CPUs that other busy processes take (bench/store_latency.py reports both)."""

    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    full_scan_threshold_kb: int = 10_000
    payload_m: int | None = 16
    hnsw_payload_fields: tuple[str, ...] = HNSW_PAYLOAD_FIELDS
    indexing_threshold_kb: int | None = None
    hnsw_ef: int | None = None
    max_search_threads: int | None = None
    quantization: str | None = None
    quantization_rescore: bool = True
    quantization_oversampling: float = 2.0
    indexing_threads: int = 0
    flush_on_write: bool = False
    vector_cache_mb: int = 256  # hit vectors kept as arrays, checked by point version (see EdgeStore._attach)


class EdgeStore(VectorStore):
    """A store in a local directory, served by the embedded Qdrant engine."""

    kind = "edge"

    def __init__(self, path: str | os.PathLike[str], schema: CollectionSchema | None = None,
                 options: EdgeOptions | None = None):
        self.path = Path(path)
        self.options = options or EdgeOptions()
        if self.options.quantization not in (None, "int8"):
            raise SchemaError(f"quantization must be None or 'int8', got {self.options.quantization!r}")
        if not (isinstance(self.options.indexing_threads, int) and self.options.indexing_threads >= 0):
            raise SchemaError(f"indexing_threads must be an integer >= 0 (0 = one per CPU), "
                              f"got {self.options.indexing_threads!r}")
        if not self.options.quantization_oversampling >= 1.0:
            raise SchemaError(f"quantization_oversampling must be >= 1, got {self.options.quantization_oversampling!r}")
        self._lock = threading.RLock()
        # vector name -> rows of hit vectors by item id and point version: searches that return vectors (the
        # two-stage ranker's 200 candidates) read them from here instead of converting 200 x D floats per query
        self._vectors: dict[str, VersionedRows] = {}
        self._vectors_lock = threading.Lock()
        self._shard: Any = None
        self.schema = self._resolve_schema(schema)
        shard_dir = self.path / "shard"
        config = self._config()
        try:
            if (shard_dir / "edge_config.json").exists():
                self._shard = qe.EdgeShard.load(str(shard_dir), config)
            else:
                shard_dir.mkdir(parents=True, exist_ok=True)
                self._shard = qe.EdgeShard.create(str(shard_dir), config)
        except Exception as exc:  # the engine raises a bare Exception with a message
            raise self._open_error(exc) from None
        self._ensure_payload_indexes()

    # --- opening ----------------------------------------------------------------------------------------
    def _resolve_schema(self, schema: CollectionSchema | None) -> CollectionSchema:
        schema_file = self.path / "schema.json"
        if schema_file.exists():
            try:
                stored = CollectionSchema.from_dict(json.loads(schema_file.read_text()))
            except (ValueError, TypeError, KeyError) as exc:
                raise SchemaError(f"{schema_file} is not a valid store schema ({exc})") from None
            if schema is not None:
                schema.check_compatible(stored, f"edge store {self.path}")
            return stored
        if schema is None:
            raise SchemaError(f"no edge store at {self.path}; pass a CollectionSchema to create one")
        if not isinstance(schema, CollectionSchema):
            raise SchemaError(f"schema must be an index.CollectionSchema, got {type(schema).__name__}")
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = schema_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(schema.to_dict(), indent=2))
        os.replace(tmp, schema_file)
        return schema

    def _config(self) -> Any:
        opt = self.options
        quant = None
        if opt.quantization == "int8":
            quant = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
        vectors = {
            name: qe.EdgeVectorParams(size=dim, distance=_DISTANCE[self.schema.distance], quantization_config=quant)
            for name, dim in self.schema.vectors.items()
        }
        return qe.EdgeConfig(
            vectors=vectors,
            hnsw_config=qe.HnswIndexConfig(
                m=opt.hnsw_m, ef_construct=opt.hnsw_ef_construct, full_scan_threshold=opt.full_scan_threshold_kb,
                payload_m=opt.payload_m, max_indexing_threads=self.indexing_threads,
            ),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=opt.indexing_threshold_kb),
            max_search_threads=opt.max_search_threads,
        )

    def _open_error(self, exc: Exception) -> StoreError:
        text = str(exc)
        if "WouldBlock" in text or "lock" in text.lower():
            return StoreLockedError(
                f"edge store {self.path} is already open in this or another process (the engine holds a lock "
                f"on its write-ahead log: one process per store directory; close the other, or use the "
                f"server backend to share a collection between processes)"
            )
        if "dimension" in text.lower() or "incompatible" in text.lower() or "vector" in text.lower():
            return SchemaError(f"edge store {self.path} does not match the schema: {text}")
        return StoreError(f"cannot open edge store {self.path}: {text}")

    def _ensure_payload_indexes(self) -> None:
        existing = set(self._shard.info().payload_schema)
        for field_name, kind in PAYLOAD_INDEXES.items():
            if field_name not in existing:
                params = _INDEX_PARAMS[kind](field_name in self.options.hnsw_payload_fields)
                self._update(qe.UpdateOperation.create_field_index(field_name, params))

    # --- plumbing ---------------------------------------------------------------------------------------
    def _live(self) -> Any:
        shard = self._shard
        if shard is None:
            raise self._closed_error()
        return shard

    def _update(self, op: Any) -> None:
        with self._lock:
            shard = self._live()
            try:
                shard.update(op)
                if self.options.flush_on_write:
                    shard.flush()
            except Exception as exc:
                raise StoreError(f"edge store {self.path}: write failed: {exc}") from None

    def _read(self, fn: Callable[[Any], Any]) -> Any:
        shard = self._live()
        try:
            return fn(shard)
        except Exception as exc:
            if self._shard is None:
                raise self._closed_error() from None
            raise StoreError(f"edge store {self.path}: {exc}") from None

    @staticmethod
    def _to_hit(sp: Any, with_vectors: bool) -> Hit:
        payload = sp.payload or {}  # a new dict on every access: the hit may own it
        vectors = None
        if with_vectors and sp.vector is not None:
            vectors = {name: np.asarray(v, dtype=np.float32) for name, v in sp.vector.items()}
        item_id = payload.get("item_id")  # the engine's UUID only when the payload lacks it (costly per hit)
        return Hit(item_id=item_id if item_id is not None else str(sp.id), score=float(sp.score), payload=payload,
                   vectors=vectors)

    @property
    def indexing_threads(self) -> int:
        """Threads that build the HNSW graph: the option, or one per CPU this process may run on."""
        if self.options.indexing_threads:
            return self.options.indexing_threads
        try:
            return max(len(os.sched_getaffinity(0)), 1)
        except AttributeError:  # pragma: no cover - not Linux
            return max(os.cpu_count() or 1, 1)

    def _params(self, exact: bool, hnsw_ef: int | None = None) -> Any:
        quant = None
        if self.options.quantization is not None:  # exact = on the original vectors, as without quantization
            quant = qe.QuantizationSearchParams(ignore=exact, rescore=self.options.quantization_rescore,
                                                oversampling=self.options.quantization_oversampling)
        return qe.SearchParams(hnsw_ef=hnsw_ef or self.options.hnsw_ef, exact=exact, quantization=quant)

    def _query(self, query: Any, limit: int, filter: Any, params: Any, with_vectors: bool | list[str]) -> list[Hit]:
        request = qe.QueryRequest(limit=limit, query=query, filter=filter, params=params, with_payload=True,
                                  with_vector=False)
        using = with_vectors[0] if isinstance(with_vectors, list) and with_vectors else None
        return self._attach(self._read(lambda s: s.query(request)), using)

    def _query_batch(self, requests: list[Any], usings: list[str | None]) -> list[list[Hit]]:
        """Several QueryRequests (asking for no vectors) in one engine call (`EdgeShard.query_batch`),
        results in request order, with the `usings[i]` vector attached when not None."""
        if len(requests) == 1:
            return [self._attach(self._read(lambda s: s.query(requests[0])), usings[0])]
        batch = qe.QueryBatchRequest(requests)
        answers = self._read(lambda s: s.query_batch(batch))
        return [self._attach(points, using) for points, using in zip(answers, usings)]

    def _attach(self, points: list[Any], using: str | None) -> list[Hit]:
        """Hits with their `using` vector (when not None), from `_cached`."""
        hits = [self._to_hit(sp, False) for sp in points]
        if using is None:
            return hits
        vectors, _, found, _ = self._cached(points, using, [hit.payload for hit in hits])
        for i, hit in enumerate(hits):
            if found[i]:
                hit.vectors = {using: vectors[i]}
        return hits

    def _arrays(self, points: list[Any], using: str) -> HitArrays:
        """A query's hits (searched without payload) as `HitArrays`, payloads and vectors from `_cached`."""
        vectors, payloads, found, versions = self._cached(points, using)
        scores = np.fromiter((sp.score for sp in points), dtype=np.float64, count=len(points))
        keep = np.flatnonzero(found).tolist() if not found.all() else range(len(points))  # deleted since the search
        kept = [payloads[i] for i in keep]
        return HitArrays([p.get("item_id") or str(points[i].id) for i, p in zip(keep, kept)], scores[keep], kept,
                         vectors[keep] if len(keep) < len(points) else vectors,
                         np.asarray(versions, dtype=np.int64)[keep])

    def _cached(self, points: list[Any], using: str, payloads: list[dict[str, Any]] | None = None
                ) -> tuple[np.ndarray, list[Any], np.ndarray, list[int]]:
        """((n, dim) the hits' `using` vectors, their payloads, (n,) bool which could be read, their point
        versions): from the cache
        where it holds the point at the version the search saw (the engine bumps a point's version on every
        write to it, so a cached entry is never stale), the rest retrieved in one call and cached.
        Converting the engine's vectors and payloads costs more than the search itself for 200 hits, and most
        candidates recur across requests. `payloads`: the hits' payloads when the search returned them."""
        n, dim = len(points), self.schema.vectors[using]
        out = np.zeros((n, dim), dtype=np.float32)
        found = np.zeros(n, dtype=bool)
        cached_payloads: list[Any] = [None] * n
        uuids = [sp.id for sp in points]
        keys = [u.int for u in uuids]  # an int: hashed and compared in C, unlike the UUID object
        versions = [sp.version for sp in points]
        capacity = max(int(self.options.vector_cache_mb * 2**20 // (4 * dim)), 0)
        with self._vectors_lock:
            cache = self._vectors.get(using)
            if cache is None and capacity:
                cache = self._vectors[using] = VersionedRows(dim, capacity)
            if cache is not None:
                at, rows = cache.find(keys, versions)
                out[at] = cache.matrix[rows]
                found[at] = True
                tags = cache.tags
                for i, row in zip(at.tolist(), rows.tolist()):
                    cached_payloads[i] = tags[row]
        if payloads is not None:
            cached_payloads = payloads
        missing = np.flatnonzero(~found).tolist()
        if missing:
            ids = [uuids[i] for i in missing]
            records = self._read(lambda s: s.retrieve(ids, with_payload=payloads is None, with_vector=[using]))
            fetched = {rec.id.int: rec for rec in records if rec.vector and using in rec.vector}
            for i in missing:
                rec = fetched.get(keys[i])
                if rec is not None:  # else deleted since the search: left without its vector
                    out[i] = rec.vector[using]
                    found[i] = True
                    if payloads is None:
                        cached_payloads[i] = rec.payload or {}
            if cache is not None:
                with self._vectors_lock:
                    for i in missing:
                        if found[i]:  # the caller's hits own `payloads`: the cache keeps its own copy
                            cache.put(keys[i], versions[i], out[i],
                                      cached_payloads[i] if payloads is None else dict(cached_payloads[i]))
        return out, cached_payloads, found, versions

    def _request(self, r: SearchRequest, limit: int, hnsw_ef: int | None, with_payload: bool = True) -> Any:
        return qe.QueryRequest(limit=limit, query=qe.Query.Nearest(r.vector.tolist(), using=r.using),
                               filter=edge_filter(r.filter), params=self._params(r.exact, hnsw_ef),
                               with_payload=with_payload, with_vector=False)

    def _grouped(self, run: Callable[[int], list[Hit]], k: int, group_by: str, group_size: int) -> list[Group]:
        """Over-fetch, group, and fetch more while groups are missing or short and more hits exist."""
        limit = max(4 * k * group_size, 32)
        while True:
            hits = run(limit)
            groups = group_hits(hits, group_by, k, group_size)
            done = len(groups) >= k and all(len(g.hits) >= group_size for g in groups)
            if done or len(hits) < limit or limit >= _GROUP_FETCH_CAP:
                return groups
            limit = min(limit * 4, _GROUP_FETCH_CAP)

    def _recommend_query(self, pos: list[str], neg: list[str], vectors: dict[str, np.ndarray], using: str,
                         strategy: str) -> Any:
        pv = np.stack([vectors[i] for i in pos])
        nv = np.stack([vectors[i] for i in neg]) if neg else None
        if strategy == "average_vector":
            return qe.Query.Nearest(average_vector_query(pv, nv).tolist(), using=using)
        rq = qe.RecommendQuery(positives=pv.tolist(), negatives=[] if nv is None else nv.tolist())
        if strategy == "best_score":
            return qe.Query.RecommendBestScore(rq, using=using)
        return qe.Query.RecommendSumScores(rq, using=using)

    # --- backend hooks ----------------------------------------------------------------------------------
    def _upsert(self, batch: list[tuple[str, dict[str, list[float]], dict[str, Any]]]) -> None:
        points = [qe.Point(id=point_id(item_id), vector=vectors, payload=payload) for item_id, vectors, payload in batch]
        self._update(qe.UpdateOperation.upsert_points(points))

    def _delete(self, item_ids: list[str]) -> None:
        self._update(qe.UpdateOperation.delete_points([point_id(i) for i in item_ids]))

    def _get(self, item_ids: list[str], with_vectors: bool | list[str]) -> list[Point]:
        ids = [point_id(i) for i in item_ids]
        records = self._read(lambda s: s.retrieve(ids, with_payload=True, with_vector=with_vectors))
        out = []
        for rec in records:
            payload = dict(rec.payload or {})
            vectors = {}
            if with_vectors and rec.vector:
                vectors = {name: np.asarray(v, dtype=np.float32) for name, v in rec.vector.items()}
            out.append(Point(item_id=payload.get("item_id", str(rec.id)), vectors=vectors, payload=payload))
        return out

    def _count(self, filter: Filter | None) -> int:
        request = qe.CountRequest(filter=edge_filter(filter), exact=True)
        return int(self._read(lambda s: s.count(request)))

    def _search(self, query: np.ndarray, using: str, k: int, filter: Filter | None, exact: bool,
                hnsw_ef: int | None, with_vectors: bool) -> list[Hit]:
        return self._query(qe.Query.Nearest(query.tolist(), using=using), k, edge_filter(filter),
                           self._params(exact, hnsw_ef), [using] if with_vectors else False)

    def _search_batch(self, requests: list[SearchRequest]) -> list[list[Hit]]:
        return self._query_batch([self._request(r, r.k, r.hnsw_ef) for r in requests],
                                 [r.using if r.with_vectors else None for r in requests])

    def _search_batch_arrays(self, requests: list[SearchRequest]) -> list[HitArrays]:
        queries = [self._request(r, r.k, r.hnsw_ef, with_payload=False) for r in requests]
        if len(queries) == 1:
            answers = [self._read(lambda s: s.query(queries[0]))]
        else:
            answers = self._read(lambda s: s.query_batch(qe.QueryBatchRequest(queries)))
        return [self._arrays(points, r.using) for points, r in zip(answers, requests)]

    def _search_groups_batch(self, requests: list[SearchRequest], group_by: str, group_size: int
                             ) -> list[list[Group]]:
        """`_grouped` for every request, each round's over-fetches in one engine call."""
        limits = {i: max(4 * r.k * group_size, 32) for i, r in enumerate(requests)}
        out: list[list[Group]] = [[] for _ in requests]
        while limits:
            pending = list(limits)
            answers = self._query_batch([self._request(requests[i], limits[i], None) for i in pending],
                                        [requests[i].using if requests[i].with_vectors else None for i in pending])
            for i, hits in zip(pending, answers):
                k, limit = requests[i].k, limits[i]
                out[i] = groups = group_hits(hits, group_by, k, group_size)
                done = len(groups) >= k and all(len(g.hits) >= group_size for g in groups)
                if done or len(hits) < limit or limit >= _GROUP_FETCH_CAP:
                    del limits[i]
                else:
                    limits[i] = min(limit * 4, _GROUP_FETCH_CAP)
        return out

    def _search_groups(self, query: np.ndarray, using: str, k: int, group_by: str, group_size: int,
                       filter: Filter | None, exact: bool, with_vectors: bool) -> list[Group]:
        q, f, params = qe.Query.Nearest(query.tolist(), using=using), edge_filter(filter), self._params(exact)
        vectors = [using] if with_vectors else False
        return self._grouped(lambda limit: self._query(q, limit, f, params, vectors), k, group_by, group_size)

    def _recommend(self, pos: list[str], neg: list[str], vectors: dict[str, np.ndarray], using: str, k: int,
                   filter: Filter | None, strategy: str, exact: bool) -> list[Hit]:
        q = self._recommend_query(pos, neg, vectors, using, strategy)
        return self._query(q, k, edge_filter(filter, exclude=pos + neg), self._params(exact), False)

    def _recommend_groups(self, pos: list[str], neg: list[str], vectors: dict[str, np.ndarray], using: str,
                          k: int, group_by: str, group_size: int, filter: Filter | None, strategy: str,
                          exact: bool) -> list[Group]:
        q = self._recommend_query(pos, neg, vectors, using, strategy)
        f, params = edge_filter(filter, exclude=pos + neg), self._params(exact)
        return self._grouped(lambda limit: self._query(q, limit, f, params, False), k, group_by, group_size)

    # --- maintenance ------------------------------------------------------------------------------------
    def build_index(self) -> None:
        """Build the HNSW graph (and int8 copy) of every segment over the indexing threshold, then persist
        it. Blocks (and holds the GIL) until done: call it once after a bulk load, not per batch."""
        with self._lock:
            shard = self._live()
            try:
                shard.optimize()
                shard.flush()
            except Exception as exc:
                raise StoreError(f"edge store {self.path}: optimize failed: {exc}") from None

    def flush(self) -> None:
        with self._lock:
            self._live().flush()

    def info(self) -> dict[str, Any]:
        """Points, HNSW-indexed vectors and segments, for health checks and deciding when to build_index()."""
        i = self._read(lambda s: s.info())
        return {"kind": self.kind, "path": str(self.path), "points": i.points_count,
                "indexed_vectors": i.indexed_vectors_count, "segments": i.segments_count}

    def close(self) -> None:
        with self._lock:
            shard, self._shard = self._shard, None
            if shard is not None:
                try:
                    shard.flush()
                finally:
                    shard.close()


def edge_filter(f: Filter | None, exclude: list[str] | None = None) -> Any:
    """Our Filter as a qdrant_edge.Filter (None when there is nothing to filter)."""
    must: list[Any] = []
    must_not: list[Any] = []
    excluded = list(exclude or [])
    if f is not None:
        for attr, key in Filter.in_set_fields().items():
            values = getattr(f, attr)
            if values is not None:
                match = qe.MatchValue(values[0]) if len(values) == 1 else qe.MatchAny(list(values))
                must.append(qe.FieldCondition(key=key, match=match))
        if f.in_stock is not None:
            # np.bool_, not bool: the bindings read a Python bool as the integer 1/0 (bool subclasses int),
            # which never matches a boolean payload (qdrant-edge-py 0.9.0).
            must.append(qe.FieldCondition(key="in_stock", match=qe.MatchValue(np.bool_(f.in_stock))))
        if f.price_min is not None or f.price_max is not None:
            must.append(qe.FieldCondition(key="price", range=qe.RangeFloat(gte=f.price_min, lte=f.price_max)))
        if f.created_from is not None or f.created_to is not None:
            lo = None if f.created_from is None else float(f.created_from)
            hi = None if f.created_to is None else float(f.created_to)
            must.append(qe.FieldCondition(key="created_at", range=qe.RangeFloat(gte=lo, lte=hi)))
        excluded += list(f.exclude_item_ids)
        if f.exclude_product_ids:
            must_not.append(qe.FieldCondition(key="product_id", match=qe.MatchAny(list(f.exclude_product_ids))))
    if excluded:
        must_not.append(qe.HasIdCondition({point_id(i) for i in excluded}))
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


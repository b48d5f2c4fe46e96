"""Everything Qdrant: one vector-store interface over the embedded engine (edge) and a server.

    from index import CollectionSchema, Filter, Point, open_store
    store = open_store("edge", path="data/store", schema=CollectionSchema(text_dim=512, image_dim=512, fused_dim=512))
    store.upsert([Point("sku1:de", {"text": v, "fused": v}, {"product_id": "sku1", "market": "de"})])
    store.build_index()                       # after a bulk load
    store.search_groups(q, k=10, filter=Filter(markets=["de"]))

Takes vectors and payloads; knows nothing of models or of mmrec.
"""
from __future__ import annotations

import os
from typing import Any

from index.errors import (
    DimensionError,
    PayloadError,
    SchemaError,
    StoreError,
    StoreLockedError,
    UnknownItemError,
)
from index.filters import Filter
from index.row_cache import VersionedRows
from index.schema import PAYLOAD_INDEXES, VECTOR_NAMES, CollectionSchema, Group, Hit, Point, point_id
from index.store import RECOMMEND_STRATEGIES, HitArrays, SearchRequest, VectorStore

STORE_KINDS: tuple[str, ...] = ("edge", "server")


def open_store(
    kind: str = "edge",
    *,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    schema: CollectionSchema | None = None,
    collection: str | None = None,
    **options: Any,
) -> VectorStore:
    """Open (creating it if `schema` is given and it does not exist) a vector store.

    kind="edge": the embedded engine in directory `path`; `options` are EdgeOptions fields.
    kind="server": a Qdrant server at `url` (":memory:" = the client's local mode), collection
    `collection` (default: schema.name or "items"); `options` are ServerOptions fields
    (shard_number, replication_factor, api_key, ...).
    An existing store is checked against `schema` (SchemaError on mismatch) and keeps its settings.
    """
    if kind == "edge":
        from index.edge import EdgeOptions, EdgeStore

        if path is None:
            raise StoreError("the edge store needs path=<directory>")
        if url is not None:
            raise StoreError("the edge store takes path=, not url= (url= is for kind='server')")
        return EdgeStore(path, schema=schema, options=_options(EdgeOptions, options))
    if kind == "server":
        from index.server import ServerOptions, ServerStore

        if url is None:
            raise StoreError("the server store needs url='http://host:6333' (or ':memory:')")
        if path is not None:
            raise StoreError("the server store takes url=, not path= (path= is for kind='edge')")
        return ServerStore(url, schema=schema, options=_options(ServerOptions, options), collection=collection)
    raise StoreError(f"unknown store kind {kind!r}; expected one of {', '.join(STORE_KINDS)}")


def _options(cls: type, options: dict[str, Any]) -> Any:
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise StoreError(f"unknown {cls.__name__} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**options)


__all__ = [
    "open_store", "VectorStore", "SearchRequest", "HitArrays", "CollectionSchema", "Filter", "Point", "Hit", "Group", "point_id",
    "VersionedRows",
    "VECTOR_NAMES", "PAYLOAD_INDEXES", "RECOMMEND_STRATEGIES", "STORE_KINDS",
    "StoreError", "DimensionError", "PayloadError", "SchemaError", "StoreLockedError", "UnknownItemError",
]

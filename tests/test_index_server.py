"""Server-only behaviour. The shared contract runs in test_index_contract.py; these need a real server
(QDRANT_URL) except the filter translation check."""
from __future__ import annotations

import os
import uuid
import warnings

import numpy as np
import pytest

from index import CollectionSchema, Filter, Point, open_store
from index.server import server_filter

SCHEMA = CollectionSchema(text_dim=16, image_dim=8, fused_dim=16)
URL = os.environ.get("QDRANT_URL")
needs_server = pytest.mark.skipif(not URL, reason="QDRANT_URL is not set: no Qdrant server to test against")


def test_filter_translation_names_every_condition():
    f = server_filter(Filter(markets=["de"], in_stock=True, price_min=1, created_to=5, exclude_item_ids=["a"],
                             exclude_product_ids=["p"]))
    assert [c.key for c in f.must] == ["market", "in_stock", "price", "created_at"]
    assert f.must[1].match.value is True
    assert len(f.must_not) == 2
    assert server_filter(None) is None and server_filter(Filter()) is None


def test_local_mode_does_not_warn_about_search_params():
    store = open_store("server", url=":memory:", schema=SCHEMA)
    store.upsert([Point("a", {"fused": np.ones(16)})])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.search(np.ones(16), exact=True, hnsw_ef=64)
    store.close()


@needs_server
def test_sharded_replicated_collection_is_created_with_payload_indexes():
    name = f"mmrec_test_{uuid.uuid4().hex[:8]}"
    store = open_store("server", url=URL, schema=SCHEMA, collection=name, shard_number=2, replication_factor=1)
    try:
        from qdrant_client import QdrantClient

        client = QdrantClient(url=URL)
        info = client.get_collection(name)
        assert info.config.params.shard_number == 2
        assert info.config.params.replication_factor == 1
        assert {"item_id", "product_id", "market", "price", "in_stock", "created_at"} <= set(info.payload_schema)
        store.upsert([Point(f"i{i}", {"fused": np.random.default_rng(i).normal(size=16)}) for i in range(100)])
        store.build_index()
        assert store.count() == 100
        client.close()
    finally:
        store.close()
        from qdrant_client import QdrantClient

        QdrantClient(url=URL).delete_collection(name)

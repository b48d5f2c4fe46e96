"""Micro-batching (mmrec/serving/batching.py): concurrent requests answered together give exactly the
answers they get alone.

- the store's batch search (`search_batch`, `search_batch_arrays`, `search_groups_batch`) against one search
  at a time, on the embedded engine and on the server backend (the client's local mode);
- `TwoStageRecommender.recommend_many` against `recommend` one by one, with a fusion transformer trained
  briefly on the emoji-market shopper SIMULATION over a real edge store: mixed filters, k, markets,
  negatives, timed and untimed histories, every reasons mode, and exploration with per-request seeds;
- `MicroBatcher`: batches fill up, a failing request fails alone, closing drains the queue;
- a real `mmrec serve --batch-window-ms` process: concurrent /recommend and /search answers equal the
  answers to the same requests sent one at a time.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from index import CollectionSchema, Filter, Point, SearchRequest, open_store

MARKETS = ("US", "DE", "JP", "FR")


def _same_hits(a, b) -> None:
    assert [h.item_id for h in a] == [h.item_id for h in b]
    assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)


@pytest.mark.parametrize("kind", ["edge", "server"])
def test_search_batch_answers_what_each_search_answers(kind, tmp_path):
    rng = np.random.default_rng(0)
    schema = CollectionSchema(text_dim=16, image_dim=16, fused_dim=16)
    store = open_store(kind, schema=schema, **({"path": tmp_path / "s"} if kind == "edge" else {"url": ":memory:"}))
    try:
        store.upsert([Point(f"i{i}", {"fused": rng.normal(size=16)},
                            {"product_id": f"p{i // 3}", "market": MARKETS[i % 4], "in_stock": i % 5 != 0})
                      for i in range(400)])
        requests = [SearchRequest(rng.normal(size=16), k=3 + i,
                                  filter=[None, Filter(markets="DE"), Filter(markets=("JP", "FR"), in_stock=True),
                                          Filter(exclude_item_ids=("i1", "i2"))][i % 4],
                                  with_vectors=i % 2 == 1) for i in range(8)]
        batch = store.search_batch(requests)
        assert len(batch) == len(requests)
        for r, hits in zip(requests, batch):
            _same_hits(hits, store.search(r.vector, k=r.k, filter=r.filter, with_vectors=r.with_vectors))
            assert all((h.vectors is not None) == r.with_vectors for h in hits)
            if r.filter is not None and r.filter.markets:
                assert {h.payload["market"] for h in hits} <= set(r.filter.markets)
        groups = store.search_groups_batch(requests, group_size=2)
        for r, got in zip(requests, groups):
            want = store.search_groups(r.vector, k=r.k, filter=r.filter, group_size=2)
            assert [g.key for g in got] == [g.key for g in want]
            for g, w in zip(got, want):
                _same_hits(g.hits, w.hits)
        for r, arrays in zip(requests, store.search_batch_arrays(requests)):  # the hits as arrays, with vectors
            hits = store.search(r.vector, k=r.k, filter=r.filter, with_vectors=True)
            assert arrays.item_ids == [h.item_id for h in hits] and len(arrays) == len(hits)
            assert np.allclose(arrays.scores, [h.score for h in hits], atol=1e-5)
            assert arrays.payloads == [h.payload for h in hits]
            assert arrays.vectors.shape == (len(hits), 16) and arrays.vectors.dtype == np.float32
            assert np.allclose(arrays.vectors, [h.vectors["fused"] for h in hits], atol=1e-6)
        assert store.search_batch([]) == [] and store.search_batch_arrays([]) == []
        from index import DimensionError, PayloadError

        with pytest.raises(DimensionError):
            store.search_batch([requests[0], SearchRequest(np.ones(3))])
        with pytest.raises(PayloadError):
            store.search_batch([requests[0], SearchRequest(np.ones(16), k=0)])
    finally:
        store.close()


def test_edge_hit_vectors_are_never_stale(tmp_path):
    """The edge store serves hit vectors from a cache checked by the point's version: a re-upserted item
    comes back with its new vector, a deleted one not at all."""
    schema = CollectionSchema(text_dim=8, image_dim=8, fused_dim=8)
    store = open_store("edge", path=tmp_path / "s", schema=schema)
    try:
        base = np.eye(8)
        store.upsert([Point(f"i{i}", {"fused": base[i] + 0.1}, {"product_id": f"p{i}"}) for i in range(8)])
        q = base[0] + 0.1
        first_hits = store.search(q, k=8, with_vectors=True)
        first = {h.item_id: h.vectors["fused"] for h in first_hits}
        for h in first_hits:  # the caller's hits own their payloads: changing one leaves the cache alone
            h.payload["product_id"] = "changed by a caller"
        again = {h.item_id: h.vectors["fused"] for h in store.search(q, k=8, with_vectors=True)}
        assert all(np.array_equal(first[i], again[i]) for i in first)
        cached = store.search_batch_arrays([SearchRequest(q, k=8)])[0]
        assert all(p["product_id"] == f"p{i[1:]}" for i, p in zip(cached.item_ids, cached.payloads))
        store.upsert([Point("i2", {"fused": base[2] + 0.1}, {"product_id": "p2", "title": "renamed"})])
        cached = store.search_batch_arrays([SearchRequest(q, k=8)])[0]  # same vector, new payload: a new version
        assert cached.payloads[cached.item_ids.index("i2")].get("title") == "renamed"
        moved = base[0] - base[3]
        store.upsert([Point("i3", {"fused": moved}, {"product_id": "p3"})])
        store.delete(["i5"])
        hits = {h.item_id: h for h in store.search_batch([SearchRequest(q, k=8, with_vectors=True)])[0]}
        assert np.allclose(hits["i3"].vectors["fused"], moved / np.linalg.norm(moved), atol=1e-6)
        assert np.allclose(hits["i1"].vectors["fused"], first["i1"])
        assert "i5" not in hits
        arrays = store.search_batch_arrays([SearchRequest(q, k=8)])[0]
        assert "i5" not in arrays.item_ids
        assert np.allclose(arrays.vectors[arrays.item_ids.index("i3")], moved / np.linalg.norm(moved), atol=1e-6)
        assert arrays.payloads[arrays.item_ids.index("i3")]["product_id"] == "p3"
        hits["i1"].vectors["fused"][0] = 9.0  # a caller's copy: the cache keeps the stored vector
        arrays.vectors[:] = 9.0
        again = {h.item_id: h.vectors["fused"] for h in store.search(q, k=8, with_vectors=True)}
        assert np.allclose(again["i1"], first["i1"])
    finally:
        store.close()


def test_versioned_rows_reuse_their_oldest_rows():
    """The cache's ring: when full, the oldest entry's row is reused, and another version is a miss."""
    from index import VersionedRows

    cache = VersionedRows(dim=2, capacity=3)
    for n in range(5):
        cache.put(f"p{n}", 1, np.full(2, n, dtype=np.float32), {"n": n})
    at, rows = cache.find(["p0", "p1", "p2", "p3", "p4", "p4"], [1, 1, 1, 1, 1, 2])
    assert at.tolist() == [2, 3, 4]
    assert cache.matrix[rows, 0].tolist() == [2, 3, 4] and [cache.tags[r] for r in rows] == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert len(cache) == 3 and len(cache.matrix) >= 3
    cache.put("p4", 2, np.full(2, 9, dtype=np.float32), "new")  # rewritten point: its row is overwritten in place
    at, rows = cache.find(["p4", "p4"], [1, 2])
    assert at.tolist() == [1] and cache.matrix[rows, 0].tolist() == [9] and len(cache) == 3


def test_versioned_rows_grow_up_to_their_capacity():
    from index import VersionedRows

    cache = VersionedRows(dim=3, capacity=5000)
    for n in range(5000):
        cache.put(n, n, np.full(3, n, dtype=np.float32))
    at, rows = cache.find(list(range(5000)), list(range(5000)))
    assert len(at) == 5000 and len(cache.matrix) == 5000
    np.testing.assert_array_equal(cache.matrix[rows, 0], np.arange(5000))
    with pytest.raises(ValueError):
        VersionedRows(dim=0, capacity=1)


# ------------------------------------------------------------------------------------------------------
# recommend_many == recommend, one by one


@pytest.fixture(scope="module")
def world(tmp_path_factory, emoji_market):
    from evaluation.splits import leave_one_out
    from mmrec.embedding.recipe import ItemRecipe
    from mmrec.model import FusionRecommender, TrainConfig
    from mmrec.model.transformer import FusionConfig
    from mmrec.model.vectors import text_vectors

    items = emoji_market.items.filter(lambda m: m in MARKETS, input_columns="market")
    keep = set(items["item_id"])
    events = emoji_market.events.filter(lambda i: i in keep, input_columns="item_id")
    vectors = text_vectors(items, "use-m3", recipe=ItemRecipe(("title",)), progress=False)
    split = leave_one_out(events, items=items, max_users=300, seed=0)
    product_of = dict(zip(items["item_id"], items["product_id"]))
    rec = FusionRecommender(
        vectors.aligned(split.item_ids), FusionConfig(content_dim=vectors.dim, hidden=32, max_len=20),
        TrainConfig(epochs=1, lr=3e-3, warmup_steps=10, progress=False),
        item_ids=split.item_ids, item_market=split.item_market, vectors_version=vectors.version,
        item_products=np.asarray([product_of[i] for i in split.item_ids], dtype=object),
    ).fit(split.train)
    root = tmp_path_factory.mktemp("batching")
    ckpt = rec.save(root / "model.pt")
    store = open_store("edge", path=root / "store", schema=CollectionSchema(
        text_dim=vectors.dim, image_dim=vectors.dim, fused_dim=vectors.dim))
    rows = items.to_list()
    store.upsert([Point(r["item_id"], {"fused": vectors.vectors[i]},
                        {"product_id": r["product_id"], "language": r["language"], "market": r["market"],
                         "category": r["category"], "in_stock": i % 7 != 0, "title": r["title"]})
                  for i, r in enumerate(rows)])
    yield {"store": store, "ckpt": ckpt, "vectors": vectors, "events": events, "split": split}
    store.close()


def _requests(world, n: int = 14):
    """Mixed requests: timed event histories and ad-hoc id lists, filters, k, markets, negatives."""
    from mmrec.data.schema import Event
    from mmrec.serving.two_stage import RecommendRequest

    split = world["split"]
    hist = split.test.histories
    rng = np.random.default_rng(1)
    out = []
    for n_req, row in enumerate(rng.choice(len(hist), size=n, replace=False)):
        start, end = int(hist.indptr[row]), int(hist.indptr[row + 1])
        ids = [str(split.item_ids[j]) for j in hist.items[start:end]][-15:]
        if n_req % 2 == 0:  # events with times, kinds and markets
            ts = hist.timestamps[start:end][-15:] if hist.timestamps is not None else np.arange(len(ids))
            history = [Event(user_id="u", item_id=i, timestamp=int(t) + 1, kind=("view", "click", "purchase")[j % 3])
                       for j, (i, t) in enumerate(zip(ids, ts))]
        else:
            history = ids
        flt = [None, Filter(markets="JP"), Filter(in_stock=True), Filter(languages=("de", "fr"))][n_req % 4]
        out.append(RecommendRequest(history, k=[10, 3, 7][n_req % 3], filter=flt,
                                    market=["DE", None, None, "FR"][n_req % 4] if flt is None or not flt.markets else None,
                                    negatives=ids[:1] if n_req % 5 == 4 else ()))
    out.append(RecommendRequest(["no-such-item"], k=5))  # nothing known: empty answer inside a batch
    return out


def _same_answers(batched, alone) -> None:
    for (recs, used), (recs1, used1) in zip(batched, alone, strict=True):
        assert used == used1
        assert [r.item_id for r in recs] == [r.item_id for r in recs1]
        assert np.allclose([r.score for r in recs], [r.score for r in recs1], atol=1e-5)
        assert [r.explored for r in recs] == [r.explored for r in recs1]
        for r, r1 in zip(recs, recs1):
            assert [i for i, _ in r.reasons] == [i for i, _ in r1.reasons]
            assert np.allclose([a for _, a in r.reasons], [a for _, a in r1.reasons], atol=1e-5)


@pytest.mark.parametrize("reasons", ["sequential", "leave_one_out", "cosine"])
def test_recommend_many_answers_what_recommend_answers_alone(world, reasons):
    from mmrec.serving.two_stage import ServingConfig, TwoStageRecommender

    ranker = TwoStageRecommender.from_checkpoint(world["ckpt"], world["store"], config=ServingConfig(reasons=reasons),
                                                 expect_vectors_version=world["vectors"].version)
    requests = _requests(world)
    alone = [ranker.recommend(r.history, r.k, r.filter, market=r.market, negatives=r.negatives) for r in requests]
    batched = ranker.recommend_many(requests)
    _same_answers(batched, alone)
    assert sum(bool(recs) for recs, _ in alone) >= len(requests) - 3  # the comparison is not of empty pages
    assert alone[-1] == ([], [])
    for r, (recs, _) in zip(requests, batched):  # each request's own options held inside the batch
        assert len(recs) <= r.k
        if r.filter is not None and r.filter.markets:
            assert all(x.payload["market"] in r.filter.markets for x in recs)
        if r.filter is not None and r.filter.languages:
            assert all(x.payload["language"] in r.filter.languages for x in recs)
        if r.filter is not None and r.filter.in_stock:
            assert all(x.payload["in_stock"] for x in recs)
        if r.market is not None:
            assert all(x.payload["market"] == r.market for x in recs)
        assert not set(x.item_id for x in recs) & set(r.negatives)


def test_recommend_many_keeps_each_requests_exploration_draws(world):
    from mmrec.serving.exploration import ExplorationConfig
    from mmrec.serving.two_stage import ServingConfig, TwoStageRecommender

    def counts(ids):  # every item new and never clicked: the exploration slots are drawn for each page
        return np.zeros(len(ids)), np.zeros(len(ids))

    config = ServingConfig(exploration=ExplorationConfig(enabled=True, max_share=0.5, new_below=10))
    ranker = TwoStageRecommender.from_checkpoint(world["ckpt"], world["store"], config=config, item_counts=counts,
                                                 expect_vectors_version=world["vectors"].version)
    requests = [replace(r, rng=np.random.default_rng(i)) for i, r in enumerate(_requests(world, 8))]
    alone = [ranker.recommend(r.history, r.k, r.filter, market=r.market, negatives=r.negatives,
                              rng=np.random.default_rng(i)) for i, r in enumerate(requests)]
    _same_answers(ranker.recommend_many(requests), alone)
    assert any(x.explored for recs, _ in alone for x in recs)


def test_recommend_many_refuses_a_bad_request_before_running_any(world):
    from mmrec.serving.two_stage import RecommendRequest, TwoStageRecommender

    ranker = TwoStageRecommender.from_checkpoint(world["ckpt"], world["store"])
    good = _requests(world, 2)[0]
    with pytest.raises(ValueError, match="request 1: k must be positive"):
        ranker.recommend_many([good, RecommendRequest(good.history, k=0)])
    with pytest.raises(TypeError, match="request 0"):
        ranker.recommend_many([RecommendRequest([3.5])])
    assert ranker.recommend_many([]) == []


def test_content_recommend_many_answers_what_recommend_answers_alone(tmp_path, emoji_market):
    """Content-based recommending in a batch (`CatalogStore.recommend_many`: one vector read, one batched grouped
    search) gives each request the answer it gets alone: mixed filters, k, negatives, unknown and empty histories."""
    from mmrec.data.schema import Item
    from mmrec.store.catalog_store import CatalogConfig, CatalogStore, ContentRequest

    items = emoji_market.items.filter(lambda m: m in ("DE", "JP", "US"), input_columns="market")
    rows = items.to_list()
    catalog = CatalogStore.open(tmp_path / "data", CatalogConfig(text_encoder="use-m3", image_encoder=None))
    try:
        catalog.upsert_items([Item(item_id=r["item_id"], product_id=r["product_id"], title=r["title"],
                                   language=r["language"], market=r["market"], category=r["category"],
                                   in_stock=i % 6 != 0) for i, r in enumerate(rows)])
        ids = [r["item_id"] for r in rows]
        product_of = {r["item_id"]: r["product_id"] for r in rows}
        rng = np.random.default_rng(0)
        requests = []
        for n in range(12):
            history = [ids[int(j)] for j in rng.choice(len(ids), size=1 + n % 5, replace=False)]
            requests.append(ContentRequest(history + (["no-such-item"] if n % 4 == 3 else []), k=[10, 3, 6][n % 3],
                                           filter=[None, Filter(markets="JP"), Filter(in_stock=True)][n % 3],
                                           negatives=[ids[int(rng.integers(len(ids)))]] if n % 5 == 4 else ()))
        requests += [ContentRequest(["no-such-item"], k=5), ContentRequest([], k=5)]
        batched = catalog.recommend_many(requests)
        alone = [catalog.recommend(r.history, r.k, r.filter, negatives=r.negatives) for r in requests]
    finally:
        catalog.close()
    assert batched[-2:] == [([], []), ([], [])] and sum(bool(recs) for recs, _ in alone) >= 10
    for r, (recs, used), (recs1, used1) in zip(requests, batched, alone, strict=True):
        assert used == used1 and "no-such-item" not in used
        assert [x.item_id for x in recs] == [x.item_id for x in recs1] and len(recs) <= r.k
        assert np.allclose([x.score for x in recs], [x.score for x in recs1], atol=1e-6)
        assert [x.reasons for x in recs] == [x.reasons for x in recs1]
        seen = {product_of[i] for i in (*r.history, *r.negatives) if i in product_of}
        assert not {x.payload["product_id"] for x in recs} & seen  # no product seen (or disliked) again
        if r.filter is not None and r.filter.markets:
            assert all(x.payload["market"] == "JP" for x in recs)


# ------------------------------------------------------------------------------------------------------
# MicroBatcher


def test_batcher_fills_batches_and_answers_each_request():
    from mmrec.serving.batching import BatchingConfig, MicroBatcher

    seen: list[list[int]] = []
    release = threading.Event()

    def run(batch: list[int]) -> list[int]:
        release.wait(30)  # hold the first batch so that the next requests queue up behind it
        seen.append(list(batch))
        return [x * 10 for x in batch]

    batcher = MicroBatcher(run, BatchingConfig(window_ms=1000, max_batch=4), name="test")
    try:
        futures = [batcher.submit(i) for i in range(10)]
        release.set()
        assert [f.result(30) for f in futures] == [i * 10 for i in range(10)]
    finally:
        batcher.close()
    assert sorted(x for b in seen for x in b) == list(range(10))
    assert max(len(b) for b in seen) == 4  # a full batch goes at once, without waiting out the window
    assert len(seen) < 10 and batcher.batches == len(seen) and batcher.requests == 10


def test_batcher_fails_only_the_bad_request_and_drains_on_close():
    from mmrec.serving.batching import BatcherClosed, BatchingConfig, MicroBatcher

    def run(batch: list[int]) -> list[int]:
        if any(x < 0 for x in batch):
            raise ValueError("negative")
        return [x + 1 for x in batch]

    batcher = MicroBatcher(run, BatchingConfig(window_ms=50, max_batch=8), name="test")
    futures = [batcher.submit(x) for x in (1, -1, 2, 3)]
    batcher.close()  # what was queued is still answered
    assert futures[0].result(30) == 2 and futures[2].result(30) == 3 and futures[3].result(30) == 4
    with pytest.raises(ValueError, match="negative"):
        futures[1].result(30)
    with pytest.raises(BatcherClosed):
        batcher.submit(5)


def test_batching_config_checks_its_window():
    from mmrec.serving.batching import BatchingConfig

    assert not BatchingConfig(window_ms=0).enabled and BatchingConfig().enabled
    for bad in (-1, float("nan"), 5000):
        with pytest.raises(ValueError):
            BatchingConfig(window_ms=bad)
    with pytest.raises(ValueError):
        BatchingConfig(max_batch=0)


# ------------------------------------------------------------------------------------------------------
# a real `mmrec serve --batch-window-ms` process


@pytest.mark.slow
def test_concurrent_requests_to_a_batching_server_get_their_answers_alone(tmp_path, emoji_market):
    """8 concurrent /recommend and /search requests (batched on the server) get the answers the same
    requests get one at a time; each keeps its own filter, k and market."""
    import httpx
    from service_support import Server

    from evaluation.splits import leave_one_out
    from mmrec.model import FusionRecommender, TrainConfig
    from mmrec.model.transformer import FusionConfig
    from mmrec.model.vectors import store_vectors
    from mmrec.store.catalog_store import CatalogConfig, CatalogStore
    from mmrec.data.schema import Item

    items = emoji_market.items.filter(lambda m: m in ("DE", "JP"), input_columns="market")
    keep = set(items["item_id"])
    events = emoji_market.events.filter(lambda i: i in keep, input_columns="item_id")
    data = tmp_path / "data"
    catalog = CatalogStore.open(data, CatalogConfig(text_encoder="use-m3", image_encoder=None))
    try:
        rows = items.to_list()
        catalog.upsert_items([Item(item_id=r["item_id"], product_id=r["product_id"], title=r["title"],
                                   language=r["language"], market=r["market"], category=r["category"]) for r in rows])
    finally:
        catalog.close()
    vectors = store_vectors(items, str(data), progress=False)
    split = leave_one_out(events, items=items, max_users=200, seed=0)
    rec = FusionRecommender(vectors.aligned(split.item_ids), FusionConfig(content_dim=vectors.dim, hidden=32, max_len=20),
                            TrainConfig(epochs=1, lr=3e-3, warmup_steps=10, progress=False),
                            item_ids=split.item_ids, item_market=split.item_market,
                            vectors_version=vectors.version).fit(split.train)
    ckpt = rec.save(tmp_path / "model.pt")
    hist = split.test.histories
    bodies = []
    for n in range(8):
        start, end = int(hist.indptr[n]), int(hist.indptr[n + 1])
        body = {"history": [str(split.item_ids[j]) for j in hist.items[start:end]][-8:] + (["no-such-item"] if n == 3 else []),
                "k": [10, 4][n % 2]}
        if n % 3 == 0:
            body["market"] = ["JP", "DE"][n % 2]
        bodies.append(body)
    queries = [{"q": t, "k": 3 + n % 3, **({"market": "JP"} if n % 2 else {})}
               for n, t in enumerate(["Banane", "バナナ", "Fahrrad", "自転車", "Gitarre", "ギター", "Regenschirm", "傘"])]
    srv = Server(data, "--image-encoder", "none", "--model", str(ckpt), "--batch-window-ms", "200")
    try:
        def recommend(body):
            r = srv.client.post("/recommend", json=body)
            assert r.status_code == 200, r.text
            return r.json()

        def search(query):
            r = srv.client.get("/search", params=query)
            assert r.status_code == 200, r.text
            return r.json()

        alone_r = [recommend(b) for b in bodies]
        alone_s = [search(q) for q in queries]
        with ThreadPoolExecutor(8) as pool:
            together_r = list(pool.map(recommend, bodies))
            together_s = list(pool.map(search, queries))
    finally:
        srv.stop()
    assert any(a["results"] for a in alone_r)
    for body, a, b in zip(bodies, alone_r, together_r):
        assert a["request_id"] != b["request_id"]
        assert [x["item_id"] for x in a["results"]] == [x["item_id"] for x in b["results"]]
        assert np.allclose([x["score"] for x in a["results"]], [x["score"] for x in b["results"]], atol=1e-5)
        assert a["history_used"] == b["history_used"] and a["history_dropped"] == b["history_dropped"]
        assert len(b["results"]) <= body["k"]
        if "market" in body:
            assert all(x["market"] == body["market"] for x in b["results"])
    assert together_r[3]["history_dropped"] == ["no-such-item"]
    for query, a, b in zip(queries, alone_s, together_s):
        assert [x["item_id"] for x in a["results"]] == [x["item_id"] for x in b["results"]]
        assert np.allclose([x["score"] for x in a["results"]], [x["score"] for x in b["results"]], atol=1e-5)
        assert len(b["results"]) == query["k"]
        if "market" in query:
            assert all(x["market"] == "JP" for x in b["results"])
    import re

    log = (tmp_path / f"serve-{srv.port}.log").read_text()
    for name in ("recommend:default", "search"):  # the 8 sent one at a time ran alone, the 8 concurrent did not
        requests, batches = map(int, re.search(rf"{name} batcher: (\d+) requests in (\d+) batches", log).groups())
        assert requests == 16 and 9 <= batches < 16

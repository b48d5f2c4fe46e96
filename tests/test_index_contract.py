"""The contract every vector-store backend must meet, run against each of them.

Backends: `edge` (the embedded Qdrant engine, in a temp dir), `server-memory` (qdrant-client's local
mode: the same client code path as a server) and `server-url` (a real Qdrant server, only when
QDRANT_URL is set). Expected results come from numpy brute force over the same vectors.
"""
from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from index import (
    CollectionSchema,
    DimensionError,
    Filter,
    PayloadError,
    Point,
    SchemaError,
    StoreError,
    UnknownItemError,
    open_store,
)

SCHEMA = CollectionSchema(text_dim=16, image_dim=8, fused_dim=16)
LANGS = ["en", "de", "fr", "es", "it", "ja", "ko", "zh", "ru", "tr", "pt", "ar", "fa", "id"]
MARKETS = ["de", "fr", "us", "jp"]
CATEGORIES = ["Food/fruit", "Objects/clothing", "Activities/sport"]


def make_catalog(n_products: int = 40, seed: int = 0) -> list[Point]:
    """Products listed in 1..14 languages; listings of one product have nearly the same vectors (as a
    multilingual encoder gives translations), so ungrouped results fill up with one product."""
    rng = np.random.default_rng(seed)
    points = []
    for p in range(n_products):
        base_t, base_i = rng.normal(size=16), rng.normal(size=8)
        n_langs = 14 if p % 5 == 0 else 1 + p % 4
        for lang in LANGS[:n_langs]:
            t = base_t + 0.05 * rng.normal(size=16)
            vectors = {"text": t, "fused": t + 0.1 * rng.normal(size=16)}
            if p % 3 != 0:  # a third of the products have no image
                vectors["image"] = base_i + 0.05 * rng.normal(size=8)
            payload = {
                "product_id": f"prod{p}",
                "language": lang,
                "market": MARKETS[(p + len(lang)) % len(MARKETS)],
                "category": CATEGORIES[p % 3],
                "price": float(p % 17) + 0.5,
                "in_stock": p % 4 != 1,
                "created_at": 1_600_000_000 + 3600 * p,
                "title": f"product {p} ({lang})",
            }
            points.append(Point(item_id=f"prod{p}:{lang}", vectors=vectors, payload=payload))
    return points


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def brute_force(points: list[Point], query: np.ndarray, using: str, mask=lambda p: True) -> list[tuple[str, float]]:
    """(item_id, cosine) of points having `using` and passing `mask`, best first."""
    kept = [p for p in points if using in p.vectors and mask(p)]
    if not kept:
        return []
    sims = _unit(np.stack([p.vectors[using] for p in kept]).astype(np.float64)) @ _unit(np.asarray(query, np.float64))
    order = np.argsort(-sims, kind="stable")
    return [(kept[i].item_id, float(sims[i])) for i in order]


@pytest.fixture(params=["edge", "server-memory", "server-url"])
def backend(request, tmp_path):
    """A factory `open(schema=SCHEMA)` for the backend; calling it again reopens the same store where the
    backend can be reopened (edge directory, server collection), else it is None as `reopen`."""
    kind = request.param
    opened = []
    if kind == "edge":
        def make(schema=SCHEMA, **options):
            store = open_store("edge", path=tmp_path / "store", schema=schema, **options)
            opened.append(store)
            return store
        reopenable = True
    elif kind == "server-memory":
        def make(schema=SCHEMA, **options):
            store = open_store("server", url=":memory:", schema=schema, **options)
            opened.append(store)
            return store
        reopenable = False
    else:
        url = os.environ.get("QDRANT_URL")
        if not url:
            pytest.skip("QDRANT_URL is not set: no Qdrant server to test against")
        name = f"mmrec_test_{uuid.uuid4().hex[:8]}"

        def make(schema=SCHEMA, **options):
            store = open_store("server", url=url, schema=schema, collection=name, **options)
            opened.append(store)
            return store
        reopenable = True
    make.kind = kind
    make.reopenable = reopenable
    yield make
    for store in opened:
        store.close()
    if kind == "server-url":
        from qdrant_client import QdrantClient

        client = QdrantClient(url=os.environ["QDRANT_URL"])
        client.delete_collection(name)
        client.close()


@pytest.fixture
def catalog():
    return make_catalog()


@pytest.fixture
def loaded(backend, catalog):
    store = backend()
    assert store.upsert(catalog, batch_size=64) == len(catalog)
    store.build_index()
    return store


# --- writes ---------------------------------------------------------------------------------------------

def test_upsert_is_idempotent(loaded, catalog):
    assert loaded.count() == len(catalog)
    loaded.upsert(catalog[:50])
    loaded.upsert(catalog[:50], batch_size=7)
    assert loaded.count() == len(catalog)


def test_reupsert_replaces_whole_point(loaded, catalog):
    with_image = next(p for p in catalog if "image" in p.vectors)
    changed = Point(with_image.item_id, {"text": with_image.vectors["text"]}, {**with_image.payload, "price": 999.0})
    loaded.upsert([changed])
    got = loaded.get([with_image.item_id], with_vectors=True)[0]
    assert got.payload["price"] == 999.0
    assert set(got.vectors) == {"text"}  # the left-out vectors are gone: the point was replaced
    assert loaded.count() == len(catalog)


def test_delete(loaded, catalog):
    gone = [catalog[0].item_id, catalog[5].item_id]
    loaded.delete(gone + ["never-existed"])
    assert loaded.count() == len(catalog) - 2
    assert loaded.get(gone) == []
    hits = loaded.search(catalog[0].vectors["fused"], k=50)
    assert not set(gone) & {h.item_id for h in hits}
    loaded.delete(gone)  # deleting again is fine
    assert loaded.count() == len(catalog) - 2


def test_get_keeps_order_skips_missing_and_returns_vectors(loaded, catalog):
    a, b = catalog[3], catalog[10]
    got = loaded.get([b.item_id, "missing", a.item_id], with_vectors=True)
    assert [p.item_id for p in got] == [b.item_id, a.item_id]
    assert set(got[0].vectors) == set(b.vectors)
    # cosine stores normalised vectors
    np.testing.assert_allclose(got[0].vectors["text"], _unit(b.vectors["text"]), atol=1e-5)
    assert got[0].payload["title"] == b.payload["title"]
    assert got[0].payload["item_id"] == b.item_id
    assert loaded.get([a.item_id])[0].vectors == {}


def test_payload_defaults_product_id_and_drops_nones(backend):
    store = backend()
    store.upsert([Point("solo", {"fused": np.ones(16)}, {"price": None, "market": "de"})])
    payload = store.get(["solo"])[0].payload
    assert payload["product_id"] == "solo"
    assert "price" not in payload


# --- search ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("using", ["fused", "text", "image"])
def test_search_matches_brute_force(loaded, catalog, using):
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = rng.normal(size=SCHEMA.vectors[using])
        expected = brute_force(catalog, q, using)[:10]
        for exact in (True, False):
            hits = loaded.search(q, using=using, k=10, exact=exact)
            assert [h.item_id for h in hits] == [e[0] for e in expected]
            np.testing.assert_allclose([h.score for h in hits], [e[1] for e in expected], atol=1e-4)


def test_search_can_return_the_searched_vector(loaded, catalog):
    by_id = {p.item_id: p for p in catalog}
    hits = loaded.search(catalog[4].vectors["text"], using="text", k=3, with_vectors=True)
    groups = loaded.search_groups(catalog[4].vectors["text"], using="text", k=3, with_vectors=True)
    for hit in hits + [g.hits[0] for g in groups]:
        assert set(hit.vectors) == {"text"}
        np.testing.assert_allclose(hit.vectors["text"], _unit(by_id[hit.item_id].vectors["text"]), atol=1e-5)
    assert loaded.search(catalog[4].vectors["text"], using="text", k=1)[0].vectors is None


def test_image_search_skips_items_without_image(loaded, catalog):
    hits = loaded.search(np.ones(8), using="image", k=len(catalog))
    with_image = {p.item_id for p in catalog if "image" in p.vectors}
    assert {h.item_id for h in hits} == with_image


FILTER_CASES = [
    (Filter(markets=["de"]), lambda p: p.payload["market"] == "de"),
    (Filter(markets=("de", "jp"), languages="en"), lambda p: p.payload["market"] in ("de", "jp") and p.payload["language"] == "en"),
    (Filter(categories=["Food/fruit"], in_stock=True), lambda p: p.payload["category"] == "Food/fruit" and p.payload["in_stock"]),
    (Filter(in_stock=False), lambda p: not p.payload["in_stock"]),
    (Filter(price_min=3.5, price_max=8.5), lambda p: 3.5 <= p.payload["price"] <= 8.5),
    (Filter(price_max=2.5), lambda p: p.payload["price"] <= 2.5),
    (Filter(created_from=1_600_000_000 + 3600 * 10, created_to=1_600_000_000 + 3600 * 20),
     lambda p: 10 <= (p.payload["created_at"] - 1_600_000_000) // 3600 <= 20),
    (Filter(product_ids=["prod0", "prod7"]), lambda p: p.payload["product_id"] in ("prod0", "prod7")),
    (Filter(exclude_item_ids=["prod0:en", "prod1:en"], exclude_product_ids=["prod5"], languages=["en", "de"]),
     lambda p: p.item_id not in ("prod0:en", "prod1:en") and p.payload["product_id"] != "prod5"
     and p.payload["language"] in ("en", "de")),
    (Filter(markets=["nowhere"]), lambda p: False),
]


@pytest.mark.parametrize("case", range(len(FILTER_CASES)))
def test_filters_match_brute_force(loaded, catalog, case):
    flt, mask = FILTER_CASES[case]
    expected_all = brute_force(catalog, catalog[0].vectors["fused"], "fused", mask)
    assert loaded.count(flt) == len(expected_all)
    hits = loaded.search(catalog[0].vectors["fused"], k=10, filter=flt)
    assert [h.item_id for h in hits] == [e[0] for e in expected_all[:10]]
    everything = loaded.search(catalog[0].vectors["fused"], k=len(catalog), filter=flt, exact=True)
    assert {h.item_id for h in everything} == {e[0] for e in expected_all}


@pytest.mark.parametrize("case", range(len(FILTER_CASES)))
def test_filter_matches_held_points_as_the_backend_does(loaded, catalog, case):
    """`Filter.matches` (for points a caller holds, e.g. history items re-offered) agrees with the index."""
    flt, _ = FILTER_CASES[case]
    everything = loaded.search(catalog[0].vectors["fused"], k=len(catalog), filter=flt, exact=True)
    assert {p.item_id for p in catalog if flt.matches(p.item_id, p.payload)} == {h.item_id for h in everything}


def test_search_groups_gives_one_slot_per_product(loaded, catalog):
    big = next(p for p in catalog if p.payload["product_id"] == "prod0")  # listed in 14 languages
    q = big.vectors["fused"]
    plain = loaded.search(q, k=10)
    assert all(h.payload["product_id"] == "prod0" for h in plain)  # the problem grouping solves
    groups = loaded.search_groups(q, k=5)
    keys = [g.key for g in groups]
    assert len(keys) == 5 and len(set(keys)) == 5 and keys[0] == "prod0"
    # group order = order of each product's best listing in brute force
    best: dict[str, float] = {}
    for item_id, score in brute_force(catalog, q, "fused"):
        best.setdefault(item_id.split(":")[0], score)
    assert keys == list(best)[:5]
    assert all(len(g.hits) == 1 for g in groups)
    sized = loaded.search_groups(q, k=3, group_size=3, filter=Filter(markets=[big.payload["market"], "us"]))
    assert sized[0].key == "prod0" and len(sized[0].hits) == 3
    assert all(h.payload["product_id"] == g.key for g in sized for h in g.hits)
    assert all(h.payload["market"] in (big.payload["market"], "us") for g in sized for h in g.hits)
    by_lang = loaded.search_groups(q, k=3, group_by="language")
    assert len({g.key for g in by_lang}) == 3


# --- recommend ------------------------------------------------------------------------------------------

def test_recommend_average_vector_matches_brute_force(loaded, catalog):
    vec = {p.item_id: _unit(p.vectors["fused"]) for p in catalog}
    pos, neg = ["prod2:en", "prod7:en"], ["prod4:en"]
    query = 2 * np.mean([vec[i] for i in pos], axis=0) - np.mean([vec[i] for i in neg], axis=0)
    expected = [e for e in brute_force(catalog, query, "fused") if e[0] not in pos + neg][:10]
    hits = loaded.recommend(pos, neg, k=10)
    assert [h.item_id for h in hits] == [e[0] for e in expected]
    # positives only: plain average
    query = np.mean([vec[i] for i in pos], axis=0)
    expected = [e for e in brute_force(catalog, query, "fused") if e[0] not in pos][:10]
    assert [h.item_id for h in loaded.recommend(pos, k=10)] == [e[0] for e in expected]


@pytest.mark.parametrize("strategy", ["average_vector", "best_score", "sum_scores"])
def test_recommend_excludes_examples_and_obeys_filters(loaded, catalog, strategy):
    pos = ["prod0:en", "prod0:de", "prod6:en"]
    flt = Filter(markets=["de", "fr", "us"], in_stock=True)
    hits = loaded.recommend(pos, ["prod3:en"], k=20, strategy=strategy, filter=flt)
    assert hits
    ids = {h.item_id for h in hits}
    assert not ids & set(pos + ["prod3:en"])
    by_id = {p.item_id: p for p in catalog}
    assert all(by_id[i].payload["market"] in ("de", "fr", "us") and by_id[i].payload["in_stock"] for i in ids)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_recommend_best_score_top_hit_is_nearest_to_a_positive(loaded, catalog):
    example = next(p for p in catalog if p.item_id == "prod2:en")
    expected = [e for e in brute_force(catalog, example.vectors["fused"], "fused") if e[0] != example.item_id]
    hits = loaded.recommend([example.item_id], k=1, strategy="best_score")
    assert hits[0].item_id == expected[0][0]


def test_negative_examples_push_results_away(loaded, catalog):
    vec = {p.item_id: _unit(p.vectors["fused"]) for p in catalog}
    plain = loaded.recommend(["prod2:en"], k=10)
    negative = "prod4:en"
    pushed = loaded.recommend(["prod2:en"], [negative], k=10)
    assert negative not in {h.item_id for h in pushed}
    closeness = lambda hits: np.mean([vec[h.item_id] @ vec[negative] for h in hits])  # noqa: E731
    assert closeness(pushed) < closeness(plain)


def test_recommend_groups(loaded):
    groups = loaded.recommend_groups(["prod5:en"], k=4)
    keys = [g.key for g in groups]
    assert len(keys) == 4 and len(set(keys)) == 4
    # other listings of the example's own product are fine, the example itself is not
    assert all(h.item_id != "prod5:en" for g in groups for h in g.hits)


def test_recommend_rejects_unknown_or_vectorless_examples(loaded, catalog):
    with pytest.raises(UnknownItemError, match="nope"):
        loaded.recommend(["prod1:en", "nope"])
    with pytest.raises(UnknownItemError, match="nope2"):
        loaded.recommend(["prod1:en"], ["nope2"])
    no_image = next(p.item_id for p in catalog if "image" not in p.vectors)
    with pytest.raises(UnknownItemError, match="without a 'image' vector"):
        loaded.recommend([no_image], using="image")
    with pytest.raises(PayloadError, match="positive"):
        loaded.recommend([], ["prod1:en"])
    with pytest.raises(PayloadError, match="strategy"):
        loaded.recommend(["prod1:en"], strategy="magic")


# --- validation -----------------------------------------------------------------------------------------

def test_dimension_errors_are_clear_and_write_nothing(backend):
    store = backend()
    good = Point("ok", {"fused": np.ones(16)})
    with pytest.raises(DimensionError, match=r"item 'bad'.*fused.*\(16,\).*\(15,\)"):
        store.upsert([good, Point("bad", {"fused": np.ones(15)})])
    assert store.count() == 0  # the good point of the failed batch was not written either
    with pytest.raises(DimensionError, match="unknown vector name 'colour'"):
        store.upsert([Point("x", {"colour": np.ones(16)})])
    with pytest.raises(DimensionError, match="NaN"):
        store.upsert([Point("x", {"text": np.full(16, np.nan)})])
    with pytest.raises(DimensionError, match="all zeros"):
        store.upsert([Point("x", {"text": np.zeros(16)})])
    with pytest.raises(DimensionError, match="no vectors"):
        store.upsert([Point("x", {})])
    store.upsert([good])
    with pytest.raises(DimensionError, match=r"query: image vector must have shape \(8,\)"):
        store.search(np.ones(16), using="image")
    with pytest.raises(DimensionError, match="not numeric"):
        store.search(["a", "b"])
    assert store.count() == 1


def test_payload_and_argument_errors(backend):
    store = backend()
    v = {"fused": np.ones(16)}
    with pytest.raises(PayloadError, match="price"):
        store.upsert([Point("x", v, {"price": "12 EUR"})])
    with pytest.raises(PayloadError, match="in_stock"):
        store.upsert([Point("x", v, {"in_stock": "yes"})])
    with pytest.raises(PayloadError, match="created_at"):
        store.upsert([Point("x", v, {"created_at": 1.5})])
    with pytest.raises(PayloadError, match="market"):
        store.upsert([Point("x", v, {"market": 7})])
    with pytest.raises(PayloadError, match="item_id"):
        store.upsert([Point("", v)])
    with pytest.raises(PayloadError, match="JSON"):
        store.upsert([Point("x", v, {"blob": object()})])
    with pytest.raises(PayloadError, match="index.Point"):
        store.upsert([{"item_id": "x"}])
    with pytest.raises(PayloadError, match="k must be"):
        store.search(np.ones(16), k=0)
    with pytest.raises(PayloadError, match="k must be"):
        store.search(np.ones(16), k=10**9)
    with pytest.raises(PayloadError, match="group_by"):
        store.search_groups(np.ones(16), group_by="title")
    with pytest.raises(PayloadError, match="one string"):
        store.get("prod1:en")
    with pytest.raises(PayloadError, match="index.Filter"):
        store.search(np.ones(16), filter={"market": "de"})
    assert store.count() == 0


def test_closed_store_refuses_work(backend):
    store = backend()
    store.upsert([Point("x", {"fused": np.ones(16)})])
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.count()
    with pytest.raises(StoreError, match="closed"):
        store.upsert([Point("y", {"fused": np.ones(16)})])


def test_reopen_keeps_data_and_checks_schema(backend, catalog):
    if not backend.reopenable:
        pytest.skip(f"{backend.kind} cannot be reopened (in-memory)")
    store = backend()
    store.upsert(catalog)
    store.close()
    again = backend(schema=None)  # schema read back from the store
    assert again.schema.vectors == SCHEMA.vectors
    assert again.count() == len(catalog)
    q = catalog[0].vectors["fused"]
    assert [h.item_id for h in again.search(q, k=5)] == [e[0] for e in brute_force(catalog, q, "fused")[:5]]
    assert again.count(Filter(markets=["de"])) == sum(p.payload["market"] == "de" for p in catalog)
    again.close()
    with pytest.raises(SchemaError, match="text_dim|vectors"):
        backend(schema=CollectionSchema(text_dim=32, image_dim=8, fused_dim=16))


def test_filter_validation():
    assert Filter(markets="de").markets == ("de",)
    assert Filter(markets=["de", "de", "fr"]).markets == ("de", "fr")
    assert Filter().is_empty() and not Filter(in_stock=False).is_empty()
    with pytest.raises(PayloadError, match="empty"):
        Filter(markets=[])
    with pytest.raises(PayloadError, match="greater than"):
        Filter(price_min=10, price_max=5)
    with pytest.raises(PayloadError, match="integer"):
        Filter(created_from=1.5)
    with pytest.raises(PayloadError, match="in_stock"):
        Filter(in_stock="yes")
    assert Filter(languages=["en"]).with_excluded(["a"]).exclude_item_ids == ("a",)


def test_open_store_argument_errors(tmp_path):
    with pytest.raises(StoreError, match="unknown store kind"):
        open_store("sqlite", path=tmp_path)
    with pytest.raises(StoreError, match="path="):
        open_store("edge", schema=SCHEMA)
    with pytest.raises(StoreError, match="url="):
        open_store("server", schema=SCHEMA)
    with pytest.raises(StoreError, match="unknown EdgeOptions option"):
        open_store("edge", path=tmp_path, schema=SCHEMA, shards=3)
    with pytest.raises(SchemaError, match="pass a CollectionSchema"):
        open_store("edge", path=tmp_path / "new")
    with pytest.raises(SchemaError, match="pass a CollectionSchema"):
        open_store("server", url=":memory:")
    with pytest.raises(SchemaError, match="positive integer"):
        CollectionSchema(text_dim=0, image_dim=8, fused_dim=16)

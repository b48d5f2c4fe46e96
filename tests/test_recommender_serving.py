"""Two-stage serving over a real embedded Qdrant store, with a fusion transformer trained (briefly) on the
emoji-market shopper SIMULATION: cold items, one-item histories, real-time events, cross-market requests.

The catalog is emoji-market restricted to four markets (US en, DE de, JP ja, FR fr) to keep the store
small; content vectors are the titles' use-m3 vectors (titles only, no shared category words).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from index import CollectionSchema, Filter, Point, open_store

MARKETS = ("US", "DE", "JP", "FR")


def _products(items, split):
    """Each listing's product id, aligned with the split (listings of a product share an ID row)."""
    import numpy as np

    product_of = dict(zip(items["item_id"], items["product_id"]))
    return np.asarray([product_of[i] for i in split.item_ids], dtype=object)


@pytest.fixture(scope="module")
def world(tmp_path_factory, emoji_market):
    from evaluation.splits import leave_one_out
    from mmrec.embedding.recipe import ItemRecipe
    from mmrec.model.vectors import text_vectors
    from mmrec.model.transformer import FusionConfig
    from mmrec.model import FusionRecommender, TrainConfig

    items = emoji_market.items.filter(lambda m: m in MARKETS, input_columns="market")
    keep = set(items["item_id"])
    events = emoji_market.events.filter(lambda i: i in keep, input_columns="item_id")
    vectors = text_vectors(items, "use-m3", recipe=ItemRecipe(("title",)), progress=False)
    split = leave_one_out(events, items=items, max_users=1200, seed=0)
    rec = FusionRecommender(
        vectors.aligned(split.item_ids),
        FusionConfig(content_dim=vectors.dim, hidden=32, max_len=50),
        TrainConfig(epochs=15, lr=3e-3, warmup_steps=20, progress=False),
        item_ids=split.item_ids, item_market=split.item_market, item_products=_products(items, split), vectors_version=vectors.version,
    ).fit(split.train)
    root = tmp_path_factory.mktemp("serving")
    ckpt = rec.save(root / "model.pt")
    store = open_store("edge", path=root / "store", schema=CollectionSchema(text_dim=vectors.dim,
                       image_dim=vectors.dim, fused_dim=vectors.dim))
    rows = items.to_list()
    store.upsert([Point(r["item_id"], {"fused": vectors.vectors[i], "text": vectors.vectors[i]},
                        {"product_id": r["product_id"], "language": r["language"], "market": r["market"],
                         "category": r["category"], "in_stock": True, "title": r["title"]})
                  for i, r in enumerate(rows)])
    by_id = {r["item_id"]: r for r in rows}
    yield {"store": store, "ckpt": ckpt, "vectors": vectors, "by_id": by_id, "rec": rec}
    store.close()


@pytest.fixture(scope="module")
def ranker(world):
    from mmrec.serving.two_stage import TwoStageRecommender

    return TwoStageRecommender.from_checkpoint(world["ckpt"], world["store"],
                                               expect_vectors_version=world["vectors"].version)


def _subgroup(world, item_id: str) -> str:
    return world["by_id"][item_id]["category"].split("/")[1]


def _listing(world, product_id: str, market: str) -> str:
    return next(i for i, r in world["by_id"].items() if r["product_id"] == product_id and r["market"] == market)


def _items_of(world, subgroup: str, market: str, n: int) -> list[str]:
    out = [i for i, r in world["by_id"].items() if r["market"] == market and r["category"].endswith("/" + subgroup)]
    return sorted(out)[:n]


def test_one_item_history_gets_same_subgroup_products(world, ranker):
    """A new shopper with one product viewed: most results are the same kind of product (the simulation's
    shoppers stay in a subgroup 70% of the time), far above the subgroup's share of the catalog. Every
    product of four subgroups is tried as the one-item history."""
    shares, base = [], []
    for subgroup in ("food-fruit", "sport", "clothing", "household"):
        for seed in _items_of(world, subgroup, "US", 12):
            recs, used = ranker.recommend([seed], k=10, market="US")
            assert used == [seed] and len(recs) == 10
            assert all(r.reasons and r.reasons[0][0] == seed for r in recs)
            shares.append(np.mean([_subgroup(world, r.item_id) == subgroup for r in recs]))
        base.append(np.mean([r["category"].endswith("/" + subgroup) for r in world["by_id"].values()]))
    assert np.mean(shares) >= 0.5, shares
    assert np.mean(shares) >= 5 * np.mean(base)


def test_market_filter_restricts_and_crosses_languages(world, ranker):
    """A history of German listings, shown in the Japanese storefront: only JP listings come back, and
    they are the same kind of products (the content space is cross-lingual)."""
    history = _items_of(world, "food-fruit", "DE", 3)
    recs, _ = ranker.recommend(history, k=10, filter=Filter(markets=("JP",)))
    assert len(recs) == 10
    assert {world["by_id"][r.item_id]["market"] for r in recs} == {"JP"}
    assert np.mean([_subgroup(world, r.item_id) == "food-fruit" for r in recs]) >= 0.5
    # the same history without a filter stays mostly in the shopper's own market
    recs_de, _ = ranker.recommend(history, k=10)
    assert Counter(world["by_id"][r.item_id]["market"] for r in recs_de).most_common(1)[0][0] == "DE"


def test_history_products_are_not_recommended_in_any_language(world, ranker):
    history = _items_of(world, "sport", "US", 4)
    products = {world["by_id"][i]["product_id"] for i in history}
    recs, _ = ranker.recommend(history, k=20, market="FR")
    assert recs and not {world["by_id"][r.item_id]["product_id"] for r in recs} & products
    assert len({world["by_id"][r.item_id]["product_id"] for r in recs}) == len(recs)  # one slot per product


def test_a_new_event_changes_the_next_recommendation(world, ranker):
    """Real time: the same shopper, one more event on a different kind of product, and the next page
    follows it."""
    history = _items_of(world, "food-fruit", "US", 3)
    before, _ = ranker.recommend(history, k=10, market="US")
    assert sum(_subgroup(world, r.item_id) == "sport" for r in before) == 0
    ball = _listing(world, "emoji:26bd", "US")  # soccer ball
    after, used = ranker.recommend(history + [ball], k=10, market="US")
    assert used[0] == ball
    assert sum(_subgroup(world, r.item_id) == "sport" for r in after) >= 3
    assert [r.item_id for r in after] != [r.item_id for r in before]


def test_a_product_upserted_a_second_ago_is_retrieved_and_ranked(world, ranker):
    """Cold start: products with no events and no ID embedding come back through their content, where
    they fit the history: a new grape product follows grapes; a new football does not."""
    from encoders.text import load_text_encoder

    store = world["store"]
    enc = load_text_encoder("use-m3")
    new = {"new:grapes-bio:de": "Bio-Weintrauben, frisch und süß",  # organic grapes, fresh and sweet
           "new:football:de": "Fußball aus Leder"}  # leather football
    vecs = enc.encode(list(new.values()))
    store.upsert([Point(item_id, {"fused": v, "text": v},
                        {"product_id": item_id.rsplit(":", 1)[0], "language": "de", "market": "DE", "in_stock": True,
                         "title": title})
                  for (item_id, title), v in zip(new.items(), vecs)])
    try:
        assert not set(new) & set(ranker.ids_of)  # the model has never seen them
        grapes = _listing(world, "emoji:1f347", "DE")
        recs, _ = ranker.recommend([grapes], k=30, market="DE")  # 30 of the 479 DE listings
        ids = [r.item_id for r in recs]
        assert "new:grapes-bio:de" in ids, [world["by_id"].get(i, {}).get("title", i) for i in ids]
        assert "new:football:de" not in ids
        hit = recs[ids.index("new:grapes-bio:de")]
        assert np.isfinite(hit.score) and hit.reasons[0][0] == grapes
        ball = _listing(world, "emoji:26bd", "DE")
        recs, _ = ranker.recommend([ball], k=30, market="DE")
        ids = [r.item_id for r in recs]
        assert "new:football:de" in ids and "new:grapes-bio:de" not in ids
    finally:
        store.delete(list(new))


def test_deleted_and_unknown_history_items_drop_out(world, ranker):
    recs, used = ranker.recommend(["no-such-item"], k=5)
    assert recs == [] and used == []
    seed = _items_of(world, "clothing", "FR", 1)[0]
    recs, used = ranker.recommend(["no-such-item", seed], k=5)
    assert used == [seed] and len(recs) == 5


def test_checkpoint_refuses_other_item_vectors(world):
    from mmrec.errors import UserError
    from mmrec.serving.two_stage import TwoStageRecommender

    with pytest.raises(UserError, match="trained on vector space"):
        TwoStageRecommender.from_checkpoint(world["ckpt"], world["store"], expect_vectors_version="0123456789abcdef")


def test_cold_offset_lifts_new_products_and_only_them(world, ranker):
    """ServingConfig.cold_offset is the shop's new-arrival boost: items without an ID move up by exactly
    the offset, known items keep their scores."""
    from encoders.text import load_text_encoder

    from mmrec.serving.two_stage import ServingConfig, TwoStageRecommender

    store = world["store"]
    vec = load_text_encoder("use-m3").encode(["Bio-Weintrauben, frisch und süß"])[0]
    store.upsert([Point("new:grapes-bio:de", {"fused": vec, "text": vec},
                        {"product_id": "new:grapes-bio", "language": "de", "market": "DE", "in_stock": True})])
    try:
        grapes = _listing(world, "emoji:1f347", "DE")
        plain, _ = ranker.recommend([grapes], k=50, market="DE")
        boosted_ranker = TwoStageRecommender(ranker.model, list(ranker.ids_of), store,
                                             ServingConfig(cold_offset=100.0), id_key=ranker.id_key)
        boosted, _ = boosted_ranker.recommend([grapes], k=50, market="DE")
        before = {r.item_id: r.score for r in plain}
        by_id = {r.item_id: r for r in boosted}
        assert abs(by_id["new:grapes-bio:de"].score - before["new:grapes-bio:de"] - 100.0) < 1e-3
        cold = {r.item_id for r in boosted if _model_id(ranker, r) == 0}
        assert boosted[0].item_id in cold  # every item without an ID now outranks the known ones
        for r in boosted:
            if r.item_id in before:
                assert abs(r.score - before[r.item_id] - (100.0 if r.item_id in cold else 0.0)) < 1e-3
    finally:
        store.delete(["new:grapes-bio:de"])


def _model_id(ranker, rec) -> int:
    key = rec.payload.get("product_id") or rec.item_id if ranker.id_key == "product" else rec.item_id
    return ranker.ids_of.get(str(key), 0)

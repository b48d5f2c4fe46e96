"""The runner and the non-neural baselines on real MovieLens-100k / emoji-market events."""
from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation import metrics as M
from evaluation.baselines import ContentKNN, ItemKNN, Popularity
from evaluation.protocol import Recommender, evaluate, tie_order, top_k
from evaluation import Histories, cold_start_split, cross_market_split, leave_one_out


@pytest.fixture(scope="module")
def ml100k():
    from mmrec.data.datasets import load

    return load("ml-100k")


@pytest.fixture(scope="module")
def loo(ml100k):
    return leave_one_out(ml100k.events, items=ml100k.items)


@pytest.fixture(scope="module")
def genre_vectors(ml100k, loo):
    """Real content vectors for ML-100k: each movie's genres, one-hot (aligned with the split's items)."""
    cats = ml100k.items["category"]
    genres = sorted({g for c in cats if c for g in c.split("|")})
    vecs = np.zeros((loo.n_items, len(genres)), dtype=np.float32)
    for i, c in enumerate(cats):
        for g in (c or "").split("|"):
            if g:
                vecs[i, genres.index(g)] = 1.0
    return vecs


def test_top_k_exclusion_and_candidates():
    scores = np.array([[0.5, 0.9, 0.8, 0.1, 0.7], [1.0, 2.0, 3.0, 4.0, 5.0]])
    rec = top_k(scores.copy(), 3)
    np.testing.assert_array_equal(rec.items, [[1, 2, 4], [4, 3, 2]])
    np.testing.assert_array_equal(rec.scores, [[0.9, 0.8, 0.7], [5.0, 4.0, 3.0]])
    rec = top_k(scores.copy(), 3, histories=[[2], [4, 3]])
    np.testing.assert_array_equal(rec.items, [[1, 4, 0], [2, 1, 0]])
    rec = top_k(scores.copy(), 3, histories=[[2], [4]], candidates=np.array([2, 4]))
    np.testing.assert_array_equal(rec.items, [[4, -1, -1], [2, -1, -1]])  # fewer candidates than k
    assert np.isneginf(rec.scores[0, 1])
    rec = top_k(np.array([[np.nan, 1.0, 0.0]]), 2)
    np.testing.assert_array_equal(rec.items, [[1, 2]])


def test_top_k_breaks_ties_by_a_seeded_random_order_not_by_index():
    n = 1000
    rec = top_k(np.zeros((2, n)), 10)
    order = tie_order(n)
    np.testing.assert_array_equal(rec.items[0], order[:10])
    np.testing.assert_array_equal(rec.items[0], rec.items[1])  # deterministic
    assert rec.items[0].tolist() != list(range(10))
    # Ties among candidates follow the same order; strictly larger scores still come first.
    scores = np.zeros((1, n))
    scores[0, 999] = 1.0
    cands = np.array([3, 999, 5, 7, 500])
    rec = top_k(scores, 5, candidates=cands)
    rank = {int(x): r for r, x in enumerate(order)}
    assert rec.items[0, 0] == 999
    assert rec.items[0, 1:].tolist() == sorted([3, 5, 7, 500], key=rank.get)


def test_runner_popularity_matches_hand_scoring(loo):
    pop = Popularity()
    assert isinstance(pop, Recommender)
    res = evaluate(pop, loo, ks=(5, 10), progress=False)
    counts = np.bincount(loo.train.item, minlength=loo.n_items)
    rank = np.empty(loo.n_items, dtype=np.int64)
    rank[tie_order(loo.n_items)] = np.arange(loo.n_items)
    order = np.lexsort((rank, -counts))  # most popular first, ties in the shared tie order
    for i in range(0, len(loo.test), 37):
        seen = set(loo.test.histories[i].tolist())
        expected = [int(x) for x in order if x not in seen][:10]
        assert res.recommendations[i].tolist() == expected
        target = {int(loo.test.targets(i)[0])}
        assert res.per_case["ndcg@10"][i] == M.ndcg_at_k(expected, target, 10)
        assert res.per_case["recall@5"][i] == M.recall_at_k(expected, target, 5)
    assert res.n_cases == len(loo.test) and res.fit_seconds is not None
    assert 0 < res.beyond["coverage@10"] < 0.1  # everyone gets nearly the same bestsellers


def test_seen_items_are_excluded_unless_asked(loo):
    knn = ItemKNN().fit(loo.train)
    rec = knn.recommend(loo.test.histories.subset(np.arange(50)), 20)
    for i in range(50):
        assert not set(rec.items[i].tolist()) & set(loo.test.histories[i].tolist())
    rec_all = knn.recommend(loo.test.histories.subset(np.arange(50)), 20, exclude_seen=False)
    overlap = sum(len(set(rec_all.items[i].tolist()) & set(loo.test.histories[i].tolist())) for i in range(50))
    assert overlap > 0


def test_itemknn_beats_popularity_on_ml100k(loo):
    pop = evaluate(Popularity(), loo, ks=(10,), progress=False)
    knn = evaluate(ItemKNN(history_window=20), loo, ks=(10,), progress=False)
    assert knn.mean("ndcg@10") > pop.mean("ndcg@10")
    np.testing.assert_array_equal(knn.users, pop.users)  # same cases -> pairable


def test_content_knn_reaches_cold_items_itemknn_cannot(ml100k, genre_vectors):
    split = cold_start_split(ml100k.events, items=ml100k.items, cold_fraction=0.15, candidates="cold")
    content = evaluate(ContentKNN(genre_vectors), split, ks=(10,), item_vectors=genre_vectors, progress=False)
    knn = evaluate(ItemKNN(), split, ks=(10,), progress=False)
    # Item-kNN has no co-occurrence for a cold item: all its scores tie at 0, so its order is the random
    # tie order (chance level). Content-kNN ranks by genre similarity: it must beat chance.
    assert content.mean("ndcg@10") > knn.mean("ndcg@10")
    assert 0 <= content.beyond["diversity@10"] <= 1
    assert set(content.segments["target_popularity"]) == {"cold"}
    with pytest.raises(ValueError, match="align the vectors"):
        ContentKNN(genre_vectors[:-1]).fit(split.train)


def test_content_knn_max_aggregate_and_window(loo, genre_vectors):
    h = Histories.from_lists([[0, 1, 2], [5]])
    mean = ContentKNN(genre_vectors).fit(loo.train).recommend(h, 5)
    mx = ContentKNN(genre_vectors, aggregate="max", history_window=1).fit(loo.train).recommend(h, 5)
    assert mean.items.shape == mx.items.shape == (2, 5)
    # With a window of 1 and max aggregation the best match is an item with the same genres as item 2.
    best = mx.items[0, 0]
    assert np.array_equal(genre_vectors[best] > 0, genre_vectors[2] > 0)


def test_popularity_per_market(ml100k):
    from mmrec.data.datasets import load

    market = load("emoji-market")  # shopper SIMULATION
    split = cross_market_split(market.events, items=market.items)
    glob = evaluate(Popularity(), split, ks=(10,), progress=False)
    local = evaluate(Popularity(by_market=True), split, ks=(10,), progress=False)
    # Per-market popularity must recommend items listed in the request's market first.
    mk = split.item_market
    for i in range(0, len(split.test), 25):
        assert mk[local.recommendations[i, 0]] == split.test.target_market[i]
    assert local.mean("ndcg@10") > glob.mean("ndcg@10")
    assert "target_market" in local.segments


def test_evaluate_rejects_missing_valid_and_wrong_shapes(loo):
    class Broken:
        name = "broken"

        def fit(self, train, valid=None):
            return self

        def recommend(self, histories, k, exclude_seen=True, candidates=None):
            return np.zeros((len(histories), k - 1), dtype=np.int64), None

    with pytest.raises(ValueError, match="shape"):
        evaluate(Broken(), loo, progress=False)
    with pytest.raises(ValueError):
        evaluate(Popularity(), loo, on="train", progress=False)


def test_results_are_json_safe(loo):
    res = evaluate(Popularity(), loo, ks=(10,), progress=False)
    json.dumps(res.summary())

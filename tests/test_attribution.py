"""Leave-one-out reasons (mmrec.model.attribution): the batched attribution equals scoring each history
without one item explicitly, and sequential deletion equals removing the reasons one by one explicitly,
through `FusionRecommender`, the two-stage serving path and the content-based `CatalogStore` rule. Small
random models (weights drawn large enough that every feature matters)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation import Histories
from index.store import average_vector_query
from mmrec.data.schema import Event
from mmrec.model.attribution import leave_one_out_rows, sequential_reasons, top_reasons, window_items, without_items
from mmrec.model.transformer import FusionConfig, FusionTransformer

MARKETS = ("DE", "JP", "US")


def _random_model(cfg: FusionConfig, seed: int = 0) -> FusionTransformer:
    torch.manual_seed(seed)
    model = FusionTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def _recommender(n_items: int = 14, max_len: int = 6):
    from mmrec.model import FusionRecommender

    rng = np.random.default_rng(0)
    cfg = FusionConfig(content_dim=8, n_ids=6, markets=MARKETS, hidden=16, n_layers=2, n_heads=2, max_len=max_len,
                       dropout=0.0)
    item_ids = np.array([f"i{j}" for j in range(n_items)], dtype=object)
    rec = FusionRecommender(rng.normal(size=(n_items, 8)).astype(np.float32), cfg, item_ids=item_ids,
                            item_market=np.array([MARKETS[j % 3] for j in range(n_items)], dtype=object))
    rec.model_ = _random_model(cfg)
    rec.id_items_ = [f"i{j}" for j in range(6)]  # i0..i5 warm, the rest cold (content only)
    return rec


def _histories(context: bool) -> Histories:
    rows = [
        [3, 1, 3, 7, 2, 9, 3, 11, 4],  # longer than max_len (6): item 1 is outside the window
        [5, 5, 5, 8],  # a funnel on one item, then another
        [12],  # one item: removing it leaves nothing
        [0, 6, 10, 13, 2],
    ]
    rng = np.random.default_rng(1)
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    n = int(indptr[-1])
    ts = np.concatenate([np.sort(rng.integers(0, 10**6, len(r))) for r in rows]).astype(np.int64)
    kinds = np.array(["view", "click", "cart", "purchase"], dtype=object)[rng.integers(0, 4, n)]
    markets = np.array(MARKETS, dtype=object)[rng.integers(0, 3, n)]
    return Histories(indptr=indptr, items=np.concatenate(rows).astype(np.int64), timestamps=ts, markets=markets,
                     kinds=kinds, users=np.full(len(rows), -1, np.int64),
                     context_market=np.array(["JP", None, "US", "DE"], dtype=object) if context else None)


def _explicit_logp(rec, h: Histories, row: int, removed, targets: np.ndarray) -> np.ndarray:
    """log p(targets) for row ``row`` of ``h`` without any event of the item(s) ``removed``: a separate
    one-row request, its scores over every item outside the row's history (+ the cold offset), softmax."""
    start, end = int(h.indptr[row]), int(h.indptr[row + 1])
    keep = start + np.flatnonzero(~np.isin(h.items[start:end], np.atleast_1d(removed)))
    sub = Histories(indptr=np.array([0, len(keep)]), items=h.items[keep], timestamps=h.timestamps[keep],
                    markets=h.markets[keep], kinds=h.kinds[keep], users=h.users[[row]],
                    context_market=None if h.context_market is None else h.context_market[[row]])
    u = rec.user_vectors(sub)[0].astype(np.float64)
    cands = np.setdiff1d(np.arange(len(rec.item_vectors)), h[row])
    scores = rec.item_matrix()[cands].astype(np.float64) @ u
    scores += rec.cold_offset * (rec._item_side().ids.numpy()[cands] == 0)
    log_z = np.log(np.exp(scores - scores.max()).sum()) + scores.max()
    return scores[np.searchsorted(cands, targets)] - log_z


TARGETS = np.array([[0, 5, 6], [1, 2, 13], [3, 5, 7], [8, 11, 12]])  # never in the row's history


def test_leave_one_out_rows_remove_every_event_of_an_item():
    assert window_items(["a", "b", "a", "c", "d", "a", "e"], 4) == ["e", "a", "d", "c"]  # newest first
    assert window_items([1, 1, 1], 2) == [1]
    h = Histories.from_lists([[1, 2, 1, 3], [4]])
    red = without_items(h, [[1], [2, 3], [4]], [0, 0, 1])
    assert [red.histories[i].tolist() for i in range(3)] == [[2, 3], [1, 1], []]
    stacked = leave_one_out_rows(h, max_len=10)
    assert stacked.owner.tolist() == [0, 0, 0, 1] and [r.tolist() for r in stacked.removed] == [[3], [1], [2], [4]]


def test_top_reasons_are_positive_and_sorted():
    assert top_reasons(["a", "b", "c", "d"], np.array([0.2, -1.0, 0.5, 0.2]), 3) == [("c", 0.5), ("a", 0.2), ("d", 0.2)]
    assert top_reasons(["a"], np.array([-0.1]), 2) == []


@pytest.mark.parametrize("context,cold_offset", [(False, 0.0), (True, 0.0), (True, 2.0)])
def test_batched_attribution_equals_explicit_leave_one_out(context, cold_offset):
    rec = _recommender()
    rec.cold_offset = cold_offset
    h = _histories(context)
    out = rec.attributions(h, TARGETS)
    for b, (items, values) in enumerate(out):
        assert list(items) == window_items(h[b], rec.model_.cfg.max_len + 1)  # + the gap's previous event
        full = _explicit_logp(rec, h, b, [], TARGETS[b])
        for u, item in enumerate(items):
            explicit = full - _explicit_logp(rec, h, b, int(item), TARGETS[b])
            np.testing.assert_allclose(values[u], explicit, rtol=1e-4, atol=1e-4)
        assert np.abs(values).max() > 1e-2  # the features matter: not a vacuous match of zeros
    # the one-item history: the empty history makes every candidate equally likely
    n_cands = len(rec.item_vectors) - 1
    if not cold_offset:
        np.testing.assert_allclose(out[2][1][0], _explicit_logp(rec, h, 2, [], TARGETS[2]) + np.log(n_cands), atol=1e-5)
    # an item only outside the window changes nothing, and gets no row
    assert 1 not in out[0][0]
    np.testing.assert_allclose(_explicit_logp(rec, h, 0, 1, TARGETS[0]), _explicit_logp(rec, h, 0, [], TARGETS[0]),
                               atol=1e-5)


def test_raw_score_attribution_would_name_the_same_item_for_every_result():
    """Why log-probabilities: a removal that lowers every candidate's score alike moves no rank. Its
    raw-score drop is the same for every result; its log-probability drop is 0."""
    from mmrec.model.attribution import log_probabilities

    rng = np.random.default_rng(0)
    cands, u = rng.normal(size=(20, 4)), rng.normal(size=4)
    shift = np.ones(20) * 3.0  # as if the removal lowered every score by 3
    full = log_probabilities(u[None], cands, np.arange(5))
    after = log_probabilities(u[None], cands, np.arange(5), bias=-shift)
    np.testing.assert_allclose(full - after, 0.0, atol=1e-12)


def _explicit_sequential(score_without, items: list, full: float, n: int) -> list[tuple]:
    """Reference: remove the best item, then the best of the rest given that, ... (one request each)."""
    gone, current, out = [], full, []
    for _ in range(n):
        rest = [x for x in items if x not in gone]
        if not rest:
            break
        after = [score_without(gone + [x]) for x in rest]
        j = int(np.argmax([current - a for a in after]))
        if current - after[j] <= 0:
            break
        out.append((rest[j], current - after[j]))
        gone, current = gone + [rest[j]], after[j]
    return sorted(out, key=lambda r: -r[1])


def test_explain_equals_explicit_sequential_deletion():
    rec = _recommender()
    h = _histories(True)
    reasons = rec.explain(h, TARGETS, n_reasons=3)
    loo = rec.attributions(h, TARGETS)
    n_multi = 0
    for b in range(len(h)):
        items = [int(x) for x in window_items(h[b], rec.model_.cfg.max_len + 1)]
        for k, t in enumerate(TARGETS[b]):
            def value_without(gone: list) -> float:
                return float(_explicit_logp(rec, h, b, gone, np.array([t]))[0])

            full = value_without([])
            expected = _explicit_sequential(value_without, items, full, 3)
            got = reasons[b][k]
            assert [i for i, _ in got] == [i for i, _ in expected]
            np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-4, atol=1e-4)
            if got:  # the leave-one-out top item is always among them (it is the first one removed)
                assert top_reasons(loo[b][0].tolist(), loo[b][1][:, k], 1)[0][0] in [i for i, _ in got]
                # the values add up to the drop of removing all the reasons together
                np.testing.assert_allclose(sum(v for _, v in got), full - value_without([i for i, _ in got]),
                                           rtol=1e-4, atol=1e-4)
            n_multi += len(got) >= 2
    assert n_multi >= 3  # not a vacuous test


def test_sequential_deletion_finds_redundant_evidence():
    """a and b stand in for each other (either alone keeps most of their part of the score), d counts on
    its own. Leave-one-out top-2 names b and d; sequential deletion removes b, then sees that a now
    carries everything b did, and names a: together a larger drop, which the values add up to."""
    part_ab = {frozenset(): 1.0, frozenset("a"): 0.6, frozenset("b"): 0.55, frozenset("ab"): 0.0}

    def score(gone: set) -> float:
        return part_ab[frozenset(gone & {"a", "b"})] + (0.0 if "d" in gone else 0.42)

    def users_without(owner, sets):
        return np.array([[score(set(s))] for s in sets])

    items, full = [["a", "b", "d"]], score(set())
    loo = np.array([full - score({x}) for x in items[0]])
    assert [x for x, _ in top_reasons(items[0], loo, 2)] == ["b", "d"]
    got = sequential_reasons(items, np.array([[full]]), lambda b, users: users, users_without, 2)[0][0]
    assert [x for x, _ in got] == ["a", "b"]
    np.testing.assert_allclose([v for _, v in got], [0.55, 0.45])
    assert full - score({"a", "b"}) > full - score({"b", "d"})
    # nothing lowers the score: no reasons at all
    assert sequential_reasons(items, np.array([[1.0]]), lambda b, users: users,
                              lambda o, s: np.ones((len(s), 1)), 2) == [[[]]]


def test_content_based_reasons_equal_explicit_leave_one_out():
    from mmrec.store.catalog_store import leave_one_out_reasons

    rng = np.random.default_rng(0)
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    hist, negs, result = unit(rng.normal(size=(5, 6))), unit(rng.normal(size=(2, 6))), unit(rng.normal(size=6))

    def cos(q: np.ndarray) -> float:
        return float(q @ result / np.linalg.norm(q))

    for neg in (None, negs):
        drops = leave_one_out_reasons(hist, neg, result)
        full = cos(average_vector_query(hist, neg))
        explicit = [full - cos(average_vector_query(np.delete(hist, i, axis=0), neg)) for i in range(len(hist))]
        np.testing.assert_allclose(drops, explicit, atol=1e-12)
    np.testing.assert_allclose(leave_one_out_reasons(hist[:1], None, result), [hist[0] @ result])


# ------------------------------------------------------------------------------------------------------
# The two-stage serving path


@pytest.fixture(scope="module")
def small_ranker(tmp_path_factory):
    from index import CollectionSchema, Point, open_store
    from mmrec.serving.two_stage import ServingConfig, TwoStageRecommender

    rng = np.random.default_rng(0)
    dim, n = 8, 30
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = open_store("edge", path=tmp_path_factory.mktemp("attr") / "store",
                       schema=CollectionSchema(text_dim=dim, image_dim=dim, fused_dim=dim))
    store.upsert([Point(f"p{j}:{MARKETS[j % 3].lower()}", {"fused": vectors[j]},
                        {"product_id": f"p{j}", "market": MARKETS[j % 3], "in_stock": True}) for j in range(n)])
    cfg = FusionConfig(content_dim=dim, n_ids=10, markets=MARKETS, hidden=16, n_layers=2, max_len=5, dropout=0.0)
    model = _random_model(cfg, seed=3)
    ranker = TwoStageRecommender(model, [f"p{j}:{MARKETS[j % 3].lower()}" for j in range(10)], store,
                                 ServingConfig(n_retrieve=30, n_reasons=10))
    yield ranker
    store.close()


def _item(j: int) -> str:
    return f"p{j}:{MARKETS[j % 3].lower()}"


@pytest.mark.parametrize("mode", ["leave_one_out", "sequential"])
def test_serving_reasons_equal_explicit_deletion(small_ranker, mode):
    from mmrec.serving.two_stage import ServingConfig, TwoStageRecommender

    ranker = TwoStageRecommender(small_ranker.model, list(small_ranker.ids_of), small_ranker.store,
                                 ServingConfig(n_retrieve=30, n_reasons=3 if mode == "sequential" else 10, reasons=mode))
    history = [Event("u", _item(j), t, kind, market=m) for j, t, kind, m in [
        (1, 100, "view", "DE"), (4, 160, "click", "JP"), (1, 170, "cart", "DE"), (12, 4000, "view", None),
        (7, 4100, "purchase", "US"), (4, 9000, "view", None), (20, 9100, "click", "JP")]]
    for market in (None, "JP"):
        recs, used = ranker.recommend(history, k=5, market=market)
        assert len(recs) == 5
        points = {p.item_id: p for p in ranker.store.get(used, with_vectors=True)}
        u, _, _ = ranker.user_vector(history, points, market)
        # the candidates the results were ranked among: every stored listing outside the history's
        # products (n_retrieve covers the whole store), in the storefront's market when one is given
        seen = {_item(j).split(":")[0] for j in (1, 4, 7, 12, 20)}
        cands = [_item(j) for j in range(30) if f"p{j}" not in seen and (market is None or MARKETS[j % 3] == market)]
        with torch.no_grad():
            table = ranker.model.item_table(*ranker._items(ranker.store.get(cands, with_vectors=True))).double()
        for r in recs:
            at = cands.index(r.item_id)
            assert abs(float(table[at] @ u.double()) - r.score) < 1e-4

            def score_without(gone: list[str], at: int = at, market: str | None = market) -> float:
                reduced = [e for e in history if e.item_id not in gone]
                with torch.no_grad():
                    without = ranker.user_vector(reduced, points, market)[0] if reduced else torch.zeros_like(u)
                return float(torch.log_softmax(table @ without.double(), 0)[at])

            full = score_without([])
            window = used  # all 5 history items are in the window (max_len 5 events: 7 events, 5 items)
            if mode == "sequential":
                expected = _explicit_sequential(score_without, window, full, 3)
            else:
                explicit = {item: full - score_without([item]) for item in window}
                expected = [(i, v) for i, v in sorted(explicit.items(), key=lambda x: -x[1]) if v > 0][:10]
            assert [i for i, _ in r.reasons] == [i for i, _ in expected]
            np.testing.assert_allclose([v for _, v in r.reasons], [v for _, v in expected], rtol=1e-4, atol=1e-4)


def test_serving_cosine_reasons_stay_available(small_ranker):
    from mmrec.serving.two_stage import ServingConfig, TwoStageRecommender

    cos = TwoStageRecommender(small_ranker.model, list(small_ranker.ids_of), small_ranker.store,
                              ServingConfig(n_retrieve=30, reasons="cosine"))
    history = [_item(1), _item(4), _item(7)]
    a, _ = cos.recommend(history, k=4)
    b, _ = small_ranker.recommend(history, k=4)
    assert all(v > 0 for r in b for _, v in r.reasons)
    assert [r.item_id for r in a] == [r.item_id for r in b]  # reasons never change the ranking
    assert all(len(r.reasons) == 2 and -1 <= r.reasons[0][1] <= 1 for r in a)
    with pytest.raises(ValueError, match="reasons"):
        TwoStageRecommender(small_ranker.model, [], small_ranker.store, ServingConfig(reasons="shap"))

"""Exploration for new items (mmrec.serving.exploration): the model's top k when off, a bounded share of
slots when on, seeded, and in a closed loop new items are shown while their clicks justify it."""
from __future__ import annotations

import numpy as np
import pytest

from mmrec.serving.exploration import ExplorationConfig, ExplorationPolicy


def _candidates(n: int = 30, n_new: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = np.sort(rng.normal(size=n))[::-1].copy()
    impressions = np.full(n, 5000.0)
    clicks = impressions * 0.05
    new = rng.choice(np.arange(10, n), n_new, replace=False)
    impressions[new], clicks[new] = 0, 0
    return scores, impressions, clicks, new


def test_off_or_without_new_items_it_is_the_model_top_k():
    scores, impressions, clicks, _ = _candidates()
    top = np.argsort(-scores, kind="stable")[:10]
    page = ExplorationPolicy(ExplorationConfig(enabled=False)).select(scores, impressions, clicks, 10)
    assert page.slots.tolist() == top.tolist() and not page.explored.any()
    page = ExplorationPolicy(ExplorationConfig(enabled=True)).select(scores, np.full(30, 9e3), np.full(30, 10.0), 10)
    assert page.slots.tolist() == top.tolist() and not page.explored.any()
    page = ExplorationPolicy(ExplorationConfig(enabled=True, max_share=0.2)).select(scores, impressions, clicks, 4)
    assert not page.explored.any()  # floor(0.2 * 4) = 0 slots


def test_bounded_share_only_new_items_seeded():
    scores, impressions, clicks, new = _candidates()
    cfg = ExplorationConfig(enabled=True, max_share=0.3, base_ctr=0.05)
    top = np.argsort(-scores, kind="stable")[:10]
    explored_total = 0
    for seed in range(200):
        page = ExplorationPolicy(cfg).select(scores, impressions, clicks, 10, np.random.default_rng(seed))
        assert len(page.slots) == 10 and len(set(page.slots.tolist())) == 10
        assert page.explored.sum() <= 3
        assert set(page.slots[page.explored].tolist()) <= set(new.tolist())
        assert page.slots[~page.explored].tolist() == [j for j in top if j in page.slots[~page.explored]]
        assert page.slots[~page.explored].tolist() == top[: (~page.explored).sum()].tolist()  # bottom slots go
        explored_total += int(page.explored.sum())
        again = ExplorationPolicy(cfg).select(scores, impressions, clicks, 10, np.random.default_rng(seed))
        assert again.slots.tolist() == page.slots.tolist()
    assert explored_total > 0


def test_prior_follows_the_model_score():
    """Two new items, no impressions yet: the one the model scores higher is explored more often."""
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.5, -3.0])
    impressions = np.array([1e4, 1e4, 1e4, 1e4, 0, 0])
    clicks = impressions * 0.05
    policy = ExplorationPolicy(ExplorationConfig(enabled=True, max_share=0.5, seed=1))
    shown = np.zeros(6)
    for _ in range(500):
        page = policy.select(scores, impressions, clicks, 2)
        shown[page.slots[page.explored]] += 1
    assert shown[4] > 3 * max(shown[5], 1)
    mu = policy.prior_means(scores, impressions, clicks, s_ref=4.0)
    assert mu[4] < mu[1] < mu[0] and abs(mu[1] - 0.05) < 0.01  # the last slot's prior = the pooled CTR


def test_closed_loop_good_new_items_graduate_bad_ones_fade():
    """A simulated shop: 20 established items (CTR ~5%), 3 new ones the model scores just below the page:
    one truly good (CTR 15%), two bad (1%). Clicks follow the true CTRs. The good item earns its way to
    `new_below` impressions quickly; the bad ones stop being shown after few impressions; no page ever
    has more than its share of explored slots."""
    rng = np.random.default_rng(0)
    k, n_est = 5, 20
    true_ctr = np.r_[np.linspace(0.07, 0.03, n_est), 0.15, 0.01, 0.01]
    scores = np.r_[np.linspace(3.0, 0.0, n_est), 1.9, 1.9, 1.9]  # new items score like the 6th-8th items
    impressions = np.r_[np.full(n_est, 20_000.0), 0, 0, 0]
    clicks = np.round(impressions * true_ctr)
    cfg = ExplorationConfig(enabled=True, max_share=0.2, new_below=300, seed=0)
    policy = ExplorationPolicy(cfg)
    explored = 0
    for _ in range(3000):
        page = policy.select(scores, impressions, clicks, k)
        assert page.explored.sum() <= 1
        explored += int(page.explored.sum())
        shown = page.slots
        impressions[shown] += 1
        clicks[shown] += rng.random(len(shown)) < true_ctr[shown]
    good, bad = n_est, [n_est + 1, n_est + 2]
    assert impressions[good] >= cfg.new_below  # graduated
    assert max(impressions[bad]) < 150, impressions[bad]
    assert explored <= 3000  # at most one slot of five per page


def test_config_is_validated():
    with pytest.raises(ValueError):
        ExplorationConfig(max_share=1.5)
    with pytest.raises(ValueError):
        ExplorationConfig(base_ctr=0.0)
    with pytest.raises(ValueError):
        ExplorationPolicy(ExplorationConfig(enabled=True)).select(np.zeros(3), np.zeros(2), np.zeros(3), 2)


def test_two_stage_explores_only_with_counts_and_within_its_share(tmp_path):
    """The serving path: without impression counts (or disabled) the page is the model's; with counts,
    new items (no impressions) may take at most floor(max_share * k) of its slots, seeded per request."""
    import torch

    from index import CollectionSchema, Point, open_store
    from mmrec.model.transformer import FusionConfig, FusionTransformer
    from mmrec.serving.two_stage import ServingConfig, TwoStageRecommender

    rng = np.random.default_rng(0)
    dim, n = 8, 40
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    store = open_store("edge", path=tmp_path / "store", schema=CollectionSchema(text_dim=dim, image_dim=dim, fused_dim=dim))
    store.upsert([Point(f"i{j}", {"fused": vectors[j] / np.linalg.norm(vectors[j])}, {"product_id": f"i{j}", "in_stock": True})
                  for j in range(n)])
    torch.manual_seed(0)
    model = FusionTransformer(FusionConfig(content_dim=dim, n_ids=20, hidden=16, max_len=10, dropout=0.0)).eval()
    warm = [f"i{j}" for j in range(20)]  # i20..i39 are new: no ID, no impressions

    def counts(ids):
        impressions = np.array([5000.0 if int(i[1:]) < 20 else 0.0 for i in ids])
        return impressions, impressions * 0.05

    history = ["i1", "i2", "i3"]
    plain, _ = TwoStageRecommender(model, warm, store).recommend(history, k=10)
    assert not any(r.explored for r in plain)
    off = TwoStageRecommender(model, warm, store, item_counts=counts)  # counts given, exploration disabled
    assert [r.item_id for r in off.recommend(history, k=10)[0]] == [r.item_id for r in plain]
    cfg = ServingConfig(exploration=ExplorationConfig(enabled=True, max_share=0.2, base_ctr=0.05))
    on = TwoStageRecommender(model, warm, store, cfg, item_counts=counts)
    ranked = [r.item_id for r in plain]
    changed = 0
    for seed in range(30):
        page, _ = on.recommend(history, k=10, rng=np.random.default_rng(seed))
        ids = [r.item_id for r in page]
        assert len(ids) == 10 and not set(ids) & set(history)
        extra = [i for i in ids if i not in ranked]
        assert len(extra) <= 2 and all(int(i[1:]) >= 20 for i in extra)
        assert {r.item_id for r in page if r.explored} == set(extra)  # the flag the service returns
        assert all(r.reasons is not None for r in page)
        again, _ = on.recommend(history, k=10, rng=np.random.default_rng(seed))
        assert [r.item_id for r in again] == ids
        changed += bool(extra)
    assert changed > 0
    store.close()

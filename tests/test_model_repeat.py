"""Re-offering as a model decision: basket features, the repeat bonus in training and ranking."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from evaluation import evaluate, next_basket_split
from mmrec.model import FusionConfig, FusionRecommender, TrainConfig
from mmrec.model.transformer import FusionTransformer, due_buckets
from mmrec.model.features import (
    NO_NEXT,
    EventCodes,
    gather,
    history_repeat_pairs,
    window_repeat_pairs,
)


def test_basket_features_count_baskets_and_find_the_latest_purchase() -> None:
    # one row: baskets t=1 {a, b}, t=2 {a, a}, t=3 {c}; items a=0, b=1, c=2
    cfg = FusionConfig(content_dim=4, repeat_purchases=True, repeat_decay=0.5)
    codes = EventCodes.build(np.array([0, 1, 0, 0, 2]), np.array([0, 5]), cfg, timestamps=np.array([1, 1, 2, 2, 3]))
    assert codes.basket.tolist() == [0, 0, 1, 1, 2]
    assert codes.n_baskets.tolist() == [1, 1, 2, 2, 1]  # a twice in basket 2 counts once
    assert codes.next_basket.tolist() == [1, NO_NEXT, 1, NO_NEXT, NO_NEXT]
    assert codes.basket_rank.tolist() == [0, 0, 1, 1, 2]
    _, item, ago, nb, share, decayed, span = history_repeat_pairs(codes, decay=0.5)
    got = {int(i): (int(a), int(n), round(float(s), 3)) for i, a, n, s in zip(item, ago, nb, share)}
    # baskets ago counted from the next (4th) basket; share of the 3 baskets
    assert got == {0: (2, 2, 0.667), 1: (3, 1, 0.333), 2: (1, 1, 0.333)}
    # decayed count: the last basket weighs 1, each older one half as much (decay 0.5 per basket)
    assert dict(zip(item.tolist(), decayed.tolist())) == {0: 0.5 + 0.25, 1: 0.25, 2: 1.0}
    assert dict(zip(item.tolist(), span.tolist())) == {0: 1, 1: 0, 2: 0}  # first to latest purchase
    batch = gather(codes, np.array([0]), np.array([5]))
    targets = torch.ones(1, 4, dtype=torch.bool)
    m, it, ago_t, nb_t, share_t, dec_t, _ = window_repeat_pairs(batch, targets, decay=0.5)
    pairs = sorted(zip(m.tolist(), it.tolist(), ago_t.tolist(), nb_t.tolist(), [round(x, 3) for x in share_t.tolist()]))
    # targets 1..4 = b (basket 0), a, a (basket 1), c (basket 2): only earlier baskets are history
    assert pairs == [(1, 0, 1, 1, 1.0), (1, 1, 1, 1, 1.0), (2, 0, 1, 1, 1.0), (2, 1, 1, 1, 1.0),
                     (3, 0, 1, 2, 1.0), (3, 1, 2, 1, 0.5)]
    # seen from target c (basket 2): a in baskets 1 and 0 -> 1 + 0.5; b in basket 0 -> 0.5
    assert {(mm, ii): d for mm, ii, d in zip(m.tolist(), it.tolist(), dec_t.tolist())}[(3, 0)] == 1.5
    assert {(mm, ii): d for mm, ii, d in zip(m.tolist(), it.tolist(), dec_t.tolist())}[(3, 1)] == 0.5


def test_decayed_count_orders_history_at_init_and_old_checkpoints_keep_their_head() -> None:
    # item 0 in the 5 oldest baskets, item 1 in the latest only: a slow decay ranks item 0 first (it is
    # bought often), a fast one item 1 (bought last); recency alone or the plain count would give one order
    # for both, so the init's ranking must come from the decayed count
    def bonus_by_item(cfg: FusionConfig) -> dict[int, float]:
        codes = EventCodes.build(np.array([0, 0, 0, 0, 0, 1]), np.array([0, 6]), cfg, timestamps=np.arange(6))
        row, item, ago, nb, share, decayed, span = history_repeat_pairs(codes, decay=cfg.repeat_decay)
        args = [torch.from_numpy(x) for x in (row, ago, nb, share)]
        extra = [torch.from_numpy(decayed), torch.from_numpy(span)] if cfg.repeat_decay > 0 else []
        bonus = FusionTransformer(cfg).repeat_bonus(torch.zeros(1, cfg.hidden), args[0], args[1], args[2], args[3],
                                                    torch.zeros(len(row), cfg.hidden), *extra)
        return dict(zip(item.tolist(), bonus.tolist()))

    slow = bonus_by_item(FusionConfig(content_dim=4, repeat_purchases=True, repeat_decay=0.9))
    fast = bonus_by_item(FusionConfig(content_dim=4, repeat_purchases=True, repeat_decay=0.3))
    assert slow[0] > slow[1] and fast[1] > fast[0]
    old = FusionConfig(content_dim=4, repeat_purchases=True).to_dict()
    del old["repeat_decay"]  # a checkpoint saved before the decayed count existed
    legacy_cfg = FusionConfig.from_dict(old)
    assert legacy_cfg.repeat_decay == 0.0 and not hasattr(FusionTransformer(legacy_cfg), "repeat_decayed")
    legacy = bonus_by_item(legacy_cfg)  # its head as before: the plain count of baskets
    assert legacy[0] > legacy[1]
    with pytest.raises(ValueError, match="repeat_decay"):
        FusionConfig(content_dim=4, repeat_decay=1.5)


def test_validate_initial_keeps_the_untrained_model_when_no_epoch_beats_it() -> None:
    from mmrec.model.features import ItemSide
    from mmrec.model.training import train_model

    rng = np.random.default_rng(0)
    cfg = FusionConfig(content_dim=8, hidden=16, max_len=10, repeat_purchases=True)
    items = ItemSide(torch.from_numpy(rng.normal(size=(20, 8)).astype(np.float32)), torch.zeros(20, dtype=torch.long),
                     torch.zeros(20, dtype=torch.long))
    codes = EventCodes.build(rng.integers(20, size=60), np.array([0, 30, 60]), cfg,
                             timestamps=np.tile(np.repeat(np.arange(15), 2), 2))
    states = {}
    for initial in (True, False):
        torch.manual_seed(0)
        model = FusionTransformer(cfg)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        scores = iter([0.5, 0.1, 0.2] if initial else [0.1, 0.2])  # every epoch worse than the init
        tc = TrainConfig(epochs=2, lr=1e-2, warmup_steps=0, progress=False, loss="sampled", n_negatives=8,
                         batch_size=2, validate_initial=initial)
        report = train_model(model, items, codes, tc, catalog=np.arange(20), validate=lambda: next(scores))
        states[initial] = all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        assert report["best_epoch"] == (0 if initial else 2)
    assert states == {True: True, False: False}  # kept the init only when asked to score it


def test_due_buckets_centre_on_the_usual_interval() -> None:
    # bought in 5 baskets over a span of 8 (every 2 baskets): 2 baskets ago is on time, 8 is overdue
    ago, nb, span = torch.tensor([2, 8, 1, 3]), torch.tensor([5, 5, 5, 1]), torch.tensor([8, 8, 8, 0])
    b = due_buckets(ago, nb, span, 18)
    assert b[0] == 9 and b[1] > b[0] > b[2] and b[3] == 0


def _rebuyers(n_users: int = 120, n_items: int = 150, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        staples = rng.choice(n_items, 4, replace=False)
        for b in range(10):
            basket = set(staples[rng.random(4) < 0.7].tolist()) | set(rng.choice(n_items, 2).tolist())
            rows += [(f"u{u}", f"i{i}", 1000 * b + u) for i in basket]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_repeat_model_learns_to_reoffer_what_shoppers_rebuy() -> None:
    split = next_basket_split(_rebuyers(), t=9000, valid_t=8000)
    vectors = np.random.default_rng(1).normal(size=(split.n_items, 16)).astype(np.float32)
    tc = TrainConfig(epochs=8, warmup_steps=0, lr=3e-3, progress=False, loss="sampled", n_negatives=64)
    out = {}
    for repeat in (False, True):
        model = FusionRecommender(vectors, FusionConfig(content_dim=16, max_len=40, repeat_purchases=repeat), tc,
                                  item_ids=split.item_ids)
        out[repeat] = evaluate(model, split, ks=(5,), exclude_seen=False, progress=False).mean("recall@5")
        if repeat:
            path_model = model
    assert out[True] > out[False] + 0.2  # the staples come back only with the repeat bonus
    assert path_model.model_.repeat_recency.weight.abs().sum() > 0


def _switchers(n_users: int = 60, seed: int = 0) -> pd.DataFrame:
    """Each shopper buys staple A in the first 8 baskets, then switches to staple B for 4: by plain count
    A leads, but the next basket holds B."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        a, b = rng.choice(40, 2, replace=False)
        for t in range(13):
            rows.append((f"u{u}", f"i{a if t < 8 else b}", 1000 * t + u))
            rows.append((f"u{u}", f"i{100 + rng.integers(60)}", 1000 * t + u))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_repeat_decay_is_chosen_on_validation_and_prefers_recent_purchases_when_tastes_move() -> None:
    from mmrec.model.recommender import choose_repeat_decay

    split = next_basket_split(_switchers(), t=12000, valid_t=11000)
    search = choose_repeat_decay(split.valid, FusionConfig(content_dim=4, repeat_purchases=True))
    assert {r["decay"] for r in search} == {0.8, 0.9, 0.95, 0.98, 1.0}
    plain = next(r for r in search if r["decay"] == 1.0)
    assert search[0]["decay"] < 1.0 and search[0]["valid_ndcg@10"] > plain["valid_ndcg@10"]


@pytest.mark.parametrize("max_len", [64, 8])
def test_serving_scores_history_items_exactly_like_evaluation(tmp_path, max_len) -> None:
    """Train/serve consistency of the repeat bonus: the two-stage ranker over a real Qdrant Edge store (one
    request and the batched path) scores a household's items like `FusionRecommender` does in evaluation,
    decayed counts, "due" buckets and baskets (one timestamp's events) included. With max_len 8 the histories
    are longer than the model's window: the window's first event is coded with its gap to the event before,
    as in training and evaluation."""
    from index import CollectionSchema, Point, open_store
    from evaluation import Histories
    from mmrec.data.schema import Event
    from mmrec.serving.two_stage import RecommendRequest, ServingConfig, TwoStageRecommender

    split = next_basket_split(_rebuyers(n_users=40, n_items=60), t=9000, valid_t=8000)
    vectors = np.random.default_rng(1).normal(size=(split.n_items, 16)).astype(np.float32)
    tc = TrainConfig(epochs=2, warmup_steps=0, lr=3e-3, progress=False, loss="sampled", n_negatives=32)
    rec = FusionRecommender(vectors, FusionConfig(content_dim=16, hidden=16, max_len=max_len, repeat_purchases=True), tc,
                            item_ids=split.item_ids).fit(split.train, split.valid)
    assert rec.model_.cfg.repeat_decay > 0
    with torch.no_grad():  # every term of the bonus non-zero, whichever state validation kept
        torch.manual_seed(0)
        for p in (rec.model_.repeat_due.weight, rec.model_.repeat_recency.weight, rec.model_.repeat_freq.weight):
            p.normal_(0.0, 0.1)
        rec.model_.repeat_decayed.fill_(0.3)
    store = open_store("edge", path=tmp_path / "store", schema=CollectionSchema(text_dim=16, image_dim=16, fused_dim=16))
    store.upsert([Point(str(i), {"fused": rec.item_vectors[k], "text": rec.item_vectors[k]}, {"product_id": str(i)})
                  for k, i in enumerate(split.item_ids)])
    ranker = TwoStageRecommender.from_checkpoint(rec.save(tmp_path / "m.pt"), store, config=ServingConfig(
        n_retrieve=split.n_items, reasons="cosine", exclude_seen_products=False))
    h = split.test.histories
    for case in range(3):
        items, ts = h[case], h.timestamps[h.indptr[case]:h.indptr[case + 1]]
        assert len(np.unique(ts)) > 3  # several baskets
        assert len(items) <= max_len if max_len == 64 else len(items) > max_len + 1  # whole history / cut to a window
        one = Histories(indptr=np.array([0, len(items)]), items=items, timestamps=ts,
                        kinds=np.full(len(items), "purchase", dtype=object))
        users = rec.user_vectors(one)
        table = rec.item_matrix()
        expected = users @ table.T
        rec._add_repeat_bonus(expected, one, users, table)
        events = [Event("u", str(split.item_ids[i]), int(t), kind="purchase") for i, t in zip(items, ts)]
        served, _ = ranker.recommend(events, k=split.n_items)
        batched = ranker.recommend_many([RecommendRequest(events, k=split.n_items)])[0][0]
        index = {str(x): j for j, x in enumerate(split.item_ids)}
        for got in (served, batched):
            assert {r.item_id for r in got} >= {str(split.item_ids[i]) for i in items}  # history re-offered
            np.testing.assert_allclose([r.score for r in got], [expected[0, index[r.item_id]] for r in got],
                                       rtol=1e-4, atol=1e-4)
    store.close()

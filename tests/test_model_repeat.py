"""Re-offering as a model decision: basket features, the repeat bonus in training and ranking."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from evaluation import evaluate, next_basket_split
from mmrec.model import FusionConfig, FusionRecommender, TrainConfig
from mmrec.model.features import (
    NO_NEXT,
    EventCodes,
    gather,
    history_repeat_pairs,
    window_repeat_pairs,
)


def test_basket_features_count_baskets_and_find_the_latest_purchase() -> None:
    # one row: baskets t=1 {a, b}, t=2 {a, a}, t=3 {c}; items a=0, b=1, c=2
    cfg = FusionConfig(content_dim=4)
    codes = EventCodes.build(np.array([0, 1, 0, 0, 2]), np.array([0, 5]), cfg, timestamps=np.array([1, 1, 2, 2, 3]))
    assert codes.basket.tolist() == [0, 0, 1, 1, 2]
    assert codes.n_baskets.tolist() == [1, 1, 2, 2, 1]  # a twice in basket 2 counts once
    assert codes.next_basket.tolist() == [1, NO_NEXT, 1, NO_NEXT, NO_NEXT]
    assert codes.basket_rank.tolist() == [0, 0, 1, 1, 2]
    _, item, ago, nb, share = history_repeat_pairs(codes)
    got = {int(i): (int(a), int(n), round(float(s), 3)) for i, a, n, s in zip(item, ago, nb, share)}
    # baskets ago counted from the next (4th) basket; share of the 3 baskets
    assert got == {0: (2, 2, 0.667), 1: (3, 1, 0.333), 2: (1, 1, 0.333)}
    batch = gather(codes, np.array([0]), np.array([5]))
    targets = torch.ones(1, 4, dtype=torch.bool)
    m, it, ago_t, nb_t, share_t = window_repeat_pairs(batch, targets)
    pairs = sorted(zip(m.tolist(), it.tolist(), ago_t.tolist(), nb_t.tolist(), [round(x, 3) for x in share_t.tolist()]))
    # targets 1..4 = b (basket 0), a, a (basket 1), c (basket 2): only earlier baskets are history
    assert pairs == [(1, 0, 1, 1, 1.0), (1, 1, 1, 1, 1.0), (2, 0, 1, 1, 1.0), (2, 1, 1, 1, 1.0),
                     (3, 0, 1, 2, 1.0), (3, 1, 2, 1, 0.5)]


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

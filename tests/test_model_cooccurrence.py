"""The co-occurrence warm start of the ID embeddings: pairs are counted within a history and a window
only, the embeddings put items that occur together near each other, and `id_init="cooccurrence"` puts
them into the model's ID table before training."""
from __future__ import annotations

import numpy as np
import torch

from evaluation.splits import leave_one_out
from mmrec.model.cooccurrence import cooccurrence_matrix, ppmi_embeddings
from mmrec.model.transformer import FusionConfig
from mmrec.model import FusionRecommender, TrainConfig


def test_pairs_stay_inside_a_history_and_the_window():
    items = np.array([0, 1, 2, 3, -1, 4])  # two histories: [0 1 2] and [3 -1 4]
    indptr = np.array([0, 3, 6])
    counts = cooccurrence_matrix(items, indptr, 5, window=1).toarray()
    assert counts[0, 1] == counts[1, 0] == 1 and counts[1, 2] == 1
    assert counts[0, 2] == 0  # two apart, window 1
    assert counts[2, 3] == 0  # across histories
    assert counts[3, 4] == 0 and counts[:, 4].sum() == 0  # -1 (no ID) breaks nothing and pairs with nothing
    assert cooccurrence_matrix(items, indptr, 5, window=2).toarray()[0, 2] == 1


def test_items_that_occur_together_embed_together():
    rng = np.random.default_rng(0)
    groups = [np.arange(0, 10), np.arange(10, 20), np.arange(20, 30)]
    histories = [rng.choice(groups[g % 3], 8) for g in range(300)]  # each shopper stays in one group
    items = np.concatenate(histories)
    indptr = np.concatenate([[0], np.cumsum([len(h) for h in histories])])
    emb = ppmi_embeddings(cooccurrence_matrix(items, indptr, 30, window=3), dim=8)
    assert emb.shape == (30, 8) and abs(emb.std() - 0.02) < 1e-3
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit.T
    group = np.arange(30) // 10
    other = group[:, None] != group[None, :]
    same = ~other
    np.fill_diagonal(same, False)
    assert sims[same].mean() > 0.5 > sims[other].mean()
    again = ppmi_embeddings(cooccurrence_matrix(items, indptr, 30, window=3), dim=8)
    assert np.array_equal(emb, again)  # seeded: the same events give the same start


def test_fit_starts_the_id_table_from_cooccurrence(ml100k):
    split = leave_one_out(ml100k.events, max_users=100, seed=0)
    vecs = np.random.default_rng(0).normal(size=(split.n_items, 16)).astype(np.float32)
    cfg = FusionConfig(content_dim=16, hidden=16, n_layers=1, max_len=30)
    rec = FusionRecommender(vecs, cfg, TrainConfig(epochs=1, lr=1e-12, warmup_steps=1, progress=False,
                                                   id_init="cooccurrence"), item_ids=split.item_ids)
    rec.fit(split.train)
    weights = rec.model_.id_emb.weight.detach().numpy()
    ids = rec._item_side().ids.numpy()
    rows = ids[split.train.item] - 1
    n_ids = len(rec.id_items_)
    expected = ppmi_embeddings(cooccurrence_matrix(rows, split.train.indptr, n_ids, 5), 16)
    assert weights.shape == (n_ids + 1, 16)
    np.testing.assert_allclose(weights[1:], expected, atol=1e-6)  # lr ~ 0: still the warm start
    random = FusionRecommender(vecs, cfg, TrainConfig(epochs=1, lr=1e-12, warmup_steps=1, progress=False),
                               item_ids=split.item_ids).fit(split.train)
    assert not torch.allclose(random.model_.id_emb.weight[1:], torch.from_numpy(expected), atol=1e-3)

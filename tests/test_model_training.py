"""Training the fusion transformer: it learns, it is deterministic, checkpoints round-trip and refuse other
item vectors, and fine-tuning (resume) picks up new items and new events without a full retrain."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.protocol import evaluate
from evaluation.splits import leave_one_out
from mmrec.model.transformer import FusionConfig
from mmrec.model import FusionRecommender, TrainConfig


def _tiny(**kw) -> FusionConfig:
    return FusionConfig(content_dim=kw.pop("content_dim", 16), hidden=16, n_layers=1, max_len=30, **kw)


def _fast(**kw) -> TrainConfig:
    kw.setdefault("epochs", 1)
    kw.setdefault("lr", 3e-3)
    return TrainConfig(warmup_steps=5, progress=False, **kw)


@pytest.fixture(scope="module")
def ml_small(ml100k):
    split = leave_one_out(ml100k.events, max_users=150, seed=0)
    vectors = np.random.default_rng(0).normal(size=(split.n_items, 16)).astype(np.float32)
    return split, vectors


def test_beats_content_knn_and_popularity_on_the_shopper_simulation(emoji_market):
    """On a slice of the emoji-market shopper SIMULATION (two markets), a short training run ranks the
    held-out next product better than content-kNN over the same vectors and than popularity."""
    from evaluation.baselines import ContentKNN, Popularity
    from mmrec.embedding.recipe import ItemRecipe
    from mmrec.model.vectors import text_vectors

    items = emoji_market.items.filter(lambda m: m in ("US", "DE"), input_columns="market")
    keep = set(items["item_id"])
    events = emoji_market.events.filter(lambda i: i in keep, input_columns="item_id")
    split = leave_one_out(events, items=items, seed=0)
    vecs = text_vectors(items, "use-m3", recipe=ItemRecipe(("title",)), progress=False).aligned(split.item_ids)
    rec = FusionRecommender(vecs, FusionConfig(content_dim=vecs.shape[1], hidden=32, max_len=50),
                            TrainConfig(epochs=8, lr=3e-3, warmup_steps=20, progress=False),
                            item_ids=split.item_ids, item_market=split.item_market)
    ours = evaluate(rec, split, ks=(10,), progress=False).mean("ndcg@10")
    cknn = evaluate(ContentKNN(vecs), split, ks=(10,), progress=False).mean("ndcg@10")
    pop = evaluate(Popularity(), split, ks=(10,), progress=False).mean("ndcg@10")
    assert ours > 1.5 * max(cknn, pop), (ours, cknn, pop)
    log = rec.report_["epochs"]
    assert log[-1]["loss"] < log[0]["loss"]
    assert rec.report_["best_epoch"] >= 1 and "valid_ndcg@10" in log[0]


def test_same_seed_same_model(ml_small):
    split, vecs = ml_small
    a = FusionRecommender(vecs, _tiny(), _fast(seed=3)).fit(split.train, split.valid)
    b = FusionRecommender(vecs, _tiny(), _fast(seed=3)).fit(split.train, split.valid)
    c = FusionRecommender(vecs, _tiny(), _fast(seed=4)).fit(split.train)
    for name, w in a.model_.state_dict().items():
        torch.testing.assert_close(w, b.model_.state_dict()[name], rtol=0, atol=0)
    assert not torch.equal(a.model_.id_emb.weight, c.model_.id_emb.weight)


def test_checkpoint_round_trip_and_version_check(ml_small, tmp_path):
    from mmrec.errors import UserError

    split, vecs = ml_small
    rec = FusionRecommender(vecs, _tiny(), _fast()).fit(split.train)
    path = rec.save(tmp_path / "m.pt")
    back = FusionRecommender.load(path, vecs, item_ids=split.item_ids)
    histories = split.test.histories.subset(np.arange(20))
    np.testing.assert_array_equal(rec.recommend(histories, 10).items, back.recommend(histories, 10).items)
    assert back.vectors_version == rec.vectors_version
    with pytest.raises(UserError, match="trained on vector space"):
        FusionRecommender.load(path, vecs + 1.0, item_ids=split.item_ids)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        FusionRecommender.load(tmp_path / "junk.pt", vecs, item_ids=split.item_ids)


def test_cold_items_get_the_unknown_id(ml_small):
    """Items without training events have no ID row (id 0): they are ranked through content alone."""
    split, vecs = ml_small
    rec = FusionRecommender(vecs, _tiny(), _fast()).fit(split.train)
    ids = rec._item_side().ids.numpy()
    counts = split.train.item_counts()
    assert (ids[counts == 0] == 0).all() and (ids[counts > 0] > 0).all()
    assert rec.model_.cfg.n_ids == int((counts > 0).sum())


def test_sampled_softmax_learns(ml_small):
    split, vecs = ml_small
    for in_batch in (True, False):
        rec = FusionRecommender(vecs, _tiny(), _fast(epochs=3, loss="sampled", n_negatives=128,
                                                      in_batch_negatives=in_batch)).fit(split.train)
        assert rec.report_["loss"] == "sampled"
        losses = [e["loss"] for e in rec.report_["epochs"]]
        assert losses[-1] < losses[0]


def test_resume_learns_a_new_item_from_new_events(ml100k):
    """Fine-tuning on new events: an item the first model never saw gets an ID, and a pattern only the
    new events show (users who watch A then watch X) moves X far up for histories ending in A."""
    from evaluation import Histories

    split = leave_one_out(ml100k.events, max_users=300, seed=0)
    train = split.train
    counts = train.item_counts()
    a = int(np.argmax(counts))  # the most watched movie
    x = int(np.flatnonzero(counts == 0)[0]) if (counts == 0).any() else None
    assert x is not None, "expected some items with no training events in a 300-user sample"
    vecs = np.random.default_rng(1).normal(size=(split.n_items, 16)).astype(np.float32)
    rec = FusionRecommender(vecs, _tiny(), _fast(epochs=2)).fit(train)
    # shoppers who did not take part in the new events, who just watched A
    history = Histories.from_lists([list(train.sequences()[u][-20:]) + [a] for u in range(250, 300)])

    def rank_of_x() -> float:
        scores = rec.user_vectors(history) @ rec.item_matrix().T
        return float(np.median((scores > scores[:, [x]]).sum(1)))

    before = rank_of_x()
    n_ids = rec.model_.cfg.n_ids
    # new events: 200 users each watch A then X (appended after their history)
    users = np.arange(200)
    extra_t = train.timestamp.max() + 10 * np.arange(1, 3)
    new_user = np.concatenate([train.user, np.repeat(users, 2)])
    new_item = np.concatenate([train.item, np.tile([a, x], len(users))])
    new_ts = np.concatenate([train.timestamp, np.tile(extra_t, len(users))])
    order = np.lexsort((new_ts, new_user))
    from evaluation import Interactions

    indptr = np.zeros(train.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(new_user, minlength=train.n_users), out=indptr[1:])
    grown = Interactions(user=new_user[order], item=new_item[order], timestamp=new_ts[order], indptr=indptr,
                         user_ids=train.user_ids, item_ids=train.item_ids)
    rec.train_config = _fast(epochs=3)
    rec.fit(grown, resume=True)
    assert rec.model_.cfg.n_ids == n_ids + 1  # X got an ID row; the others kept theirs
    after = rank_of_x()
    assert before > 200 and after < before / 4, (before, after)  # e.g. 848 -> 132 of 1,682 movies


def test_sampled_step_touches_only_its_id_rows(ml_small):
    """Memory per step independent of the catalog: with the sampled softmax the ID table gets a sparse
    gradient (the rows of the batch and its negatives, not an (n_items, d) dense one) and a lazy Adam that
    leaves every other row as it was; the full softmax keeps the dense AdamW."""
    from mmrec.model import EventCodes, FusionTransformer, gather, next_item_loss, training_windows
    from mmrec.model.training import make_optimizer

    split, vecs = ml_small
    rec = FusionRecommender(vecs, _tiny(), _fast(loss="sampled", n_negatives=16), item_ids=split.item_ids)
    cfg = _tiny(n_ids=split.n_items)
    rec.model_, rec.id_items_ = FusionTransformer(cfg), [str(x) for x in split.item_ids]
    model, items = rec.model_, rec._item_side()
    codes = EventCodes.from_interactions(split.train, cfg)
    starts, lengths = training_windows(codes, cfg.max_len, "all")
    batch = gather(codes, starts[:2], lengths[:2])
    catalog = torch.arange(split.n_items)
    log_q = torch.full((split.n_items,), -5.0)
    for full in (False, True):
        opt = make_optimizer(model, rec.train_config, sparse_ids=not full)
        before = model.id_emb.weight.detach().clone()
        loss, _ = next_item_loss(model, items, batch, catalog, None if full else log_q, rec.train_config, full,
                                 torch.Generator().manual_seed(0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        assert model.id_emb.weight.grad.is_sparse is (not full)
        opt.step()
        changed = (model.id_emb.weight.detach() != before).any(dim=1)
        if full:
            assert bool(changed.all())  # dense AdamW (weight decay) moves every row
        else:
            touched = set(model.id_emb.weight.grad.coalesce().indices()[0].tolist())
            assert 0 < int(changed.sum()) <= len(touched) < split.n_items // 2
            assert set(torch.nonzero(changed).flatten().tolist()) <= touched
    model.id_emb.sparse = False

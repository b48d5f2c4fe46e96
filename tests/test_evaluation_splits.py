"""Split protocols on real event logs: what goes where, and proof that temporal splits do not leak."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation import Histories, cold_start_split, cross_market_split, leave_one_out, temporal_split
from evaluation.events import event_columns


@pytest.fixture(scope="module")
def ml100k():
    from mmrec.data.datasets import load

    return load("ml-100k")


@pytest.fixture(scope="module")
def events_df(ml100k) -> pd.DataFrame:
    return ml100k.events.to_pandas()


@pytest.fixture(scope="module")
def market():
    from mmrec.data.datasets import load

    return load("emoji-market")  # shopper SIMULATION over a real multilingual item set


def _times(split, eval_set):
    """(history event times, target event times) of every case, read back from the raw log."""
    return eval_set.histories.timestamps, eval_set.target_time


def test_leave_one_out_structure(ml100k, events_df):
    split = leave_one_out(ml100k.events)
    df = events_df
    assert split.n_users == df.user_id.nunique() and split.n_items == df.item_id.nunique()
    # Every event ends up in exactly one of train / valid / test.
    assert len(split.train) + len(split.valid) + len(split.test) == len(df)
    assert len(split.test) == len(split.valid) == split.n_users  # ML-100k users all have >= 20 ratings
    last_time = df.groupby("user_id").timestamp.max()
    uid = split.user_ids[split.test.users]
    np.testing.assert_array_equal(split.test.target_time, last_time.loc[uid].to_numpy())
    for i in range(0, len(split.test), 97):
        u = split.test.users[i]
        train_seq = split.train.item[split.train.indptr[u] : split.train.indptr[u + 1]]
        # Test history = train sequence + the validation target; validation history = the train sequence.
        np.testing.assert_array_equal(split.test.histories[i], np.r_[train_seq, split.valid.targets(i)])
        np.testing.assert_array_equal(split.valid.histories[i], train_seq)
        assert split.train.timestamp[split.train.indptr[u + 1] - 1] <= split.valid.target_time[i] <= split.test.target_time[i]
    assert split.test.single_targets() is not None


def test_leave_one_out_same_split_from_any_input_form(ml100k, events_df):
    a = leave_one_out(ml100k.events)
    b = leave_one_out(events_df)
    c = leave_one_out({k: events_df[k].to_numpy() for k in ("user_id", "item_id", "timestamp")})
    for other in (b, c):
        np.testing.assert_array_equal(a.item_ids, other.item_ids)
        np.testing.assert_array_equal(a.train.item, other.train.item)
        np.testing.assert_array_equal(a.test.target_items, other.test.target_items)
        np.testing.assert_array_equal(a.test.histories.items, other.test.histories.items)


def test_seeded_user_sampling_and_ties(events_df):
    a = leave_one_out(events_df, max_users=100, seed=3)
    b = leave_one_out(events_df, max_users=100, seed=3)
    c = leave_one_out(events_df, max_users=100, seed=4)
    assert a.n_users == 100
    np.testing.assert_array_equal(a.user_ids, b.user_ids)
    assert not np.array_equal(a.user_ids, c.user_ids)
    r1 = leave_one_out(events_df, tie_break="random", seed=1)
    r2 = leave_one_out(events_df, tie_break="random", seed=1)
    np.testing.assert_array_equal(r1.test.target_items, r2.test.target_items)


def test_item_vocabulary_from_catalog(ml100k):
    split = leave_one_out(ml100k.events, items=ml100k.items)
    np.testing.assert_array_equal(split.item_ids, np.asarray(ml100k.items["item_id"], dtype=object))
    with pytest.raises(ValueError, match="missing from the item vocabulary"):
        leave_one_out(ml100k.events, items=list(ml100k.items["item_id"])[:-5])


def test_bad_input_is_reported(events_df):
    with pytest.raises(ValueError, match="required column"):
        leave_one_out(events_df.drop(columns=["timestamp"]))
    with pytest.raises(TypeError):
        leave_one_out([("u", "i", 1)])
    with pytest.raises(ValueError, match="min_events"):
        leave_one_out(events_df, min_events=2)


def test_temporal_split_has_no_leakage(events_df):
    """The bar: no training event at or after t; histories only before t; targets only at or after t."""
    t = int(np.quantile(events_df.timestamp, 0.8))
    split = temporal_split(events_df, t=t, valid_quantile=0.7)
    vt = split.params["valid_t"]
    assert split.train.timestamp.max() < vt < t
    assert split.test.histories.timestamps.max() < t
    assert split.valid.histories.timestamps.max() < vt
    assert split.test.target_time.min() >= t and split.valid.target_time.min() >= vt
    assert split.valid.target_time.max() < t
    # Cross-check every test case against the raw log: targets are exactly the user's post-t items that
    # are not in the pre-t history; the history is exactly the user's pre-t events.
    df = events_df
    for i in range(len(split.test)):
        uid = split.user_ids[split.test.users[i]]
        ev = df[df.user_id == uid]
        pre = set(ev.item_id[ev.timestamp < t])
        post = set(ev.item_id[ev.timestamp >= t]) - pre
        assert set(split.item_ids[split.test.targets(i)]) == post
        assert set(split.item_ids[split.test.histories[i]]) == pre
        assert len(split.test.histories[i]) == int((ev.timestamp < t).sum())
    # No case for users without post-t discoveries; none built from post-t events.
    users_with_both = {u for u, g in df.groupby("user_id")
                       if (g.timestamp < t).any() and (set(g.item_id[g.timestamp >= t]) - set(g.item_id[g.timestamp < t]))}
    assert set(split.user_ids[split.test.users]) == users_with_both


def test_temporal_first_target_and_bad_cut(events_df):
    split = temporal_split(events_df, quantile=0.9, target="first")
    assert split.test.single_targets() is not None
    with pytest.raises(ValueError, match="no test cases"):
        temporal_split(events_df, t=int(events_df.timestamp.max()) + 1)
    with pytest.raises(ValueError, match="valid_t"):
        temporal_split(events_df, t=int(events_df.timestamp.median()), valid_t=int(events_df.timestamp.max()))


def test_cold_start_split(events_df):
    split = cold_start_split(events_df, cold_fraction=0.1, valid_t=int(np.quantile(events_df.timestamp, 0.5)))
    t = split.params["t"]
    first_seen = events_df.groupby("item_id").timestamp.min()
    cold_ids = set(first_seen.index[first_seen >= t])
    assert split.params["n_cold_items_with_events"] == len(cold_ids) > 0
    train_ids = set(split.item_ids[np.unique(split.train.item)])
    assert not train_ids & cold_ids  # no model ever trains on a cold item
    assert set(split.item_ids[split.test.target_items]) <= cold_ids
    assert split.test.histories.timestamps.max() < t <= split.test.target_time.min()
    assert split.train.timestamp.max() < split.params["valid_t"]
    only_cold = cold_start_split(events_df, cold_fraction=0.1, candidates="cold")
    assert set(split.item_ids[only_cold.test.candidates[0]]) == cold_ids


def test_cross_market_split(market):
    split = cross_market_split(market.events, items=market.items)
    assert len(split.test) > 100 and split.item_market is not None
    item_mk = split.item_market
    for i in range(len(split.test)):
        hist_markets = set(item_mk[split.test.histories[i]])
        target_market = item_mk[split.test.targets(i)[0]]
        assert len(hist_markets) == 1 and target_market not in hist_markets  # history in A, target in B
        assert split.test.target_market[i] == target_market == split.test.histories.context_market[i]
    # Training holds nothing from a user's held-out target onwards.
    for i in range(0, len(split.test), 50):
        u = split.test.users[i]
        tr = split.train.timestamp[split.train.indptr[u] : split.train.indptr[u + 1]]
        first_held = split.valid.target_time[split.valid.users == u] if split.valid is not None else []
        cut = min([split.test.target_time[i], *first_held])
        assert len(tr) == 0 or tr.max() <= cut
    restricted = cross_market_split(market.events, items=market.items, candidates="target_market")
    for i in range(0, len(restricted.test), 50):
        cands = restricted.test.candidates[restricted.test.candidate_group[i]]
        assert set(item_mk[cands]) == {restricted.test.target_market[i]}
    with pytest.raises(ValueError, match="needs markets"):
        cross_market_split(pd.DataFrame({k: v for k, v in event_columns(market.events).items() if k != "market"}))


def test_histories_container():
    h = Histories.from_lists([[3, 1], [], [2]])
    assert len(h) == 3 and list(h[0]) == [3, 1] and len(h[1]) == 0
    sub = h.subset([2, 0])
    assert [list(x) for x in sub] == [[2], [3, 1]]
    np.testing.assert_array_equal(h.row_of_event(), [0, 0, 2])


def test_position_from_end_counts_the_later_events_of_each_row():
    from evaluation import Histories

    h = Histories.from_lists([[3, 1, 2], [], [5, 6]])
    assert h.position_from_end().tolist() == [2, 1, 0, 1, 0]

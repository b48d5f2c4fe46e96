"""The fusion transformer's maths: shapes, causality, padding, the content-space query, feature codes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmrec.model import (
    FIRST_GAP,
    ZERO_GAP,
    FusionConfig,
    FusionTransformer,
    gap_buckets,
    kind_codes,
    market_codes,
    value_codes,
)


def _model(**kw) -> FusionTransformer:
    torch.manual_seed(0)
    cfg = FusionConfig(content_dim=16, n_ids=10, markets=("DE", "JP"), hidden=32, n_layers=2, n_heads=2,
                       max_len=8, dropout=0.0, **kw)
    return FusionTransformer(cfg).eval()


def _inputs(b: int, length: int, n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    content = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=-1)
    ids = torch.randint(0, 11, (n,), generator=g)
    market = torch.randint(0, 3, (n,), generator=g)
    items = torch.randint(0, n, (b, length), generator=g)
    codes = [torch.randint(0, 5, (b, length), generator=g) for _ in range(3)]
    return content, ids, market, items, codes


def test_shapes_and_user_vectors():
    model = _model()
    content, ids, market, items, (kind, gap, value) = _inputs(3, 6)
    table = model.item_table(content, ids, market)
    assert table.shape == (12, 32)
    lengths = torch.tensor([6, 4, 1])
    hidden = model(table, items, lengths, kind, gap, value)
    assert hidden.shape == (3, 6, 32)
    users = model.user_vectors(hidden[torch.arange(3), lengths - 1], torch.tensor([0, 1, 2]))
    assert users.shape == (3, 32)
    assert model.scores(users, table).shape == (3, 12)


def test_causal_and_padding_do_not_leak():
    """Position t depends only on events <= t; what sits in the right padding changes nothing."""
    model = _model()
    content, ids, market, items, (kind, gap, value) = _inputs(2, 6)
    table = model.item_table(content, ids, market)
    lengths = torch.tensor([6, 3])
    base = model(table, items, lengths, kind, gap, value)
    changed = items.clone()
    changed[0, 5] = (items[0, 5] + 1) % 12  # a later event of row 0
    changed[1, 3:] = (items[1, 3:] + 5) % 12  # padding of row 1
    after = model(table, changed, lengths, kind, gap, value)
    # causality: earlier positions of row 0 are untouched, the last one moves
    torch.testing.assert_close(after[0, :5], base[0, :5])
    assert not torch.allclose(after[0, 5], base[0, 5])
    # padding: row 1's real positions are untouched
    torch.testing.assert_close(after[1, :3], base[1, :3])


def test_positions_count_from_the_most_recent_event():
    """The same 3 events give the same last hidden state whether or not the row is padded wider."""
    model = _model()
    content, ids, market, items, (kind, gap, value) = _inputs(1, 3)
    table = model.item_table(content, ids, market)
    short = model(table, items, torch.tensor([3]), kind, gap, value)[0, 2]
    pad = lambda t: torch.cat([t, torch.zeros(1, 4, dtype=t.dtype)], 1)  # noqa: E731
    wide = model(table, pad(items), torch.tensor([3]), pad(kind), pad(gap), pad(value))[0, 2]
    torch.testing.assert_close(short, wide)


def test_content_query_equals_the_content_part_of_the_score():
    """Retrieving with W_cᵀu over raw content vectors ranks exactly as the model's content score."""
    model = _model()
    with torch.no_grad():
        model.item_market_emb.weight.normal_()  # make the market term non-trivial
    content, ids, market, items, (kind, gap, value) = _inputs(2, 5)
    users = torch.randn(2, 32)
    no_id = torch.zeros_like(ids)
    full = model.scores(users, model.item_table(content, no_id, market))
    market_part = users @ (model.item_market_emb(market) + model.id_emb.weight[0]).T
    via_query = model.content_query(users) @ content.T
    torch.testing.assert_close(full - market_part, via_query, rtol=1e-5, atol=1e-5)


def test_id_zero_is_the_unknown_item():
    """Cold items (id 0) are content + the learned "unknown item" row; warm ones add their own ID row."""
    model = _model()
    with torch.no_grad():
        model.id_emb.weight.normal_()
    content, ids, market, *_ = _inputs(1, 1)
    cold = model.item_table(content, torch.zeros_like(ids), market)
    expected = model.content_proj(content) + model.item_market_emb(market) + model.id_emb.weight[0]
    torch.testing.assert_close(cold, expected)
    warm = model.item_table(content, torch.full_like(ids, 3), market)
    torch.testing.assert_close(warm - cold, (model.id_emb.weight[3] - model.id_emb.weight[0]).expand_as(warm))


def test_id_dropout_swaps_in_the_unknown_item():
    """Dropping an event's ID in training gives exactly the hidden states of that item served cold."""
    model = _model()
    with torch.no_grad():
        model.id_emb.weight.normal_()
    content, _, market, _, (kind, gap, value) = _inputs(1, 4)
    ids = torch.arange(1, 13).clamp(max=10)  # warm ids
    items = torch.tensor([[4, 7, 2, 9]])
    lengths = torch.tensor([4])
    drop = torch.tensor([[False, True, False, False]])
    dropped = model(model.item_table(content, ids, market), items, lengths, kind, gap, value, drop, ids)
    cold_ids = ids.clone()
    cold_ids[7] = 0  # item 7 served cold
    served = model(model.item_table(content, cold_ids, market), items, lengths, kind, gap, value)
    torch.testing.assert_close(dropped, served)
    kept = model(model.item_table(content, ids, market), items, lengths, kind, gap, value)
    assert not torch.allclose(kept[0, 1:], dropped[0, 1:])


def test_feature_codes():
    gaps = np.array([0, 0, 1, 2, 3600, 10**12, -5])
    first = np.array([True, False, False, False, False, False, False])
    got = gap_buckets(gaps, first, n_buckets=32)
    assert got[0] == FIRST_GAP and got[1] == ZERO_GAP and got[6] == ZERO_GAP
    assert got[2] == 3 and got[3] == 4 and got[4] == 3 + 11  # log2(3600) = 11.8
    assert got[5] == 31  # capped
    assert kind_codes(np.array(["view", "purchase", "bogus"], dtype=object), 3).tolist() == [1, 4, 0]
    assert kind_codes(None, 2).tolist() == [0, 0]
    assert value_codes(np.array([np.nan, 1.0, 5.0, 99.0]), 4, 12).tolist() == [0, 2, 6, 11]
    assert market_codes(["JP", None, "XX", "DE"], ("DE", "JP"), 4).tolist() == [2, 0, 0, 1]


def test_config_round_trip_and_bad_heads():
    cfg = FusionConfig(content_dim=8, markets=("A", "B"), hidden=16, n_heads=2)
    assert FusionConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible"):
        FusionTransformer(FusionConfig(content_dim=8, hidden=30, n_heads=4))

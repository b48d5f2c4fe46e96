"""The built-in datasets are real, complete and consistent."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrec import datasets
from mmrec.data.datasets import emoji_market, shoppers
from mmrec.errors import UserError


def test_ml1m_exact_counts():
    data = datasets.load("ml-1m")
    assert len(data.events) == 1_000_209
    assert data.n_users == 6_040
    assert data.n_event_items == 3_706
    assert set(data.events.unique("kind")) == {"rating"}
    ts = data.events.data.column("timestamp").to_numpy()
    assert (np.diff(ts) >= 0).all(), "events are time-ordered"
    assert set(data.events.unique("item_id")) <= set(data.items["item_id"])


def test_ml100k_counts_and_titles(ml100k):
    assert len(ml100k.events) == 100_000
    assert ml100k.n_users == 943
    assert ml100k.n_event_items == 1_682
    titles = dict(zip(ml100k.items["item_id"], ml100k.items["title"]))
    assert titles["1"] == "Toy Story"
    assert "Animation" in dict(zip(ml100k.items["item_id"], ml100k.items["category"]))["1"].split("|")
    assert "ml-100k" in ml100k.describe() and "100,000" in ml100k.describe()


def test_complete_journey_baskets():
    data = datasets.load("complete-journey")
    assert len(data.events) == 1_469_307
    assert data.n_users == 2_469
    assert len(data.items) == 92_331
    sessions = data.events.data.column("session_id")
    assert sessions.null_count == 0
    first = data.events[0]
    assert first["kind"] == "purchase" and first["value"] >= 0


def test_emoji_market_catalog(emoji_market):
    items = emoji_market.items
    langs = set(items.unique("language"))
    assert langs == set(emoji_market_languages())
    per_product = Counter(items["product_id"])
    assert len(per_product) > 400
    assert set(per_product.values()) == {14}, "each product is listed in all 14 languages"
    assert len(set(items["item_id"])) == len(items)
    groups = {c.split("/")[0] for c in items["category"]}
    assert groups == {"Objects", "Food & Drink", "Activities"}
    rows = {r["item_id"]: r for r in items.select(range(28))}
    grapes_de = rows.get("emoji:1f347:de")
    assert grapes_de and grapes_de["title"].lower() == "trauben" and grapes_de["market"] == "DE"


def emoji_market_languages():
    return emoji_market.LANGUAGES


@pytest.mark.skipif(not emoji_market.EMOJI_FONT.exists(), reason="Noto Color Emoji font not installed")
def test_emoji_market_images_are_real_colour_renders(emoji_market):
    paths = sorted(set(emoji_market.items["image_path"]))
    assert None not in paths
    img = np.asarray(Image.open(paths[0]).convert("RGB"), dtype=float)
    assert img.shape == (128, 128, 3)
    assert img.std() > 20, "not blank"
    channel_spread = np.abs(img[..., 0] - img[..., 2]).mean()
    assert channel_spread > 5, "a colour image, not greyscale"


def test_emoji_market_events_are_a_consistent_simulation(emoji_market):
    ev = emoji_market.events.to_pandas()
    items = emoji_market.items.to_pandas().set_index("item_id")
    assert "SIMULATION" in emoji_market.describe()
    assert ev["timestamp"].is_monotonic_increasing
    assert ev["item_id"].isin(items.index).all()
    launched = items.loc[ev["item_id"], "created_at"].to_numpy()
    assert (launched <= ev["timestamp"].to_numpy()).all(), "nobody buys a product before it launches"
    assert (items["created_at"] > items["created_at"].min()).any(), "some products arrive later (cold start)"
    assert (ev["market"].to_numpy() == items.loc[ev["item_id"], "market"].to_numpy()).all()
    home = ev.groupby("user_id")["market"].agg(lambda m: m.value_counts().index[0])
    cross = (ev["market"] != ev["user_id"].map(home)).mean()
    assert 0.05 < cross < 0.3, f"cross-market share {cross:.2f} near the configured 0.15"
    assert set(ev["kind"]) == {"view", "click", "cart", "purchase"}


def test_shopper_simulation_is_seeded(emoji_market):
    small = shoppers.ShopperSimConfig(n_shoppers=30, seed=7)
    a = shoppers.simulate(emoji_market.items, small).to_pandas()
    b = shoppers.simulate(emoji_market.items, small).to_pandas()
    c = shoppers.simulate(emoji_market.items, shoppers.ShopperSimConfig(n_shoppers=30, seed=8)).to_pandas()
    assert a.equals(b)
    assert not a.equals(c)


def test_unknown_dataset_is_a_user_error():
    with pytest.raises(UserError, match="unknown dataset 'nope'.*ml-1m"):
        datasets.load("nope")


def test_fetch_is_atomic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MMREC_CACHE", str(tmp_path))
    spec = datasets.REGISTRY["ml-100k"]

    def broken():
        raise RuntimeError("interrupted half way")

    monkeypatch.setitem(datasets.REGISTRY, "ml-100k", datasets.DatasetSpec(
        spec.name, spec.summary, spec.source, spec.version, broken))
    with pytest.raises(RuntimeError):
        datasets.fetch("ml-100k")
    assert not datasets.is_fetched("ml-100k")
    monkeypatch.setitem(datasets.REGISTRY, "ml-100k", spec)
    folder = datasets.fetch("ml-100k")
    assert Path(folder, "meta.json").exists() and str(folder).startswith(str(tmp_path))
    stamp = Path(folder, "meta.json").stat().st_mtime_ns
    assert datasets.load("ml-100k").n_users == 943
    assert Path(folder, "meta.json").stat().st_mtime_ns == stamp, "second load reuses the cache"

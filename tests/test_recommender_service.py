"""The fusion transformer behind the real service: `mmrec serve --model` in a subprocess, talked to over HTTP.

The workflow a user follows: serve a catalog, train a checkpoint on the vectors the service stores
(`mmrec.model.vectors.store_vectors` with the data dir's encoder settings) and on the emoji-market
shopper SIMULATION's events, restart the service with `--model`. Then: a product upserted a second ago
comes back from /recommend, an event posted to /events changes the next result, and a market filter
restricts results to what that market sells. Text-only service (use-m3) to keep it fast.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from service_support import REPO, Server  # `mmrec serve` (use-m3 text) in a subprocess on a free port

MARKETS = ("US", "DE", "JP")


def _products(items, split):
    """Each listing's product id, aligned with the split (listings of a product share an ID row)."""
    import numpy as np

    product_of = dict(zip(items["item_id"], items["product_id"]))
    return np.asarray([product_of[i] for i in split.item_ids], dtype=object)


@pytest.fixture(scope="module")
def served(tmp_path_factory, emoji_market):
    from evaluation.splits import leave_one_out
    from mmrec.model.vectors import store_vectors
    from mmrec.model.transformer import FusionConfig
    from mmrec.model import FusionRecommender, TrainConfig

    root = tmp_path_factory.mktemp("fusion-svc")
    data = root / "data"
    items = emoji_market.items.filter(lambda m: m in MARKETS, input_columns="market")
    keep = set(items["item_id"])
    events = emoji_market.events.filter(lambda i: i in keep, input_columns="item_id")
    rows = items.to_list()
    srv = Server(data, "--image-encoder", "none")
    try:
        for s in range(0, len(rows), 256):
            body = [{k: r[k] for k in ("item_id", "product_id", "title", "language", "market", "category")}
                    for r in rows[s : s + 256]]
            assert srv.client.post("/items", json={"items": body}).status_code == 200
    finally:
        srv.stop()
    vectors = store_vectors(items, str(data), progress=False)  # the space the service stores
    split = leave_one_out(events, items=items, seed=0)
    rec = FusionRecommender(vectors.aligned(split.item_ids), FusionConfig(content_dim=vectors.dim, hidden=32, max_len=50),
                            TrainConfig(epochs=12, lr=3e-3, warmup_steps=20, progress=False),
                            item_ids=split.item_ids, item_market=split.item_market, item_products=_products(items, split),
                            vectors_version=vectors.version).fit(split.train)
    ckpt = rec.save(root / "model.pt")
    srv = Server(data, "--image-encoder", "none", "--model", str(ckpt))
    by_id = {r["item_id"]: r for r in rows}
    yield srv.client, by_id, root, events
    srv.stop()


def _listing(by_id, product: str, market: str) -> str:
    return next(i for i, r in by_id.items() if r["product_id"] == product and r["market"] == market)


def _subgroup(by_id, result: dict) -> str:
    return (by_id.get(result["item_id"], result).get("category") or "/").split("/")[1]


def test_a_product_upserted_a_second_ago_comes_back(served):
    api, by_id, _, _ = served
    new = [{"item_id": "new:grapes-bio:de", "product_id": "new:grapes-bio", "title": "Bio-Weintrauben, frisch und süß",
            "language": "de", "market": "DE", "category": "Food & Drink/food-fruit"},
           {"item_id": "new:football:de", "product_id": "new:football", "title": "Fußball aus Leder",
            "language": "de", "market": "DE", "category": "Activities/sport"}]
    assert api.post("/items", json={"items": new}).status_code == 200
    grapes = _listing(by_id, "emoji:1f347", "DE")
    body = api.post("/recommend", json={"history": [grapes], "k": 30, "market": "DE"}).json()
    ids = [r["item_id"] for r in body["results"]]
    assert "new:grapes-bio:de" in ids and "new:football:de" not in ids, ids
    hit = body["results"][ids.index("new:grapes-bio:de")]
    assert hit["reasons"][0]["item_id"] == grapes and hit["market"] == "DE"
    ball = _listing(by_id, "emoji:26bd", "DE")
    body = api.post("/recommend", json={"history": [ball], "k": 30, "market": "DE"}).json()
    assert "new:football:de" in [r["item_id"] for r in body["results"]]


def test_an_event_changes_the_next_recommendation(served):
    api, by_id, _, _ = served
    user = "fusion-shopper"
    fruit = [_listing(by_id, p, "US") for p in ("emoji:1f347", "emoji:1f34c", "emoji:1f34e")]  # grapes, banana, apple
    events = [{"user_id": user, "item_id": i, "kind": "view", "timestamp": 1_800_000_000 + 60 * n}
              for n, i in enumerate(fruit)]
    assert api.post("/events", json={"events": events}).json() == {"appended": 3}
    first = api.post("/recommend", json={"user_id": user, "k": 10, "market": "US"}).json()
    assert first["history_used"] == fruit[::-1]
    assert sum(_subgroup(by_id, r) == "sport" for r in first["results"]) == 0
    ball = _listing(by_id, "emoji:26bd", "US")
    api.post("/events", json={"events": [{"user_id": user, "item_id": ball, "kind": "click",
                                          "timestamp": 1_800_000_600}]})
    second = api.post("/recommend", json={"user_id": user, "k": 10, "market": "US"}).json()
    assert second["history_used"][0] == ball
    assert sum(_subgroup(by_id, r) == "sport" for r in second["results"]) >= 3
    assert [r["item_id"] for r in second["results"]] != [r["item_id"] for r in first["results"]]


def test_a_history_in_one_market_is_served_in_another(served):
    api, by_id, _, _ = served
    history = [_listing(by_id, p, "DE") for p in ("emoji:1f347", "emoji:1f34c")]
    body = api.post("/recommend", json={"history": history, "k": 10, "market": "JP"}).json()
    assert len(body["results"]) == 10 and {r["market"] for r in body["results"]} == {"JP"}
    assert sum(_subgroup(by_id, r) == "food-fruit" for r in body["results"]) >= 5
    assert not {r["product_id"] for r in body["results"]} & {"emoji:1f347", "emoji:1f34c"}


def test_a_checkpoint_from_another_vector_space_is_refused(served, tmp_path):
    """Serving a checkpoint against vectors it was not trained on fails at startup, with the reason."""

    from mmrec.model.transformer import FusionConfig, FusionTransformer
    from mmrec.model import save_checkpoint

    _, _, root, _ = served
    other = save_checkpoint(tmp_path / "other.pt", FusionTransformer(FusionConfig(content_dim=512)), id_items=[],
                            vectors_version="0123456789abcdef")
    proc = subprocess.run([sys.executable, "-m", "mmrec.cli", "serve", "--port", "0", "--data-dir",
                           str(tmp_path / "fresh"), "--text-encoder", "use-m3", "--image-encoder", "none",
                           "--model", str(other)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2
    assert "trained on vector space" in proc.stderr


def test_a_checkpoint_holds_nothing_of_its_users(served):
    """What erasure has to know (SECURITY.md): the fusion model has no per-user parameters. A user is only
    ever the sequence of their events, read at request time; the checkpoint keeps the config, the weights
    (no table indexed by user), the item/product ID vocabulary and a training report."""
    import torch

    _, _, root, events = served
    users = set(events["user_id"])
    payload = torch.load(root / "model.pt", map_location="cpu", weights_only=True)
    assert set(payload) == {"format", "config", "state_dict", "id_items", "id_key", "vectors_version", "extra"}
    assert not any("user" in name for name in payload["state_dict"])
    n_ids = len(payload["id_items"]) + 1
    for name, tensor in payload["state_dict"].items():  # no dimension grows with the number of users
        assert len(users) not in tensor.shape or len(users) == n_ids, name

    def strings(x):
        if isinstance(x, str):
            yield x
        elif isinstance(x, dict):
            for k, v in x.items():
                yield from strings(k)
                yield from strings(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from strings(v)

    assert users.isdisjoint(strings({k: v for k, v in payload.items() if k != "state_dict"}))

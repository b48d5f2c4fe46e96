"""The HTTP service, tested as users meet it: a real `mmrec serve` process (uvicorn) on a free port,
talked to over HTTP. Real encoders (USE multilingual for text: fast and 16 languages; EfficientNet-Lite0
for images) and the real embedded Qdrant engine; kill -9 durability uses a real SIGKILL."""
from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
TEXT_ENCODER = "use-m3"

PRODUCTS = {
    "shoe": {"en": "red running shoes", "de": "rote Laufschuhe", "fr": "chaussures de course rouges"},
    "banana": {"en": "banana", "de": "Banane", "fr": "banane"},
    "hammer": {"en": "claw hammer", "de": "Klauenhammer", "fr": "marteau"},
    "umbrella": {"en": "umbrella", "de": "Regenschirm", "fr": "parapluie"},
    "bicycle": {"en": "bicycle", "de": "Fahrrad", "fr": "vélo"},
    "coffee": {"en": "cup of coffee", "de": "Tasse Kaffee", "fr": "tasse de café"},
    "guitar": {"en": "acoustic guitar", "de": "Akustikgitarre", "fr": "guitare acoustique"},
    "watch": {"en": "wrist watch", "de": "Armbanduhr", "fr": "montre-bracelet"},
}
MARKET = {"en": "us", "de": "de", "fr": "fr"}
# Queries in languages none of the listings are in.
QUERIES = {
    "shoe": ["zapatillas para correr", "ランニングシューズ"], "banana": ["plátano", "банан"],
    "hammer": ["martillo", "молоток"], "umbrella": ["paraguas", "傘"], "bicycle": ["bicicleta", "велосипед"],
    "coffee": ["taza de café", "コーヒー"], "guitar": ["guitarra", "гитара"], "watch": ["reloj de pulsera", "腕時計"],
}


def catalog_items() -> list[dict]:
    return [
        {"item_id": f"{p}:{lang}", "product_id": p, "title": title, "language": lang, "market": MARKET[lang],
         "category": "demo", "price": 10.0 + i, "in_stock": p != "watch"}
        for i, (p, titles) in enumerate(PRODUCTS.items()) for lang, title in titles.items()
    ]


def png_bytes(kind: str) -> bytes:
    image = Image.new("RGB", (160, 160), "white")
    draw = ImageDraw.Draw(image)
    if kind == "stripes":
        for x in range(0, 160, 20):
            draw.rectangle([x, 0, x + 9, 159], fill="black")
    else:
        draw.ellipse([30, 30, 130, 130], fill=(200, 30, 30))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mmrec serve` in a subprocess; `.client` talks to it."""

    def __init__(self, data_dir: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        self.log = open(data_dir.parent / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmrec.cli", "serve", "--port", str(self.port), "--data-dir", str(data_dir),
             "--text-encoder", TEXT_ENCODER, *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 240
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mmrec serve exited with {self.proc.returncode}: {Path(self.log.name).read_text()}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("mmrec serve did not come up in 240 s")
            time.sleep(0.25)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.client.close()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("svc") / "data")
    response = srv.client.post("/items", json={"items": catalog_items()})
    assert response.status_code == 200, response.text
    yield srv
    srv.stop()


@pytest.fixture
def api(server) -> httpx.Client:
    return server.client


def test_health_and_docs(api):
    health = api.get("/healthz").json()
    assert health["status"] == "ok" and health["items"] >= len(catalog_items())
    assert api.get("/docs").status_code == 200
    spec = api.get("/openapi.json").json()
    assert {"/items", "/search", "/search/image", "/recommend", "/events", "/items/{item_id}/similar"} <= set(spec["paths"])


@pytest.mark.parametrize("product", list(QUERIES))
def test_query_in_another_language_finds_the_product_first(api, product):
    for q in QUERIES[product]:
        results = api.get("/search", params={"q": q, "k": 5}).json()["results"]
        assert results[0]["product_id"] == product, (q, results[0])
        products = [r["product_id"] for r in results]
        assert len(products) == len(set(products)), "one result per product, not one per language"


def test_search_filters(api):
    results = api.get("/search", params={"q": "plátano", "k": 10, "market": "de"}).json()["results"]
    assert results[0]["item_id"] == "banana:de"
    assert all(r["market"] == "de" for r in results)
    results = api.get("/search", params={"q": "reloj de pulsera", "k": 10, "in_stock": "true"}).json()["results"]
    assert "watch" not in {r["product_id"] for r in results}
    results = api.get("/search", params={"q": "banana", "language": "fr", "k": 3}).json()["results"]
    assert [r["language"] for r in results] == ["fr"] * len(results) and results[0]["item_id"] == "banana:fr"


def test_get_and_delete_items(api):
    item = api.get("/items/hammer:de").json()
    assert item["title"] == "Klauenhammer" and item["product_id"] == "hammer" and item["market"] == "de"
    assert api.post("/items", json={"items": [{"item_id": "tmp:1", "title": "Gummistiefel", "language": "de"}]}).status_code == 200
    assert api.get("/items/tmp:1").status_code == 200
    assert api.get("/search", params={"q": "rain boots", "k": 1}).json()["results"][0]["item_id"] == "tmp:1"
    assert api.delete("/items/tmp:1").json() == {"deleted": "tmp:1"}
    assert api.get("/items/tmp:1").status_code == 404
    assert api.delete("/items/tmp:1").status_code == 404
    assert "tmp:1" not in {r["item_id"] for r in api.get("/search", params={"q": "rain boots"}).json()["results"]}


def test_similar_items_are_other_products(api):
    results = api.get("/items/banana:en/similar", params={"k": 5}).json()["results"]
    assert results and "banana" not in {r["product_id"] for r in results}
    assert api.get("/items/nope/similar").status_code == 404


def test_images_upsert_and_image_search(api):
    items = [
        {"item_id": "img:stripes", "title": "striped zebra poster", "image_base64": base64.b64encode(png_bytes("stripes")).decode()},
        {"item_id": "img:dot", "title": "red dot sticker", "image_base64": base64.b64encode(png_bytes("dot")).decode()},
    ]
    assert api.post("/items", json={"items": items}).status_code == 200
    assert api.get("/items/img:stripes").json()["has_image"] is True
    for kind in ("stripes", "dot"):
        response = api.post("/search/image", files={"file": (f"{kind}.png", png_bytes(kind), "image/png")},
                            params={"k": 3})
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["item_id"] == f"img:{'stripes' if kind == 'stripes' else 'dot'}"


def test_recommend_from_events_reflects_new_events(api):
    user = "user-rec"
    assert api.post("/events", json={"events": [{"user_id": user, "item_id": "banana:en", "kind": "purchase"}]}).json() == {"appended": 1}
    first = api.post("/recommend", json={"user_id": user, "k": 4}).json()
    assert first["history_used"] == ["banana:en"]
    assert first["results"] and all(r["product_id"] != "banana" for r in first["results"])
    assert all(r["reasons"][0]["item_id"] == "banana:en" for r in first["results"])
    api.post("/events", json={"events": [{"user_id": user, "item_id": "guitar:de", "kind": "view"},
                                         {"user_id": user, "item_id": "guitar:fr", "kind": "click"}]})
    second = api.post("/recommend", json={"user_id": user, "k": 4}).json()
    assert second["history_used"][:2] == ["guitar:fr", "guitar:de"]  # newest first
    assert {"guitar", "banana"}.isdisjoint({r["product_id"] for r in second["results"]})
    assert second["results"] != first["results"]
    market = api.post("/recommend", json={"user_id": user, "k": 4, "market": "fr"}).json()
    assert all(r["market"] == "fr" for r in market["results"])


def test_recommend_for_a_history_with_reasons(api):
    body = api.post("/recommend", json={"history": ["coffee:en", "bicycle:de"], "k": 3}).json()
    assert body["user_id"] is None and set(body["history_used"]) == {"coffee:en", "bicycle:de"}
    for r in body["results"]:
        assert r["product_id"] not in ("coffee", "bicycle")
        assert {x["item_id"] for x in r["reasons"]} <= {"coffee:en", "bicycle:de"}
        assert r["reasons"] == sorted(r["reasons"], key=lambda x: -x["similarity"])


def test_low_ratings_count_against_items(api):
    user = "user-neg"
    api.post("/events", json={"events": [{"user_id": user, "item_id": "shoe:en", "kind": "rating", "value": 5},
                                         {"user_id": user, "item_id": "hammer:en", "kind": "rating", "value": 1}]})
    body = api.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert body["history_used"] == ["shoe:en"]
    assert "hammer" not in {r["product_id"] for r in body["results"]}


BAD_REQUESTS = [
    ("post", "/items", {"json": {"items": []}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x"}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "   "}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t", "price": -1}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t", "colour": "red"}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t", "image_path": "/a", "image_base64": "AA=="}]}}, 422),
    ("post", "/items", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t", "image_base64": "***"}]}}, 400),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t", "image_base64": "aGVsbG8="}]}}, 400),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t", "image_path": "/no/such/file.png"}]}}, 400),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t"}, {"item_id": "x", "title": "u"}]}}, 400),
    ("get", "/search", {"params": {"q": ""}}, 422),
    ("get", "/search", {"params": {"q": "   "}}, 400),
    ("get", "/search", {"params": {"q": "shoes", "k": 0}}, 422),
    ("get", "/search", {"params": {"q": "shoes", "k": 1000}}, 422),
    ("get", "/search", {"params": {"q": "shoes", "k": "many"}}, 422),
    ("get", "/search", {}, 422),
    ("post", "/search/image", {"files": {"file": ("x.png", b"not an image", "image/png")}}, 400),
    ("post", "/search/image", {"files": {"file": ("x.png", b"", "image/png")}}, 400),
    ("post", "/recommend", {"json": {}}, 422),
    ("post", "/recommend", {"json": {"user_id": "a", "history": ["banana:en"]}}, 422),
    ("post", "/recommend", {"json": {"history": []}}, 422),
    ("post", "/recommend", {"json": {"history": ["banana:en"], "k": 0}}, 422),
    ("post", "/recommend", {"json": {"history": ["no-such-item"]}}, 404),
    ("post", "/recommend", {"json": {"user_id": "never-seen"}}, 404),
    ("post", "/events", {"json": {"events": [{"user_id": "u", "item_id": "banana:en", "kind": "stare"}]}}, 422),
    ("post", "/events", {"json": {"events": [{"user_id": "u", "item_id": "banana:en", "timestamp": -5}]}}, 422),
    ("get", "/items/no-such-item", {}, 404),
    ("delete", "/items/no-such-item", {}, 404),
]


@pytest.mark.parametrize("method,path,kwargs,status", BAD_REQUESTS)
def test_bad_input_is_a_4xx_with_a_reason(api, method, path, kwargs, status):
    before = api.get("/healthz").json()
    response = getattr(api, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    after = api.get("/healthz").json()
    assert (after["items"], after["events"]) == (before["items"], before["events"])  # nothing changed


def test_a_failed_batch_writes_nothing(api):
    batch = {"items": [{"item_id": "good:1", "title": "garden hose"},
                       {"item_id": "bad:1", "title": "broken", "image_base64": base64.b64encode(b"GIF89a-broken").decode()}]}
    response = api.post("/items", json=batch)
    assert response.status_code == 400 and "bad:1" in response.text
    assert api.get("/items/good:1").status_code == 404
    events = {"events": [{"user_id": "u-fail", "item_id": "banana:en"}, {"user_id": "u-fail", "item_id": "ghost"}]}
    response = api.post("/events", json=events)
    assert response.status_code == 404 and "ghost" in response.text
    assert api.post("/recommend", json={"user_id": "u-fail"}).status_code == 404  # no event was kept


def test_oversized_image_is_413(api):
    big = base64.b64encode(b"\x89PNG" + b"0" * (8 * 1024 * 1024 + 10)).decode()
    response = api.post("/items", json={"items": [{"item_id": "huge", "title": "t", "image_base64": big}]})
    assert response.status_code in (413, 422)
    response = api.post("/search/image", files={"file": ("big.png", b"0" * (8 * 1024 * 1024 + 1), "image/png")})
    assert response.status_code == 413


def test_acknowledged_items_and_events_survive_kill_9(tmp_path):
    """The issue's bar: kill -9 the server after acknowledged writes; a restart on the same data dir has
    them. Then a second server on that dir must fail clearly instead of corrupting it."""
    data = tmp_path / "data"
    srv = Server(data, "--image-encoder", "none")
    try:
        items = [{"item_id": f"k{i}", "product_id": f"p{i}", "title": title, "language": "en"}
                 for i, title in enumerate(["garden hose", "teapot", "ski goggles", "violin", "pillow"])]
        assert srv.client.post("/items", json={"items": items}).status_code == 200
        assert srv.client.post("/items", json={"items": [{"item_id": "k9", "title": "snow shovel"}]}).status_code == 200
        assert srv.client.post("/events", json={"events": [{"user_id": "u", "item_id": "k1"}]}).status_code == 200
    finally:
        srv.kill9()
    assert srv.proc.returncode == -signal.SIGKILL
    again = Server(data, "--image-encoder", "none")
    try:
        health = again.client.get("/healthz").json()
        assert health["items"] == 6 and health["events"] == 1
        assert again.client.get("/items/k9").json()["title"] == "snow shovel"
        assert again.client.get("/search", params={"q": "Schneeschaufel", "k": 1}).json()["results"][0]["item_id"] == "k9"
        assert again.client.post("/recommend", json={"user_id": "u"}).json()["history_used"] == ["k1"]
        # a second server on the same data dir is refused with one clear line (the store is locked)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        second = subprocess.run(
            [sys.executable, "-m", "mmrec.cli", "serve", "--port", str(free_port()), "--data-dir", str(data),
             "--text-encoder", TEXT_ENCODER, "--image-encoder", "none"],
            capture_output=True, text=True, env=env, timeout=240,
        )
        assert second.returncode == 2
        assert "already open" in second.stderr and "Traceback" not in second.stderr
        assert again.client.get("/healthz").status_code == 200
    finally:
        again.stop()

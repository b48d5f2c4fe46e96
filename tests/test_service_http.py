"""The HTTP service as clients meet it: the app `mmrec serve` runs, over real encoders (USE multilingual
for text, EfficientNet-Lite0 for images) and the real embedded Qdrant engine, talked to in-process through
FastAPI's TestClient (httpx over ASGI, no socket: fast). What needs a real process stays one: kill -9
durability here (a real SIGKILL), the API keys, limits and erasure in test_service_security.py, the fuzzing
in test_service_schemathesis.py."""
from __future__ import annotations

import base64
import io
import re
import signal
from urllib.parse import quote

import pytest

from service_support import (
    QUERIES, Server, catalog_items, free_port, in_process_client, mmrec_cli, open_test_services, png_bytes,
)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from mmrec.serving.app import create_app

    app = create_app(open_test_services(tmp_path_factory.mktemp("svc") / "data"))
    with in_process_client(app) as client:  # runs the app's lifespan: the services close at the end
        response = client.post("/items", json={"items": catalog_items()})
        assert response.status_code == 200, response.text
        yield client


def test_health_and_docs(api):
    health = api.get("/healthz").json()
    assert health["status"] == "ok" and health["items"] >= len(catalog_items())
    spec = api.get("/openapi.json").json()
    assert {"/items", "/search", "/search/image", "/recommend", "/events", "/items/{item_id}/similar",
            "/users/{user_id}"} <= set(spec["paths"])
    import mmrec

    assert spec["info"]["version"] == mmrec.__version__


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_from_local_files_only(api, page):
    html = api.get(page)
    assert html.status_code == 200
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html.text)
    assert links and all(link.startswith("/") and not link.startswith("//") for link in links), links
    assert "http://" not in html.text and "https://" not in html.text  # no CDN, no web fonts
    for link in links:
        assert api.get(link).status_code == 200, link


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
        assert r["reasons"] == sorted(r["reasons"], key=lambda x: -x["attribution"])
        assert all(x["attribution"] > 0 for x in r["reasons"])  # positive only: removing it lowers the result


def test_low_ratings_count_against_items(api):
    user = "user-neg"
    api.post("/events", json={"events": [{"user_id": user, "item_id": "shoe:en", "kind": "rating", "value": 5},
                                         {"user_id": user, "item_id": "hammer:en", "kind": "rating", "value": 1}]})
    body = api.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert body["history_used"] == ["shoe:en"]
    assert "hammer" not in {r["product_id"] for r in body["results"]}


JSON = {"content-type": "application/json"}
BAD_REQUESTS = [
    ("post", "/items", {"json": {"items": []}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x"}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "   "}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t", "price": -1}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t", "colour": "red"}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t", "image_path": "/a", "image_base64": "AA=="}]}}, 422),
    ("post", "/items", {"content": b"{not json", "headers": JSON}, 422),
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
    ("post", "/recommend", {"json": {"history": ["banana:en"], "k": True}}, 422),
    ("post", "/recommend", {"json": {"history": ["banana:en"], "k": 2.5}}, 422),
    ("post", "/recommend", {"json": {"history": ["banana:en"], "market": "DE"}}, 400),
    ("post", "/recommend", {"content": b'{"history": ["\\ud800"]}', "headers": JSON}, 422),
    ("post", "/recommend", {"content": b'{"\\udfff": 1}', "headers": JSON}, 422),
    ("post", "/items", {"content": b'{"items": [{"item_id": "x", "title": "\\ud800"}]}', "headers": JSON}, 422),
    ("post", "/events", {"content": b'{"events": [{"user_id": "\\ud800", "item_id": "banana:en"}]}', "headers": JSON}, 422),
    ("post", "/recommend", {"content": b'{"history": ["\xff\xfe"]}', "headers": JSON}, 400),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t\x00"}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "\x1b[31mscam"}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "\ufeff"}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "\u200b \u200b"}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x\x1b", "title": "t"}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t", "in_stock": 1}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t", "price": True}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x/similar", "title": "t"}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "a/../b", "title": "t"}]}}, 422),
    ("post", "/items", {"json": {"items": [{"item_id": "x", "title": "t", "image_path": "/etc/passwd"}]}}, 400),
    ("get", "/search", {"params": {"q": "shoes", "k": "true"}}, 422),
    ("get", "/search", {"params": {"q": "shoes", "market": "DE"}}, 400),
    ("get", "/search", {"params": {"q": "shoes", "market": "xx"}}, 400),
    ("get", "/search", {"params": {"q": "\x1b[2J"}}, 400),
    ("get", "/search?q=%ff%fe", {}, 400),
    ("get", "/items/banana:en/similar", {"params": {"market": "US"}}, 400),
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
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and len(detail) < 600
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
    assert api.post("/recommend", json={"user_id": "u-fail"}).json()["history_used"] == []  # no event was kept


def test_oversized_image_is_413(api):
    big = base64.b64encode(b"\x89PNG" + b"0" * (8 * 1024 * 1024 + 10)).decode()
    response = api.post("/items", json={"items": [{"item_id": "huge", "title": "t", "image_base64": big}]})
    assert response.status_code in (413, 422)
    response = api.post("/search/image", files={"file": ("big.png", b"0" * (8 * 1024 * 1024 + 1), "image/png")})
    assert response.status_code == 413


def test_a_decompression_bomb_is_413_before_it_is_decoded(api):
    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, "PNG")  # 400 M pixels in ~50 kB
    bomb = out.getvalue()
    response = api.post("/items", json={"items": [{"item_id": "bomb", "title": "t",
                                                   "image_base64": base64.b64encode(bomb).decode()}]})
    assert response.status_code == 413 and "pixels" in response.json()["detail"]
    response = api.post("/search/image", files={"file": ("bomb.png", bomb, "image/png")})
    assert response.status_code == 413 and "pixels" in response.json()["detail"]
    assert api.get("/items/bomb").status_code == 404


def test_errors_never_echo_the_input_or_memory_addresses(api):
    long = "Z" * 50_000
    for body in ({"items": [{"item_id": "x", "title": long, "colour": long}]},
                 {"items": [{"item_id": "x", "title": "t", long: 1}]},
                 {"history": [long]}):
        path = "/recommend" if "history" in body else "/items"
        response = api.post(path, json=body)
        assert response.status_code == 422 and len(response.content) < 600 and "ZZZZZZZZZZZZZZZZZZZZ" * 6 not in response.text
    response = api.post("/search/image", files={"file": ("x.png", b"GIF89a-broken", "image/png")})
    assert response.status_code == 400 and " at 0x" not in response.text


def test_recommend_leaves_unknown_history_ids_out(api):
    """Issue #16: unknown ids in a history are dropped (and named: item ids are not secret), not a 404."""
    known = api.post("/recommend", json={"history": ["coffee:en"], "k": 3}).json()
    mixed = api.post("/recommend", json={"history": ["gone:1", "coffee:en", "gone:2"], "k": 3})
    assert mixed.status_code == 200
    body = mixed.json()
    assert body["history_used"] == ["coffee:en"] and body["history_dropped"] == ["gone:1", "gone:2"]
    assert body["results"] == known["results"]
    only_unknown = api.post("/recommend", json={"history": ["gone:1"]}).json()
    assert re.fullmatch(r"[0-9a-f]{32}", only_unknown.pop("request_id")) and only_unknown.pop("variant") == "default"
    assert only_unknown == {"user_id": None, "history_used": [], "history_dropped": ["gone:1"], "results": []}


def test_users_without_events_cannot_be_told_apart(api):
    """A user never seen, one whose events were erased, and one whose only item was deleted all get the
    same answer: /recommend does not tell which users exist."""
    def answer(user):
        response = api.post("/recommend", json={"user_id": user, "k": 5})
        assert response.status_code == 200
        return {k: v for k, v in response.json().items() if k not in ("user_id", "request_id")}

    never = answer("never-seen")
    assert never == {"variant": "default", "history_used": [], "history_dropped": [], "results": []}
    api.post("/events", json={"events": [{"user_id": "erased/1", "item_id": "banana:en"}]})
    assert answer("erased/1")["history_used"] == ["banana:en"]
    erased = api.delete("/users/erased/1").json()
    assert erased == {"user_id": "erased/1", "events_deleted": 1, "impressions_deleted": 1}
    assert answer("erased/1") == never
    assert api.delete(f"/users/{quote('erased/1', safe='')}").json()["events_deleted"] == 0
    # deleting an item removes it from the histories that used it, even if the id comes back later
    assert api.post("/items", json={"items": [{"item_id": "short-lived", "title": "paper kite"}]}).status_code == 200
    api.post("/events", json={"events": [{"user_id": "kite-fan", "item_id": "short-lived"}]})
    assert api.delete("/items/short-lived").status_code == 200
    assert api.post("/items", json={"items": [{"item_id": "short-lived", "title": "paper kite"}]}).status_code == 200
    assert answer("kite-fan") == never
    api.delete("/items/short-lived")


ODD_IDS = ["sku/123", "a/b/c", "/leading", "trailing/", "a//b", "with space", "q?x=1#frag", "100%", "ü/日本/ид",
           "similar", "x/similar/y", "plus+sign", "semi;colon", "back\\slash"]
# (an id with a literal "%2F" is tested through the real server in test_service_security.py: Starlette's
# TestClient percent-decodes the path twice, uvicorn once)


@pytest.mark.parametrize("item_id", ODD_IDS)
def test_any_accepted_id_can_be_read_and_deleted(api, item_id):
    assert api.post("/items", json={"items": [{"item_id": item_id, "title": "odd id lamp"}]}).status_code == 200
    url = f"/items/{quote(item_id, safe='')}"
    assert api.get(url).json()["item_id"] == item_id
    assert api.get(f"{url}/similar", params={"k": 2}).status_code == 200
    assert api.delete(url).json() == {"deleted": item_id}
    assert api.get(url).status_code == 404


def test_an_unknown_market_lists_the_known_ones(api):
    response = api.get("/search", params={"q": "banana", "market": "DE"})
    assert response.status_code == 400
    assert "case-sensitive" in response.json()["detail"] and "de, fr, us" in response.json()["detail"]
    assert api.get("/search", params={"q": "banana", "market": "de"}).status_code == 200


def test_cors_is_opt_in(api):
    """No origin may call from a browser unless named; a named one gets CORS headers and its writes pass."""
    from mmrec.serving.api.settings import ServiceSettings
    from mmrec.serving.app import create_app

    shop = "https://shop.example"
    preflight = {"Origin": shop, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "api-key"}
    assert "access-control-allow-origin" not in api.options("/items", headers=preflight).headers
    event = {"user_id": "c", "item_id": "banana:en"}
    assert api.post("/events", headers={"Origin": shop}, json={"events": [event]}).status_code == 403
    services = api.app.state.services  # the same open services behind a second app (no lifespan: not closed twice)
    cors = in_process_client(create_app(services, ServiceSettings(cors_origins=(shop,))))
    response = cors.options("/items", headers=preflight)
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == shop
    assert "api-key" in response.headers["access-control-allow-headers"]
    response = cors.post("/recommend", headers={"Origin": shop}, json={"history": ["banana:en"], "k": 1})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == shop
    assert cors.post("/recommend", headers={"Origin": "https://evil.example"}, json={"history": ["banana:en"]}).status_code == 403


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
        second = mmrec_cli("serve", "--port", str(free_port()), "--data-dir", str(data),
                           "--text-encoder", "use-m3", "--image-encoder", "none")
        assert second.returncode == 2
        assert "already open" in second.stderr and "Traceback" not in second.stderr
        assert again.client.get("/healthz").status_code == 200
    finally:
        again.stop()

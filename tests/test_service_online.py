"""Issue #18 items 1-2: impressions and outcomes, online A/B.

Pure pieces first (the variant assignment, the report's arithmetic on made-up logs), then the app
in-process with two variants (an untrained fusion-transformer checkpoint vs content-based) over real
encoders and the real embedded store: request ids, impressions, attributed events, GET /metrics/online
and /metrics, erasure of impressions. The bar through a real `mmrec serve --variant ...` process and
`mmrec report online` is the last test."""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import replace

import pytest

from mmrec.data.schema import Event
from mmrec.serving.interaction_log import Attributed, Impression, Shown
from mmrec.serving.online_report import online_report
from mmrec.serving.variants import Variant, assign, check_variants, parse_variant
from service_support import Server, catalog_items, in_process_client, mmrec_cli, open_test_services

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


# --- variants -------------------------------------------------------------------------------------------

def test_assignment_is_deterministic_and_follows_the_shares():
    shares = [("control", 0.7), ("treatment", 0.3)]
    users = [f"user-{n}" for n in range(20_000)]
    first = [assign(u, shares, "exp-1") for u in users]
    assert first == [assign(u, shares, "exp-1") for u in users]  # no state, no seed: every replica agrees
    counts = Counter(first)
    assert abs(counts["treatment"] / len(users) - 0.3) < 0.015
    other = [assign(u, shares, "exp-2") for u in users]  # a new experiment reshuffles users
    assert 0.3 < sum(a != b for a, b in zip(first, other)) / len(users) < 0.5
    assert {assign(u, [("only", 1.0)]) for u in users[:50]} == {"only"}


@pytest.mark.parametrize("spec,error", [
    ("a=content", "name=SOURCE:SHARE"), ("=content:0.5", "a name"), ("a b=content:0.5", "a name"),
    ("a=content:x", "number"), ("a=content:0", "(0, 1]"), ("a=content:1.5", "(0, 1]"), ("a=:0.5", "name=SOURCE"),
])
def test_bad_variant_specs_are_refused(spec, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_variant(spec)


def test_variant_specs_and_share_checks():
    v = parse_variant("model=/ckpt/dir:with-colon/model.pt:0.25")
    assert (v.name, v.source, v.share, v.model) == ("model", "/ckpt/dir:with-colon/model.pt", 0.25, "model.pt")
    assert parse_variant("base=content:0.75").model == "content"
    check_variants([Variant("a", 0.25), Variant("b", 0.75)])
    with pytest.raises(ValueError, match="add up to 1"):
        check_variants([Variant("a", 0.5), Variant("b", 0.6)])
    with pytest.raises(ValueError, match="must differ"):
        check_variants([Variant("a", 0.5), Variant("a", 0.5)])


# --- the report's arithmetic ----------------------------------------------------------------------------

def _impression(rid: str, variant: str, items: int = 3, user: str | None = "u", market: str | None = "de",
                at: float = 1000.0, surface: str = "recommend") -> Impression:
    return Impression(rid, at, surface, variant, "content", user, market,
                      tuple(Shown(f"i{p}", p, 1.0) for p in range(1, items + 1)))


def _outcome(rid: str, kind: str = "click", item: str = "i1", position: int | None = None) -> Attributed:
    return Attributed(Event("u", item, 1, kind=kind), rid, position)


def test_report_counts_each_impression_once_per_metric_and_position():
    shown = [_impression("r1", "a"), _impression("r2", "a", items=1), _impression("r3", "b", market=None),
             _impression("s1", "search", surface="search")]
    outcomes = [_outcome("r1", "click", "i2"), _outcome("r1", "click", "i3"),  # two clicks: one clicked impression
                _outcome("r1", "cart", "i2"), _outcome("r1", "purchase", "i2", position=2),
                _outcome("r3", "click", "not-shown", position=3), _outcome("gone", "click"), _outcome("s1")]
    report = online_report(shown, outcomes, variants=["a", "b"])
    a, b = report.by_variant["a"], report.by_variant["b"]
    assert (a.impressions, a.ctr.successes, a.cart_rate.successes, a.cvr.successes) == (2, 1, 1, 1)
    assert a.ctr.rate == 0.5 and a.ctr.low < 0.5 < a.ctr.high
    assert (b.impressions, b.ctr.successes, b.cvr.successes) == (1, 1, 0)
    assert report.unattributed_events == 1 and report.attributed_events == 6 and report.impressions == 4
    assert set(report.by_surface) == {"recommend", "search"} and report.by_surface["search"].ctr.successes == 1
    assert set(report.by_market) == {"de", "(none)"}
    # positions: i2 and i3 of r1 (looked up), 3 of r3 (given by the client); trials = lists that deep
    assert [report.by_position[p].impressions for p in (1, 2, 3)] == [3, 2, 2]
    assert [report.by_position[p].ctr.successes for p in (1, 2, 3)] == [0, 1, 2]
    assert report.by_position[2].cvr.successes == 1
    assert report.control == "a" and {(c.variant, c.metric) for c in report.comparisons} == {
        ("b", "ctr"), ("b", "cart_rate"), ("b", "cvr")}
    later = online_report(shown, outcomes, since=2000.0)
    assert later.impressions == 0 and later.attributed_events == 0 and later.unattributed_events == 1
    json.dumps(report.to_dict(), allow_nan=False)
    assert "UNDERPOWERED" in report.to_text()


def test_report_compares_variants_and_flags_underpowered_ones():
    def arm(name: str, n: int, clicks: int) -> tuple[list[Impression], list[Attributed]]:
        shown = [_impression(f"{name}{k}", name, user=f"{name}-user{k}") for k in range(n)]
        return shown, [_outcome(f"{name}{k}") for k in range(clicks)]

    (sa, oa), (sb, ob) = arm("a", 4000, 400), arm("b", 4000, 520)  # 10% vs 13% CTR
    big = online_report(sa + sb, oa + ob, control="a", min_lift=0.25)  # 4000 lists: enough to see a 25% lift
    ctr = next(c for c in big.comparisons if c.metric == "ctr")
    assert ctr.diff == pytest.approx(0.03) and ctr.low > 0 and ctr.p_value < 0.001 and not ctr.underpowered
    assert big.by_variant["a"].users == 4000
    (sa, oa), (sb, ob) = arm("a", 100, 10), arm("b", 100, 13)  # the same rates on 100 lists each
    small = online_report(sa + sb, oa + ob, control="a")
    ctr = next(c for c in small.comparisons if c.metric == "ctr")
    assert ctr.low < 0 < ctr.high and ctr.p_value > 0.05
    assert ctr.underpowered and ctr.power < 0.8 and ctr.needed_per_variant > 10_000
    cvr = next(c for c in small.comparisons if c.metric == "cvr")  # no purchase at all: no power to speak of
    assert cvr.underpowered and cvr.power is None


def test_since_accepts_times_dates_and_ages():
    from mmrec.commands.report import parse_since
    from mmrec.errors import UserError

    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("2024-01-01") == 1704067200.0
    assert parse_since("2024-01-01T01:00+01:00") == 1704067200.0
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    with pytest.raises(UserError):
        parse_since("yesterday")


# --- the app in-process, a model variant against a content-based one ------------------------------------

@pytest.fixture(scope="module")
def ab(tmp_path_factory):
    from mmrec.model import FusionConfig, FusionTransformer, save_checkpoint
    from mmrec.serving.app import create_app
    from mmrec.serving.two_stage import load_ranker

    root = tmp_path_factory.mktemp("ab")
    services = open_test_services(root / "data", image_encoder=None)
    catalog = services.catalog
    ckpt = save_checkpoint(root / "model.pt", FusionTransformer(FusionConfig(content_dim=catalog.encoder.dim)),
                           id_items=[], vectors_version=catalog.encoder.space)
    variants = (Variant("model", 0.5, str(ckpt), load_ranker(ckpt, catalog)), Variant("content", 0.5))
    app = create_app(replace(services, variants=variants, experiment="issue-18"))
    with in_process_client(app) as client:
        assert client.post("/items", json={"items": catalog_items()}).status_code == 200
        yield client, root / "data"


def test_recommend_returns_a_request_id_and_logs_what_it_showed(ab):
    client, data = ab
    users = [f"ab-user-{n}" for n in range(12)]
    client.post("/events", json={"events": [{"user_id": u, "item_id": "coffee:en"} for u in users]})
    answers = {u: client.post("/recommend", json={"user_id": u, "k": 3, "market": "de"}).json() for u in users}
    assert all(REQUEST_ID.match(a["request_id"]) for a in answers.values())
    assert len({a["request_id"] for a in answers.values()}) == len(users)
    assert {a["variant"] for a in answers.values()} == {"model", "content"}  # both arms serve
    assert all(a["results"] and a["history_used"] == ["coffee:en"] for a in answers.values())
    for u, a in answers.items():
        assert a["variant"] == assign(u, [("model", 0.5), ("content", 0.5)], "issue-18")
        assert client.post("/recommend", json={"user_id": u, "k": 3}).json()["variant"] == a["variant"]  # sticky
    shown = {i.request_id: i for i in client.app.state.services.events.impressions()}
    for u, a in answers.items():
        impression = shown[a["request_id"]]
        assert (impression.user_id, impression.variant, impression.market) == (u, a["variant"], "de")
        assert impression.model == ("model.pt" if a["variant"] == "model" else "content")
        assert [(s.item_id, s.position) for s in impression.shown] == [(r["item_id"], p) for p, r in
                                                                      enumerate(a["results"], 1)]
        assert [s.score for s in impression.shown] == pytest.approx([r["score"] for r in a["results"]])
    search = client.get("/search", params={"q": "Kaffee", "k": 2, "user_id": "ab-user-0"}).json()
    assert REQUEST_ID.match(search["request_id"])
    logged = {i.request_id: i for i in client.app.state.services.events.impressions()}[search["request_id"]]
    assert (logged.surface, logged.variant, logged.user_id) == ("search", "search", "ab-user-0")
    assert "Kaffee" not in (data / "impressions.jsonl").read_text()  # no query text is kept
    similar = client.get("/items/coffee:en/similar", params={"k": 2}).json()
    assert REQUEST_ID.match(similar["request_id"])


def test_events_with_a_request_id_are_attributed_in_the_online_metrics(ab):
    client, _ = ab
    before = client.get("/metrics/online").json()
    users = [f"clicker-{n}" for n in range(8)]
    answers = [client.post("/recommend", json={"history": ["banana:en"], "k": 3}).json() for _ in users]
    outcomes = []
    for user, a in zip(users, answers):
        top = a["results"][0]["item_id"]
        outcomes.append({"user_id": user, "item_id": top, "kind": "click", "request_id": a["request_id"],
                         "position": 1})
        outcomes.append({"user_id": user, "item_id": top, "kind": "purchase", "request_id": a["request_id"]})
    assert client.post("/events", json={"events": outcomes}).json() == {"appended": 16}
    after = client.get("/metrics/online").json()
    assert list(after["by_variant"]) == ["model", "content"] and after["control"] == "model"
    for name, group in after["by_variant"].items():
        served = sum(a["variant"] == name for a in answers)
        old = before["by_variant"][name]
        assert group["impressions"] == old["impressions"] + served
        assert group["ctr"]["successes"] == old["ctr"]["successes"] + served
        assert group["cvr"]["successes"] == old["cvr"]["successes"] + served
        assert group["ctr"]["low"] <= group["ctr"]["rate"] <= group["ctr"]["high"]
    assert after["by_position"]["1"]["ctr"]["successes"] == before["by_position"]["1"]["ctr"]["successes"] + 8
    ctr = next(c for c in after["comparisons"] if c["metric"] == "ctr")
    assert ctr["variant"] == "content" and ctr["low"] <= ctr["diff"] <= ctr["high"] and ctr["underpowered"]
    assert client.get("/metrics/online", params={"control": "content"}).json()["comparisons"][0]["variant"] == "model"
    assert client.get("/metrics/online", params={"control": "nope"}).status_code == 400
    assert client.get("/metrics/online", params={"since": time.time() + 60}).json()["impressions"] == 0


@pytest.mark.parametrize("event,status", [
    ({"position": 2}, 422),  # a position needs the request it was in
    ({"request_id": "not-a-request-id"}, 422),
    ({"request_id": "0" * 32, "position": 0}, 422),
    ({"request_id": "0" * 32, "position": 101}, 422),
    ({"request_id": "0" * 32, "position": True}, 422),
])
def test_bad_attributions_are_refused(ab, event, status):
    client, _ = ab
    response = client.post("/events", json={"events": [{"user_id": "u", "item_id": "banana:en", **event}]})
    assert response.status_code == status and response.json()["detail"]
    assert "not-a-request-id" not in response.text


def test_prometheus_metrics_count_requests_per_route(ab):
    client, _ = ab
    client.post("/recommend", json={"user_id": "prom-user-7f2", "k": 2})
    client.get("/items/no-such-item-9c1")
    text = client.get("/metrics").text
    assert 'mmrec_requests_total{endpoint="/recommend",method="POST",status="200"}' in text
    assert 'mmrec_request_errors_total{endpoint="/items/{item_id:path}",method="GET",status_class="4xx"}' in text
    assert 'mmrec_request_duration_seconds_bucket{endpoint="/recommend",le="0.5",method="POST"}' in text
    assert re.search(r'mmrec_impressions_total\{surface="recommend",variant="(model|content)"\} [1-9]', text)
    assert 'mmrec_events_total{attributed="yes",kind="click"}' in text
    assert "prom-user-7f2" not in text and "no-such-item-9c1" not in text  # ids never become labels


def test_erasing_a_user_erases_their_impressions(ab):
    client, data = ab
    user = "ab-erase-3e8d"
    client.post("/events", json={"events": [{"user_id": user, "item_id": "guitar:de"}]})
    shown = client.post("/recommend", json={"user_id": user, "k": 2}).json()
    client.get("/search", params={"q": "guitar", "user_id": user})
    client.post("/events", json={"events": [{"user_id": user, "item_id": shown["results"][0]["item_id"],
                                             "kind": "click", "request_id": shown["request_id"]}]})
    assert user in (data / "impressions.jsonl").read_text()
    assert client.delete(f"/users/{user}").json() == {"user_id": user, "events_deleted": 2, "impressions_deleted": 2}
    assert [p.name for p in data.iterdir() if p.is_file() and user.encode() in p.read_bytes()] == []


# --- the bar, through a real server ---------------------------------------------------------------------

@pytest.mark.slow
def test_online_report_through_a_real_server(tmp_path):
    """`mmrec serve --variant a=content:0.5 --variant b=content:0.5`: /recommend answers with a request id,
    events naming it are attributed, and `mmrec report online` (beside the running service) and GET
    /metrics/online give the same CTR / CVR per variant with intervals."""
    data = tmp_path / "data"
    srv = Server(data, "--image-encoder", "none", "--variant", "a=content:0.5", "--variant", "b=content:0.5",
                 "--experiment", "bar")
    try:
        assert srv.client.post("/items", json={"items": catalog_items()}).status_code == 200
        clicked = Counter()
        for n in range(30):
            user = f"real-{n}"
            srv.client.post("/events", json={"events": [{"user_id": user, "item_id": "watch:fr", "kind": "view"}]})
            answer = srv.client.post("/recommend", json={"user_id": user, "k": 4}).json()
            assert REQUEST_ID.match(answer["request_id"]) and answer["results"]
            if n % 3 == 0:
                event = {"user_id": user, "item_id": answer["results"][1]["item_id"], "kind": "click",
                         "request_id": answer["request_id"], "position": 2}
                assert srv.client.post("/events", json={"events": [event]}).json() == {"appended": 1}
                clicked[answer["variant"]] += 1
        online = srv.client.get("/metrics/online").json()
        done = mmrec_cli("report", "online", "--data-dir", str(data), "--json", "--control", "a")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        text = mmrec_cli("report", "online", "--data-dir", str(data))
        assert text.returncode == 0 and "by variant" in text.stdout and "vs control 'a'" in text.stdout
        for result in (online, report):
            assert sum(g["impressions"] for g in result["by_variant"].values()) == 30
            for name in ("a", "b"):
                ctr = result["by_variant"][name]["ctr"]
                assert ctr["successes"] == clicked[name] and ctr["low"] <= ctr["rate"] <= ctr["high"]
            assert result["by_position"]["2"]["ctr"]["successes"] == 10
        assert report["by_variant"] == online["by_variant"] and report["comparisons"] == online["comparisons"]
        metrics = srv.client.get("/metrics").text
        assert 'mmrec_requests_total{endpoint="/recommend",method="POST",status="200"} 30.0' in metrics
        bad = mmrec_cli("report", "online", "--data-dir", str(tmp_path / "nope"))
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    finally:
        srv.stop()

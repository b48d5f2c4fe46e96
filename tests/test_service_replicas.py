"""Issue #17 item 3: replicas that share state. Two real `mmrec serve --events redis://...` processes, each
with its own data dir (the same items: two copies of an edge store stand in for one Qdrant server, which
cannot be installed here), over one real `redis-server` started on a free port in a temp dir with
appendonly/appendfsync always: an event posted to one is in the other's next /recommend, an impression
served by one is attributed through the other, and an erasure through either leaves no key, value or
Redis file holding the user id. Plus the start-up refusals, decided before any model loads."""
from __future__ import annotations

import time

import pytest

from redis_support import RedisServer, needs_redis
from service_support import Server, catalog_items, mmrec_cli

pytestmark = needs_redis
USER = "replica-user-4b7e21"


def _redis_traces(redis: RedisServer, needle: str) -> list[str]:
    """Keys whose name or value holds `needle`, and Redis data files that do (after its background cleanup)."""
    client = redis.client
    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values = {"list": lambda: client.lrange(key, 0, -1), "set": lambda: list(client.smembers(key)),
                  "string": lambda: [client.get(key)]}.get(kind, lambda: [f"<{kind}>"])()
        if needle in key or any(needle in v for v in values):
            found.append(key)
    deadline = time.monotonic() + 10
    while True:
        files = [p.name for p in redis.data_files() if needle.encode() in p.read_bytes()]
        if not files or time.monotonic() > deadline:
            return found + files
        time.sleep(0.1)


@pytest.mark.slow
def test_two_replicas_over_one_redis_share_events_impressions_and_erasure(tmp_path):
    redis = RedisServer(tmp_path / "redis")
    a = b = None
    try:
        a = Server(tmp_path / "replica-a", "--image-encoder", "none", "--events", redis.url)
        b = Server(tmp_path / "replica-b", "--image-encoder", "none", env={"MMREC_EVENTS": redis.url})
        for srv in (a, b):
            assert srv.client.post("/items", json={"items": catalog_items()}).status_code == 200
        assert b.client.post("/recommend", json={"user_id": USER}).json()["history_used"] == []
        # an event posted to replica A is in replica B's next recommendation for the user
        event = {"user_id": USER, "item_id": "guitar:de", "kind": "purchase"}
        assert a.client.post("/events", json={"events": [event]}).json() == {"appended": 1}
        from_b = b.client.post("/recommend", json={"user_id": USER, "k": 3}).json()
        assert from_b["history_used"] == ["guitar:de"] and from_b["results"]
        assert all(r["product_id"] != "guitar" for r in from_b["results"])
        a.client.post("/events", json={"events": [{"user_id": USER, "item_id": "coffee:fr", "kind": "view"}]})
        assert b.client.post("/recommend", json={"user_id": USER}).json()["history_used"] == ["coffee:fr", "guitar:de"]
        # what B showed is clicked through A, and both report it
        click = {"user_id": USER, "item_id": from_b["results"][0]["item_id"], "kind": "click",
                 "request_id": from_b["request_id"], "position": 1}
        assert a.client.post("/events", json={"events": [click]}).json() == {"appended": 1}
        for srv in (a, b):
            online = srv.client.get("/metrics/online").json()
            assert online["impressions"] == 3 and online["by_variant"]["default"]["ctr"]["successes"] == 1
        report = mmrec_cli("report", "online", "--events", redis.url, "--json")
        assert report.returncode == 0 and '"attributed_events": 1' in report.stdout, report.stderr
        for srv in (a, b):  # one log: both count the same
            health = srv.client.get("/healthz").json()
            assert (health["event_log"], health["events"], health["users"]) == ("redis", 3, 1)
        # erasure through B: gone for A, and from every key, value and file of Redis
        assert _redis_traces(redis, USER)
        erased = b.client.delete(f"/users/{USER}").json()
        assert erased == {"user_id": USER, "events_deleted": 3, "impressions_deleted": 3}
        assert _redis_traces(redis, USER) == []
        again = a.client.post("/recommend", json={"user_id": USER}).json()
        assert again["history_used"] == [] and again["results"] == []
        # the data dirs hold no user data with this backend
        for root in (tmp_path / "replica-a", tmp_path / "replica-b"):
            assert not (root / "events.jsonl").exists() and not (root / "impressions.jsonl").exists()
    finally:
        for srv in (a, b):
            if srv is not None:
                srv.stop()
        redis.stop()


def test_serve_refuses_a_redis_that_is_not_durable_or_not_there(tmp_path, capsys):
    """Refused in one line before any model is loaded (so in-process, through the CLI's main)."""
    from mmrec.cli import main

    loose = RedisServer(tmp_path / "loose", durable=False)
    try:
        assert main(["serve", "--data-dir", str(tmp_path / "d"), "--events", loose.url]) == 2
        err = capsys.readouterr().err
        assert "appendfsync always" in err and err.count("\n") == 1
    finally:
        loose.stop()
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--events", "redis://:s3cret-pw@127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:1/0" in err and "s3cret-pw" not in err and err.count("\n") == 1
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--events", "memcached://x"]) == 2
    assert "--events" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--variant", "a=content:0.5"]) == 2
    assert "add up to 1" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--variant", "a=missing.pt:1"]) == 2
    assert "no checkpoint file" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--store", "milvus://x"]) == 2
    assert "--store" in capsys.readouterr().err

"""The interaction log behind the service, one contract for its backends (the file pair in the data dir, a
real `redis-server` on a free port, and the in-memory one simulations use): replay in time order,
impressions and attributed events, erasure that leaves no trace of the user (in the files; in Redis's
keys, values and append-only files), deleted items. Then what only one backend has: a torn last line and the one-process lock (file); the durability
check, passwords, a kill -9 of Redis, and two clients sharing one Redis (redis)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mmrec.data.schema import Event
from mmrec.serving.event_log import EventLog, EventLogInUse, FileEventLog
from mmrec.serving.logs import open_interaction_log
from mmrec.serving.interaction_log import (
    Attributed, EventLogError, Impression, InteractionLog, Shown,
)
from mmrec.serving.memory_log import MemoryEventLog
from redis_support import RedisServer, needs_redis

ERASED = "erase-me-5d1c0b"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


class Backend:
    """Opens logs of one kind on one place, and finds traces of a string in everything it keeps."""

    def __init__(self, kind: str, tmp_path: Path, redis: RedisServer | None):
        self.kind, self.tmp_path, self.redis = kind, tmp_path, redis
        self.memory = MemoryEventLog()  # "reopened": the same object (nothing outlives it)
        if redis is not None:
            redis.client.flushall()

    def open(self) -> InteractionLog:
        if self.kind == "file":
            return FileEventLog(self.tmp_path / "events.jsonl")
        if self.kind == "memory":
            return self.memory
        return open_interaction_log(self.redis.url, self.tmp_path)

    def traces(self, needle: str, redis_files: bool = True) -> list[str]:
        """Where `needle` is kept: files of the data dir, or Redis keys, values and (`redis_files`) data files.
        Redis deletes its old append-only files in the background after a rewrite: give it a few seconds
        to before calling something a trace."""
        found = []
        if self.kind == "memory":
            return [repr(r) for r in (*self.memory._events.values(), *self.memory._shown) if needle in repr(r)]
        if self.kind == "file":
            return [p.name for p in self.tmp_path.iterdir() if p.is_file() and needle.encode() in p.read_bytes()]
        client = self.redis.client
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            values = {"list": lambda: client.lrange(key, 0, -1), "set": lambda: list(client.smembers(key)),
                      "string": lambda: [client.get(key)]}.get(kind, lambda: [f"<{kind}>"])()
            if needle in key or any(needle in v for v in values):
                found.append(key)
        if not redis_files:
            return found
        deadline = time.monotonic() + 10
        while True:
            files = [p.name for p in self.redis.data_files() if needle.encode() in p.read_bytes()]
            if not files or found or time.monotonic() > deadline:
                return found + files
            time.sleep(0.1)


@pytest.fixture(params=["file", pytest.param("redis", marks=needs_redis), "memory"])
def backend(request, tmp_path):
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else None
    return Backend(request.param, tmp_path, redis)


def impression(request_id: str, user: str | None, items: list[str], variant: str = "a") -> Impression:
    return Impression(request_id=request_id, timestamp=time.time(), surface="recommend", variant=variant,
                      model="content", user_id=user, market="de",
                      shown=tuple(Shown(item, p, 1.0 / p) for p, item in enumerate(items, 1)))


def test_events_are_replayed_in_time_order(backend):
    log = backend.open()
    log.append([Event("u1", "a", 100), Event("u2", "b", 50), Event("u1", "c", 300, kind="purchase")])
    log.append([Event("u1", "late", 200)])  # arrives after a newer one
    assert [e.item_id for e in log.history("u1")] == ["a", "late", "c"]
    log.close()
    again = backend.open()
    assert len(again) == 4 and again.users == 2
    assert [e.item_id for e in again.history("u1")] == ["a", "late", "c"]
    assert [e.item_id for e in again.history("u1", limit=2)] == ["late", "c"]
    assert again.history("u1")[-1] == Event("u1", "c", 300, kind="purchase")
    assert again.history("nobody") == []
    again.close()


def test_impressions_and_attributed_events_are_kept(backend):
    log = backend.open()
    log.log_impression(impression("r1", "u", ["x", "y"]))
    log.log_impression(impression("r2", None, ["y"], variant="b"))
    log.append([Attributed(Event("u", "y", 10, kind="click"), "r1", 2), Event("u", "x", 11),
                Attributed(Event("u", "y", 12, kind="purchase"), "r1")])
    assert [e.item_id for e in log.history("u")] == ["y", "x", "y"]  # plain events: what /recommend reads
    assert all(type(e) is Event for e in log.history("u"))
    log.close()
    again = backend.open()
    shown = {i.request_id: i for i in again.impressions()}
    assert set(shown) == {"r1", "r2"} and shown["r1"].shown[1] == Shown("y", 2, 0.5)
    assert shown["r2"].user_id is None and shown["r2"].variant == "b" and shown["r1"].market == "de"
    outcomes = sorted(again.outcomes(), key=lambda o: o.event.timestamp)
    assert [(o.request_id, o.position, o.event.kind) for o in outcomes] == [
        ("r1", 2, "click"), ("r1", None, "purchase")]
    again.close()


def test_erasing_a_user_leaves_no_trace(backend):
    log = backend.open()
    log.append([Event("keep-me", "a", 1), Event(ERASED, "a", 2), Event(ERASED, "b", 3), Event("keep-me", "b", 4),
                Attributed(Event(ERASED, "a", 5, kind="click"), "req-of-erased", 1)])
    log.log_impression(impression("req-of-erased", ERASED, ["a", "b"]))
    log.log_impression(impression("req-kept", "keep-me", ["a"]))
    log.log_impression(impression("req-anonymous", None, ["b"]))
    before = backend.traces(ERASED)
    assert before and ("events.jsonl" in before if backend.kind == "file" else
                       any(t.endswith(".aof") for t in before) if backend.kind == "redis" else True)
    erased = log.erase_user(ERASED)
    assert (erased.events, erased.impressions) == (3, 1)
    assert log.forget_user(ERASED) == 0 and log.forget_user("nobody") == 0
    assert log.history(ERASED) == [] and len(log) == 2 and log.users == 1
    assert backend.traces(ERASED) == []
    assert {i.request_id for i in log.impressions()} == {"req-kept", "req-anonymous"}
    assert list(log.outcomes()) == []
    log.append([Event("keep-me", "c", 5)])  # appends go on
    log.close()
    again = backend.open()
    assert [e.item_id for e in again.history("keep-me")] == ["a", "b", "c"] and again.history(ERASED) == []
    assert backend.traces(ERASED) == []
    again.close()


def test_forgetting_an_item_drops_its_events(backend):
    log = backend.open()
    log.append([Event("u", "deleted", 1), Event("u", "kept", 2), Event("v", "deleted", 3)])
    assert log.forget_item("deleted") == 2 and log.forget_item("deleted") == 0
    assert [e.item_id for e in log.history("u")] == ["kept"] and log.history("v") == [] and log.users == 1
    assert len(log) == 1
    log.close()
    # in the data dir's files and in Redis's keys and values; Redis's own files keep them until it next
    # rewrites its append-only file (item ids are not personal data: no rewrite is forced for them)
    assert backend.traces('"deleted"', redis_files=False) == []


# --- the file backend -----------------------------------------------------------------------------------

def test_a_torn_last_line_is_cut_off_and_appends_go_on(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.append([Event("u", "a", 1), Event("u", "b", 2)])
    log.log_impression(impression("r1", "u", ["a"]))
    log.close()
    with open(path, "ab") as fh:  # what a kill -9 in the middle of a write leaves
        fh.write(b'{"user_id": "u", "item_id": "c", "times')
    with open(tmp_path / "impressions.jsonl", "ab") as fh:
        fh.write(b'{"request_id": "r2", "ti')
    again = EventLog(path)
    assert [e.item_id for e in again.history("u")] == ["a", "b"]
    assert [i.request_id for i in again.impressions()] == ["r1"]
    again.append([Event("u", "d", 3)])
    again.log_impression(impression("r3", "u", ["d"]))
    again.close()
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["item_id"] for line in lines] == ["a", "b", "d"]
    shown = (tmp_path / "impressions.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["request_id"] for line in shown] == ["r1", "r3"]


def test_unreadable_lines_are_skipped(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"user_id": "u", "item_id": "a", "timestamp": 1}\nnot json\n'
                    '{"user_id": "u", "item_id": "b", "timestamp": 2, "kind": "stare"}\n'
                    '{"user_id": "u", "item_id": "c", "timestamp": 3}\n')
    log = EventLog(path)
    assert [e.item_id for e in log.history("u")] == ["a", "c"]
    log.close()


def test_erasure_leaves_no_temp_file_and_creates_no_impressions_file(tmp_path):
    log = FileEventLog(tmp_path / "events.jsonl")
    log.append([Event("keep-me", "a", 1), Event(ERASED, "a", 2)])
    assert log.forget_user(ERASED) == 1
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "events.jsonl.lock"]


def test_one_process_per_event_log(tmp_path):
    """A second opener (another `mmrec serve`, or `mmrec users delete` while a service runs) is refused:
    rewriting the file under a running service would lose its appends."""
    log = EventLog(tmp_path / "events.jsonl")
    with pytest.raises(EventLogInUse):
        EventLog(tmp_path / "events.jsonl")
    log.close()
    EventLog(tmp_path / "events.jsonl").close()


# --- the Redis backend ----------------------------------------------------------------------------------

@needs_redis
def test_a_redis_that_does_not_fsync_each_write_is_refused(tmp_path):
    server = RedisServer(tmp_path / "r", durable=False)
    try:
        with pytest.raises(EventLogError) as refused:
            open_interaction_log(server.url, tmp_path)
        assert "appendfsync always" in str(refused.value) and "\n" not in str(refused.value)
    finally:
        server.stop()


@needs_redis
def test_redis_password_from_the_url_and_never_in_an_error(tmp_path):
    password = "pw-6c1f0e9a2b7d"
    server = RedisServer(tmp_path / "r", password=password)
    try:
        log = open_interaction_log(server.url, tmp_path)
        log.append([Event("u", "a", 1)])
        assert [e.item_id for e in log.history("u")] == ["a"]
        log.close()
        for url in (server.url.replace(password, "wrong-password"), f"redis://127.0.0.1:{server.port}/0"):
            with pytest.raises(EventLogError) as refused:
                open_interaction_log(url, tmp_path)
            assert "wrong-password" not in str(refused.value) and password not in str(refused.value)
            assert f"127.0.0.1:{server.port}/0" in str(refused.value)
    finally:
        server.stop()
    with pytest.raises(EventLogError) as down:  # nobody listening
        open_interaction_log(server.url, tmp_path)
    assert password not in str(down.value)


@needs_redis
def test_acknowledged_events_survive_a_kill_9_of_redis(tmp_path):
    """The durability the service promises, with Redis configured as documented (appendfsync always)."""
    server = RedisServer(tmp_path / "r")
    log = open_interaction_log(server.url, tmp_path)
    log.append([Event("u", f"i{n}", n) for n in range(50)])
    log.log_impression(impression("r1", "u", ["i1"]))
    server.kill9()
    log.close()
    server.start()
    try:
        again = open_interaction_log(server.url, tmp_path)
        assert [e.item_id for e in again.history("u")] == [f"i{n}" for n in range(50)]
        assert [i.request_id for i in again.impressions()] == ["r1"] and len(again) == 50
        again.close()
    finally:
        server.stop()


@needs_redis
def test_two_clients_of_one_redis_share_everything(redis_server, tmp_path):
    """What makes service replicas stateless: nothing is cached; a write through one is read by the other."""
    redis_server.client.flushall()
    a = open_interaction_log(redis_server.url, tmp_path / "a")
    b = open_interaction_log(redis_server.url, tmp_path / "b")
    a.append([Event("shared", "x", 1)])
    assert [e.item_id for e in b.history("shared")] == ["x"]
    b.append([Event("shared", "y", 2)])
    assert [e.item_id for e in a.history("shared")] == ["x", "y"] and len(a) == len(b) == 2
    assert b.erase_user("shared").events == 2 and a.history("shared") == []
    a.close()
    b.close()

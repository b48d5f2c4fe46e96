"""The service's persistent event log: replay, time order per user, and a torn last line after a crash."""
from __future__ import annotations

import json

from mmrec.serving.event_log import EventLog
from mmrec.data.schema import Event


def test_events_are_replayed_in_time_order(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.append([Event("u1", "a", 100), Event("u2", "b", 50), Event("u1", "c", 300, kind="purchase")])
    log.append([Event("u1", "late", 200)])  # arrives after a newer one
    assert [e.item_id for e in log.history("u1")] == ["a", "late", "c"]
    log.close()
    again = EventLog(path)
    assert len(again) == 4 and again.users == 2
    assert [e.item_id for e in again.history("u1")] == ["a", "late", "c"]
    assert [e.item_id for e in again.history("u1", limit=2)] == ["late", "c"]
    assert again.history("nobody") == []
    again.close()


def test_a_torn_last_line_is_cut_off_and_appends_go_on(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.append([Event("u", "a", 1), Event("u", "b", 2)])
    log.close()
    with open(path, "ab") as fh:  # what a kill -9 in the middle of a write leaves
        fh.write(b'{"user_id": "u", "item_id": "c", "times')
    again = EventLog(path)
    assert [e.item_id for e in again.history("u")] == ["a", "b"]
    again.append([Event("u", "d", 3)])
    again.close()
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["item_id"] for line in lines] == ["a", "b", "d"]


def test_unreadable_lines_are_skipped(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"user_id": "u", "item_id": "a", "timestamp": 1}\nnot json\n'
                    '{"user_id": "u", "item_id": "b", "timestamp": 2, "kind": "stare"}\n'
                    '{"user_id": "u", "item_id": "c", "timestamp": 3}\n')
    log = EventLog(path)
    assert [e.item_id for e in log.history("u")] == ["a", "c"]
    log.close()


def test_forgetting_a_user_rewrites_the_file_without_them(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.append([Event("keep-me", "a", 1), Event("erase-me", "a", 2), Event("erase-me", "b", 3), Event("keep-me", "b", 4)])
    assert log.forget_user("erase-me") == 2 and log.forget_user("erase-me") == 0 and log.forget_user("nobody") == 0
    assert log.history("erase-me") == [] and len(log) == 2 and log.users == 1
    log.append([Event("keep-me", "c", 5)])  # appends go on into the new file
    log.close()
    assert b"erase-me" not in path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "events.jsonl.lock"]  # no temp file left
    again = EventLog(path)
    assert [e.item_id for e in again.history("keep-me")] == ["a", "b", "c"] and again.history("erase-me") == []
    again.close()


def test_forgetting_an_item_drops_its_events(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.append([Event("u", "deleted", 1), Event("u", "kept", 2), Event("v", "deleted", 3)])
    assert log.forget_item("deleted") == 2 and log.forget_item("deleted") == 0
    assert [e.item_id for e in log.history("u")] == ["kept"] and log.users == 1
    log.close()
    assert b"deleted" not in path.read_bytes()


def test_one_process_per_event_log(tmp_path):
    """A second opener (another `mmrec serve`, or `mmrec users delete` while a service runs) is refused:
    rewriting the file under a running service would lose its appends."""
    import pytest

    from mmrec.serving.event_log import EventLogInUse

    log = EventLog(tmp_path / "events.jsonl")
    with pytest.raises(EventLogInUse):
        EventLog(tmp_path / "events.jsonl")
    log.close()
    EventLog(tmp_path / "events.jsonl").close()

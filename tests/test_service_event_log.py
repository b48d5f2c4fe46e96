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

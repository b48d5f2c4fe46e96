"""A persistent, append-only interaction log (JSON lines) with a per-user in-memory view.

The service appends events here and reads a user's recent history back for /recommend. One write of
all of a request's lines followed by fsync makes a POST /events durable once it is acknowledged; a line
torn by a crash mid-write is dropped (and cut off the file) when the log is reopened.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from mmrec.data.schema import Event

log = logging.getLogger(__name__)


class EventLog:
    """Events by user, backed by `path` (created if missing). Thread-safe; one process per file."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._by_user: dict[str, list[Event]] = defaultdict(list)
        self._count = 0
        self._replay()
        self._file = open(self.path, "ab")

    def _replay(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line from a crash mid-write: never acknowledged, cut it off
            log.warning("event log %s: dropping %d bytes of a torn last line", self.path, len(data) - end)
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        for lineno, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                self._add(Event(**json.loads(line)))
            except (ValueError, TypeError) as exc:
                log.warning("event log %s line %d is unreadable, skipped: %s", self.path, lineno, exc)

    def _add(self, event: Event) -> None:
        events = self._by_user[event.user_id]
        if events and event.timestamp < events[-1].timestamp:  # late arrival: keep time order
            events.append(event)
            events.sort(key=lambda e: e.timestamp)
        else:
            events.append(event)
        self._count += 1

    def append(self, events: Iterable[Event]) -> int:
        """Durably append `events` (already validated) and make them visible; returns how many."""
        events = list(events)
        if not events:
            return 0
        blob = b"".join(
            json.dumps(e.to_row(), ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n" for e in events
        )
        with self._lock:
            self._file.write(blob)
            self._file.flush()
            os.fsync(self._file.fileno())
            for event in events:
                self._add(event)
        return len(events)

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        """The user's events, oldest first (the last `limit` of them if given)."""
        with self._lock:
            events = list(self._by_user.get(user_id, ()))
        return events[-limit:] if limit else events

    def __len__(self) -> int:
        return self._count

    @property
    def users(self) -> int:
        return len(self._by_user)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

"""A persistent, append-only interaction log (JSON lines) with a per-user in-memory view.

The service appends events here and reads a user's recent history back for /recommend. One write of
all of a request's lines followed by fsync makes a POST /events durable once it is acknowledged; a line
torn by a crash mid-write is dropped (and cut off the file) when the log is reopened.

Erasure (`forget_user`, `forget_item`) rewrites the file without the events concerned: written beside it,
fsynced, swapped in with an atomic rename (and the directory fsynced), so a crash leaves either the old
file or the new one, never a mix, and no copy of the erased events is left in the data dir.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

from mmrec.data.schema import Event

log = logging.getLogger(__name__)


class EventLogInUse(RuntimeError):
    """Another process (a running `mmrec serve`) has the event log open."""


class EventLog:
    """Events by user, backed by `path` (created if missing). Thread-safe; one process per file, enforced
    with an exclusive lock on `path`.lock held while the log is open (released by the OS if the process dies)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(self.path.with_name(self.path.name + ".lock"), "a")
        try:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise EventLogInUse(f"event log {self.path} is open in another process (a running `mmrec serve`?)") from None
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
        blob = b"".join(_line(e) for e in events)
        with self._lock:
            self._file.write(blob)
            self._file.flush()
            os.fsync(self._file.fileno())
            for event in events:
                self._add(event)
        return len(events)

    def forget_user(self, user_id: str) -> int:
        """Delete every event of `user_id`, from disk and memory; returns how many there were."""
        with self._lock:
            if user_id not in self._by_user:
                return 0
            return self._rewrite(lambda e: e.user_id != user_id)

    def forget_item(self, item_id: str) -> int:
        """Delete every event of `item_id` (a deleted item); returns how many there were."""
        with self._lock:
            if not any(e.item_id == item_id for events in self._by_user.values() for e in events):
                return 0
            return self._rewrite(lambda e: e.item_id != item_id)

    def _rewrite(self, keep: Callable[[Event], bool]) -> int:
        """Keep only the events `keep` accepts, on disk (atomically) and in memory. Holds the lock."""
        kept: dict[str, list[Event]] = defaultdict(list)
        for user, events in self._by_user.items():
            for event in events:
                if keep(event):
                    kept[user].append(event)
        removed = self._count - sum(len(v) for v in kept.values())
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(b"".join(_line(e) for events in kept.values() for e in events))
            fh.flush()
            os.fsync(fh.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self._file = open(self.path, "ab")
        self._by_user = kept
        self._count -= removed
        return removed

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
            if not self._lockfile.closed:
                self._lockfile.close()  # releases the flock


def _line(event: Event) -> bytes:
    return json.dumps(event.to_row(), ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

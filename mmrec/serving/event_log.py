"""The file backend of the interaction log: DATA_DIR/events.jsonl and DATA_DIR/impressions.jsonl (JSON
lines), with a per-user in-memory view of the events.

The service appends events here and reads a user's recent history back for /recommend. One write of all
of a request's lines followed by fsync makes a POST /events (or a logged impression) durable once it is
acknowledged; a line torn by a crash mid-write is dropped (and cut off the file) when the log is reopened.

Erasure (`erase_user`, `forget_item`) rewrites a file without the records concerned: written beside it,
fsynced, swapped in with an atomic rename (and the directory fsynced), so a crash leaves either the old
file or the new one, never a mix, and no copy of the erased records is left in the data dir.

The files are only ever appended to or replaced whole, so a reader without the lock (`read_impressions`,
`read_outcomes`: `mmrec report online` beside a running service) sees whole lines of one version.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mmrec.data.schema import Event
from mmrec.serving.interaction_log import (
    Attributed, Erased, Impression, InteractionLog, ItemCounter, dumps, event_row, parse_event, plain,
)

log = logging.getLogger(__name__)

IMPRESSIONS_FILE = "impressions.jsonl"


class EventLogInUse(RuntimeError):
    """Another process (a running `mmrec serve`) has the event log open."""


class FileEventLog(InteractionLog):
    """Events by user, backed by `path` (created if missing), and impressions in `impressions_path`
    (default: impressions.jsonl beside it, created on the first impression). Thread-safe; one process per
    file, enforced with an exclusive lock on `path`.lock held while the log is open (released by the OS if
    the process dies)."""

    kind = "file"

    def __init__(self, path: str | os.PathLike[str], impressions_path: str | os.PathLike[str] | None = None):
        self.path = Path(path)
        self.impressions_path = Path(impressions_path) if impressions_path else self.path.with_name(IMPRESSIONS_FILE)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(self.path.with_name(self.path.name + ".lock"), "a")
        try:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise EventLogInUse(f"event log {self.path} is already open in another process "
                                f"(a running `mmrec serve`?)") from None
        self._lock = threading.Lock()  # events; taken before _shown_lock when both are needed
        self._shown_lock = threading.Lock()  # impressions
        self._by_user: dict[str, list[Event]] = defaultdict(list)
        self._count = 0
        self._shown_by_user: dict[str, int] = defaultdict(int)
        self._shown_file: BinaryIO | None = None
        self._counts = ItemCounter()
        for row in _rows(self.path, repair=True):
            try:
                record = parse_event(row)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("event log %s: an unreadable event is skipped: %s", self.path, exc)
                continue
            self._add(plain(record))
            self._counts.add_event(record)
        for row in _rows(self.impressions_path, repair=True):
            if row.get("user_id") is not None:
                self._shown_by_user[str(row["user_id"])] += 1
            try:
                self._counts.add_impression(Impression.from_row(row))
            except (ValueError, TypeError, KeyError):
                pass
        self._file = open(self.path, "ab")

    def _add(self, event: Event) -> None:
        events = self._by_user[event.user_id]
        if events and event.timestamp < events[-1].timestamp:  # late arrival: keep time order
            events.append(event)
            events.sort(key=lambda e: e.timestamp)
        else:
            events.append(event)
        self._count += 1

    # --- events ---------------------------------------------------------------------------------------
    def append(self, events: Iterable[Event | Attributed]) -> int:
        records = list(events)
        if not records:
            return 0
        blob = b"".join(dumps(event_row(r)) + b"\n" for r in records)
        with self._lock:
            _write_synced(self._file, blob)
            for record in records:
                self._add(plain(record))
                self._counts.add_event(record)
        return len(records)

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        with self._lock:
            events = list(self._by_user.get(user_id, ()))
        return events[-limit:] if limit else events

    def erase_user(self, user_id: str) -> Erased:
        with self._lock, self._shown_lock:
            events = self._rewrite_events(lambda e: e.user_id != user_id) if user_id in self._by_user else 0
            shown = 0
            if self._shown_by_user.get(user_id):
                shown = self._rewrite_impressions(lambda row: row.get("user_id") != user_id)
                self._shown_by_user.pop(user_id, None)
            if events or shown:
                self._counts.reset(read_impressions(self.impressions_path), read_outcomes(self.path))
        return Erased(events, shown)

    def forget_item(self, item_id: str) -> int:
        with self._lock:
            if not any(e.item_id == item_id for events in self._by_user.values() for e in events):
                return 0
            return self._rewrite_events(lambda e: e.item_id != item_id)

    def _rewrite_events(self, keep: Callable[[Event], bool]) -> int:
        """Keep only the events `keep` accepts, on disk (atomically) and in memory. Holds the lock."""
        kept_rows = [row for row in _rows(self.path) if _keeps_event(keep, row)]
        kept: dict[str, list[Event]] = defaultdict(list)
        for user, events in self._by_user.items():
            for event in events:
                if keep(event):
                    kept[user].append(event)
        removed = self._count - sum(len(v) for v in kept.values())
        self._file.close()
        _replace(self.path, rows=kept_rows)
        self._file = open(self.path, "ab")
        self._by_user = kept
        self._count -= removed
        return removed

    def outcomes(self) -> Iterator[Attributed]:
        return read_outcomes(self.path)

    # --- impressions ----------------------------------------------------------------------------------
    def log_impression(self, impression: Impression) -> None:
        self.log_impressions([impression])

    def log_impressions(self, impressions: Sequence[Impression]) -> None:
        """`log_impression` for several, in one write and one fsync (a micro-batch of answers)."""
        if not impressions:
            return
        blob = b"".join(dumps(impression.to_row()) + b"\n" for impression in impressions)
        with self._shown_lock:
            if self._shown_file is None:
                self._shown_file = open(self.impressions_path, "ab")
            _write_synced(self._shown_file, blob)
            for impression in impressions:
                if impression.user_id is not None:
                    self._shown_by_user[impression.user_id] += 1
                # under the lock: an erasure's recount (which holds it) sees each impression exactly once
                self._counts.add_impression(impression)

    def _rewrite_impressions(self, keep: Callable[[dict[str, Any]], bool]) -> int:
        """Keep only the impressions `keep` accepts (atomically). Holds the impressions lock."""
        rows = list(_rows(self.impressions_path))
        kept = [row for row in rows if keep(row)]
        if self._shown_file is not None:
            self._shown_file.close()
            self._shown_file = None
        _replace(self.impressions_path, rows=kept)
        return len(rows) - len(kept)

    def impressions(self) -> Iterator[Impression]:
        return read_impressions(self.impressions_path)

    def item_counts(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self._counts.counts(item_ids)

    # --- the rest -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    @property
    def users(self) -> int:
        return len(self._by_user)

    def close(self) -> None:
        with self._lock, self._shown_lock:
            for fh in (self._file, self._shown_file, self._lockfile):  # the lock file last: releases the flock
                if fh is not None and not fh.closed:
                    fh.close()


EventLog = FileEventLog  # the name before there were two backends (`mmrec users delete` and 0.1 code use it)


def read_impressions(path: str | os.PathLike[str]) -> Iterator[Impression]:
    """The impressions in an impressions.jsonl file (none if it is missing), without taking its lock."""
    for row in _rows(Path(path)):
        try:
            yield Impression.from_row(row)
        except (ValueError, TypeError, KeyError):
            continue


def read_outcomes(path: str | os.PathLike[str]) -> Iterator[Attributed]:
    """The attributed events in an events.jsonl file, without taking its lock."""
    for row in _rows(Path(path)):
        if "request_id" not in row:
            continue
        try:
            record = parse_event(row)
        except (ValueError, TypeError, KeyError):
            continue
        if isinstance(record, Attributed):
            yield record


def read_events(path: str | os.PathLike[str], since: float | None = None) -> Iterator[Event]:
    """The events in an events.jsonl file (attributed or not) with timestamp >= `since`, in file order,
    without taking its lock (beside a running service): what `mmrec train --events-since` learns from."""
    for row in _rows(Path(path)):
        try:
            event = plain(parse_event(row))
        except (ValueError, TypeError, KeyError):
            continue
        if since is None or event.timestamp >= since:
            yield event


def _keeps_event(keep: Callable[[Event], bool], row: dict[str, Any]) -> bool:
    try:
        return keep(plain(parse_event(row)))
    except (ValueError, TypeError, KeyError):
        return False  # an unreadable line is not carried into the new file


def _rows(path: Path, repair: bool = False) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, skipping unreadable lines. `repair`: cut a torn last line
    (a crash mid-write: never acknowledged) off the file."""
    if not path.exists():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        log.warning("%s: dropping %d bytes of a torn last line", path, len(data) - end)
        with open(path, "r+b") as fh:
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
    for lineno, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            yield row
        elif repair:
            log.warning("%s line %d is unreadable, skipped", path, lineno)


def _write_synced(fh: BinaryIO, blob: bytes) -> None:
    fh.write(blob)
    fh.flush()
    os.fsync(fh.fileno())


def _replace(path: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically replace `path` by these rows: a temp file beside it, fsynced, renamed, directory fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        _write_synced(fh, b"".join(dumps(row) + b"\n" for row in rows))
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

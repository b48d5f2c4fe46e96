"""An interaction log in memory only: for closed-loop simulations and tests that drive the app in-process
(`Services(events=MemoryEventLog(), ...)`), where thousands of fsyncs per simulated day would only cost
time. Nothing survives the process, so `mmrec serve` never uses it."""
from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from mmrec.data.schema import Event
from mmrec.serving.interaction_log import Attributed, Erased, Impression, InteractionLog, ItemCounter, plain


class MemoryEventLog(InteractionLog):
    """Events by user, attributed events and impressions, in lists. Thread-safe."""

    kind = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[Event | Attributed]] = defaultdict(list)
        self._shown: list[Impression] = []
        self._counts = ItemCounter()

    def append(self, events: Iterable[Event | Attributed]) -> int:
        records = list(events)
        with self._lock:
            for record in records:
                self._events[plain(record).user_id].append(record)
                self._counts.add_event(record)
        return len(records)

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        with self._lock:
            events = sorted((plain(r) for r in self._events.get(user_id, ())), key=lambda e: e.timestamp)
        return events[-limit:] if limit else events

    def erase_user(self, user_id: str) -> Erased:
        with self._lock:
            events = len(self._events.pop(user_id, ()))
            kept = [i for i in self._shown if i.user_id != user_id]
            shown = len(self._shown) - len(kept)
            self._shown = kept
            if events or shown:
                self._counts.reset(self._shown, [r for records in self._events.values() for r in records])
        return Erased(events, shown)

    def forget_item(self, item_id: str) -> int:
        removed = 0
        with self._lock:
            for user in list(self._events):
                kept = [r for r in self._events[user] if plain(r).item_id != item_id]
                removed += len(self._events[user]) - len(kept)
                if kept:
                    self._events[user] = kept
                else:
                    del self._events[user]
        return removed

    def log_impression(self, impression: Impression) -> None:
        with self._lock:
            self._shown.append(impression)
            self._counts.add_impression(impression)

    def item_counts(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self._counts.counts(item_ids)

    def impressions(self) -> Iterator[Impression]:
        with self._lock:
            return iter(list(self._shown))

    def outcomes(self) -> Iterator[Attributed]:
        with self._lock:
            return iter([r for records in self._events.values() for r in records if isinstance(r, Attributed)])

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._events.values())

    @property
    def users(self) -> int:
        with self._lock:
            return len(self._events)

    def close(self) -> None:
        pass

"""The one interface the service logs interactions through, and the records it holds.

Two kinds of records, kept by the same backend so that one erasure reaches both:

    events       what users did (POST /events): read back per user for /recommend; an event may name the
                 `request_id` (and position) of the list it answers, which attributes it (`Attributed`)
    impressions  what the service showed (/recommend, /search, ...): request id, user, items with
                 positions and scores, variant and model, time (`Impression`)

Backends: a JSON-lines file pair in the data dir (`mmrec.serving.event_log.FileEventLog`, one process per
data dir), Redis (`mmrec.serving.redis_log.RedisEventLog`, shared by any number of service replicas), and
memory only for simulations and tests (`mmrec.serving.memory_log.MemoryEventLog`).
`mmrec.serving.logs.open_interaction_log` picks one of the first two from `mmrec serve --events`. Both acknowledge a write
only once it is on disk (fsync; Redis with `appendonly yes` and `appendfsync always`), and both erase a
user's events and impressions so that no file or key holds the user id afterwards.
"""
from __future__ import annotations

import json
import threading
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmrec.data.schema import Event

SURFACES: tuple[str, ...] = ("recommend", "search", "search_image", "similar")


class EventLogError(RuntimeError):
    """The event log cannot be reached or refuses a write (the service answers 503)."""


def new_request_id() -> str:
    """A request id: 32 random hex digits (unguessable, so ids cannot be enumerated)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Attributed:
    """An event that answers a list the service showed: its `request_id`, and the 1-based `position` the
    client says the item had (None: looked up in the impression when reported)."""

    event: Event
    request_id: str
    position: int | None = None


@dataclass(frozen=True)
class Shown:
    item_id: str
    position: int  # 1-based
    score: float


@dataclass(frozen=True)
class Impression:
    """One list shown: `surface` is the endpoint ("recommend", "search", ...), `variant` the A/B arm that
    served it (for search surfaces, the surface's name), `model` what ranked it ("content" or a checkpoint
    file name), `timestamp` unix seconds. No query text is kept."""

    request_id: str
    timestamp: float
    surface: str
    variant: str
    model: str
    user_id: str | None = None
    market: str | None = None
    shown: tuple[Shown, ...] = field(default_factory=tuple)

    def to_row(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "timestamp": self.timestamp, "surface": self.surface,
                "variant": self.variant, "model": self.model, "user_id": self.user_id, "market": self.market,
                "shown": [[s.item_id, s.position, s.score] for s in self.shown]}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Impression:
        shown = tuple(Shown(str(i), int(p), float(s)) for i, p, s in row.get("shown", ()))
        return cls(request_id=str(row["request_id"]), timestamp=float(row["timestamp"]), surface=str(row["surface"]),
                   variant=str(row["variant"]), model=str(row.get("model", "")), user_id=row.get("user_id"),
                   market=row.get("market"), shown=shown)


@dataclass(frozen=True)
class Erased:
    """What an erasure removed."""

    events: int
    impressions: int


def dumps(row: dict[str, Any]) -> bytes:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def event_row(record: Event | Attributed) -> dict[str, Any]:
    """The stored form of an event: the event's fields, plus request_id and position when attributed."""
    if isinstance(record, Attributed):
        row = record.event.to_row()
        row["request_id"] = record.request_id
        if record.position is not None:
            row["position"] = record.position
        return row
    return record.to_row()


def parse_event(row: dict[str, Any]) -> Event | Attributed:
    """The inverse of `event_row` (ValueError/TypeError/KeyError for a row that is not an event)."""
    row = dict(row)
    request_id = row.pop("request_id", None)
    position = row.pop("position", None)
    event = Event(**row)
    if request_id is None:
        return event
    return Attributed(event, str(request_id), None if position is None else int(position))


def plain(record: Event | Attributed) -> Event:
    return record.event if isinstance(record, Attributed) else record


COUNTED_SURFACE = "recommend"
CLICK = "click"


class ItemCounter:
    """Per-item impressions on /recommend and attributed clicks: what exploration's posterior reads
    (`InteractionLog.item_counts`). An impression counts each item of a /recommend list once; a click is
    an event of kind `click` that names a request id (clicks beyond impressions are capped by the policy).
    Aggregates only: no user id is kept. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shown: Counter[str] = Counter()
        self._clicks: Counter[str] = Counter()

    def add_impression(self, impression: Impression) -> None:
        if impression.surface != COUNTED_SURFACE:
            return
        with self._lock:
            self._shown.update(s.item_id for s in impression.shown)

    def add_event(self, record: Event | Attributed) -> None:
        if isinstance(record, Attributed) and record.event.kind == CLICK:
            with self._lock:
                self._clicks[record.event.item_id] += 1

    def counts(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            shown = np.fromiter((self._shown.get(i, 0) for i in item_ids), dtype=np.float64, count=len(item_ids))
            clicks = np.fromiter((self._clicks.get(i, 0) for i in item_ids), dtype=np.float64, count=len(item_ids))
        return shown, clicks

    def reset(self, impressions: Iterable[Impression], events: Iterable[Event | Attributed]) -> None:
        """Recount from these records (after an erasure rewrote the log)."""
        fresh = ItemCounter()
        for impression in impressions:
            fresh.add_impression(impression)
        for record in events:
            fresh.add_event(record)
        with self._lock:
            self._shown, self._clicks = fresh._shown, fresh._clicks


class InteractionLog(ABC):
    """Events by user and the impressions shown, behind one of the backends (see the module docstring).
    Implementations are thread-safe; writes are durable when they return."""

    kind: str = ""

    @abstractmethod
    def append(self, events: Iterable[Event | Attributed]) -> int:
        """Durably append events (already validated) and make them visible; returns how many."""

    @abstractmethod
    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        """The user's events, oldest first (the last `limit` of them if given)."""

    @abstractmethod
    def erase_user(self, user_id: str) -> Erased:
        """Delete every event and impression of `user_id`, durably; afterwards no file or key of the
        backend holds the user id."""

    def forget_user(self, user_id: str) -> int:
        """`erase_user`, returning how many events there were."""
        return self.erase_user(user_id).events

    @abstractmethod
    def forget_item(self, item_id: str) -> int:
        """Delete every event of `item_id` (a deleted item), so no history uses it again; returns how many.
        Impressions that showed it stay (they are what was shown, and hold no user data beyond the user's)."""

    @abstractmethod
    def log_impression(self, impression: Impression) -> None:
        """Durably record a list shown."""

    def log_impressions(self, impressions: Sequence[Impression]) -> None:
        """Durably record several lists shown (a micro-batch of the service's answers); backends that can
        make them durable in one write (the file log: one fsync) override this."""
        for impression in impressions:
            self.log_impression(impression)

    @abstractmethod
    def impressions(self) -> Iterator[Impression]:
        """Every impression kept (any order)."""

    @abstractmethod
    def outcomes(self) -> Iterator[Attributed]:
        """Every attributed event kept (any order)."""

    def item_counts(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(impressions (n,), clicks (n,)) of each item on /recommend (see `ItemCounter`), 0 for an item
        never shown: what `TwoStageRecommender`'s exploration reads per request. Backends keep running
        counts; this fallback recounts the whole log."""
        counter = ItemCounter()
        counter.reset(self.impressions(), self.outcomes())
        return counter.counts(item_ids)

    @abstractmethod
    def __len__(self) -> int:
        """How many events are kept."""

    @property
    @abstractmethod
    def users(self) -> int:
        """How many users have events."""

    @abstractmethod
    def close(self) -> None: ...

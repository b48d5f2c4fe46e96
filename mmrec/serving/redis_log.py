"""The Redis backend of the interaction log: what lets any number of `mmrec serve` replicas share users'
events and the impressions they showed (`mmrec serve --events redis://[:PASSWORD@]HOST:PORT/DB`).

Durability is the file log's: a write is acknowledged once Redis has it on disk, which needs Redis with
`appendonly yes` and `appendfsync always` (Redis then fsyncs the append-only file before it replies).
Opening refuses a Redis configured otherwise. Keys (all under `mmrec:`):

    events:USER              list   the user's events, JSON rows as in events.jsonl (append order)
    users                    set    users with events                  event-count       string  how many events
    item-users:ITEM          set    users with events on ITEM (so an item's events can be found and deleted)
    impressions:USER         list   impressions shown to USER          impression-count  string  how many impressions
    impression-users         set    users with impressions             anonymous-impressions  list  the rest
    item-shown / item-clicks hash   ITEM -> times shown on /recommend / attributed clicks (exploration's
                                    counts, `InteractionLog.item_counts`; aggregates, no user id, kept on erasure)

Erasure runs as one Lua script (atomic across replicas): it deletes the user's lists and removes the user
from every set, so no key or value holds the user id; then it has Redis rewrite its append-only file
(BGREWRITEAOF) and waits for the rewrite, so the files on Redis's disk no longer hold it either (the old
AOF files are deleted by Redis as soon as the rewrite is done). The scripts touch keys they compute, so
this backend needs one Redis (with replicas or Sentinel if you like), not Redis Cluster.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from mmrec.data.schema import Event
from mmrec.serving.interaction_log import (
    CLICK, COUNTED_SURFACE, Attributed, Erased, EventLogError, Impression, InteractionLog, dumps, event_row,
    parse_event, plain,
)

log = logging.getLogger(__name__)

PREFIX = "mmrec:"
COMPACT_TIMEOUT_S = 120.0
SCAN_BATCH = 500

ERASE_USER = """
local p, u = ARGV[1], ARGV[2]
local ek = p .. 'events:' .. u
local rows = redis.call('LRANGE', ek, 0, -1)
for _, row in ipairs(rows) do
  local ok, ev = pcall(cjson.decode, row)
  if ok and type(ev) == 'table' and type(ev['item_id']) == 'string' then
    redis.call('SREM', p .. 'item-users:' .. ev['item_id'], u)
  end
end
if #rows > 0 then
  redis.call('DEL', ek)
  redis.call('DECRBY', p .. 'event-count', #rows)
end
redis.call('SREM', p .. 'users', u)
local ik = p .. 'impressions:' .. u
local shown = redis.call('LLEN', ik)
if shown > 0 then
  redis.call('DEL', ik)
  redis.call('DECRBY', p .. 'impression-count', shown)
end
redis.call('SREM', p .. 'impression-users', u)
return {#rows, shown}
"""

FORGET_ITEM = """
local p, item = ARGV[1], ARGV[2]
local sk = p .. 'item-users:' .. item
local removed = 0
for _, u in ipairs(redis.call('SMEMBERS', sk)) do
  local ek = p .. 'events:' .. u
  local kept = {}
  for _, row in ipairs(redis.call('LRANGE', ek, 0, -1)) do
    local ok, ev = pcall(cjson.decode, row)
    if ok and type(ev) == 'table' and ev['item_id'] == item then
      removed = removed + 1
    else
      table.insert(kept, row)
    end
  end
  redis.call('DEL', ek)
  if #kept == 0 then
    redis.call('SREM', p .. 'users', u)
  end
  for i = 1, #kept, 1000 do
    redis.call('RPUSH', ek, unpack(kept, i, math.min(i + 999, #kept)))
  end
end
redis.call('DEL', sk)
if removed > 0 then
  redis.call('DECRBY', p .. 'event-count', removed)
end
return removed
"""


class RedisEventLog(InteractionLog):
    """The interaction log in the Redis at `url` (`redis://[[USER]:PASSWORD@]HOST:PORT/DB`; `rediss://` for
    TLS). Stateless: every read goes to Redis, so an event written through one replica is in the next
    answer of every other. Thread-safe (a connection pool)."""

    kind = "redis"

    def __init__(self, url: str, *, require_durable: bool = True):
        import redis

        self._redis_errors = redis.RedisError
        try:
            self._r = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30,
                                           health_check_interval=30)
        except ValueError as exc:  # a malformed URL; the message names no password
            raise EventLogError(f"--events: {exc}") from None
        kw = self._r.connection_pool.connection_kwargs
        self.where = f"redis {kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}/{kw.get('db', 0)}"
        self._erase_user = self._r.register_script(ERASE_USER)
        self._forget_item = self._r.register_script(FORGET_ITEM)
        self._can_compact = True
        with self._errors():
            self._r.ping()
            self._check_durable(require_durable)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Redis failures become one EventLogError naming the server, never the URL (it may hold a password)."""
        try:
            yield
        except self._redis_errors as exc:
            raise EventLogError(f"{self.where}: {type(exc).__name__}: {exc}") from None

    def _check_durable(self, require: bool) -> None:
        try:
            config = self._r.config_get("append*")
            save = self._r.config_get("save").get("save", "")
        except self._redis_errors:  # CONFIG renamed or disabled (a managed Redis): cannot check
            self._can_compact = False
            log.warning("%s: cannot read its configuration (CONFIG); make sure it runs with appendonly yes and "
                        "appendfsync always, and that erased users leave its disk (BGREWRITEAOF)", self.where)
            return
        if require and (config.get("appendonly") != "yes" or config.get("appendfsync") != "always"):
            raise EventLogError(
                f"{self.where} does not fsync each write (appendonly {config.get('appendonly')}, appendfsync "
                f"{config.get('appendfsync')}): acknowledged events could be lost; run it with "
                f"--appendonly yes --appendfsync always")
        if save:
            log.warning("%s takes RDB snapshots (save %r): erased users stay in the last snapshot until the next "
                        "one; run it with save \"\" (the append-only file is enough)", self.where, save)

    # --- events ---------------------------------------------------------------------------------------
    def append(self, events: Iterable[Event | Attributed]) -> int:
        records = list(events)
        if not records:
            return 0
        with self._errors():
            pipe = self._r.pipeline(transaction=True)  # MULTI/EXEC: all of the batch or none of it
            for record in records:
                event = plain(record)
                pipe.rpush(f"{PREFIX}events:{event.user_id}", dumps(event_row(record)).decode("utf-8"))
                pipe.sadd(f"{PREFIX}item-users:{event.item_id}", event.user_id)
                pipe.sadd(f"{PREFIX}users", event.user_id)
                if isinstance(record, Attributed) and event.kind == CLICK:
                    pipe.hincrby(f"{PREFIX}item-clicks", event.item_id, 1)
            pipe.incrby(f"{PREFIX}event-count", len(records))
            pipe.execute()
        return len(records)

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        with self._errors():
            rows = self._r.lrange(f"{PREFIX}events:{user_id}", 0, -1)
        events = sorted((plain(r) for r in _parse_events(rows)), key=lambda e: e.timestamp)  # stable: late arrivals
        return events[-limit:] if limit else events

    def erase_user(self, user_id: str) -> Erased:
        with self._errors():
            events, shown = self._erase_user(args=[PREFIX, user_id])
            if events or shown:
                self._compact()
        return Erased(int(events), int(shown))

    def forget_item(self, item_id: str) -> int:
        with self._errors():
            return int(self._forget_item(args=[PREFIX, item_id]))

    def outcomes(self) -> Iterator[Attributed]:
        for rows in self._lists("users", "events:"):
            for record in _parse_events(rows):
                if isinstance(record, Attributed):
                    yield record

    # --- impressions ----------------------------------------------------------------------------------
    def log_impression(self, impression: Impression) -> None:
        row = dumps(impression.to_row()).decode("utf-8")
        with self._errors():
            pipe = self._r.pipeline(transaction=True)
            if impression.user_id is None:
                pipe.rpush(f"{PREFIX}anonymous-impressions", row)
            else:
                pipe.rpush(f"{PREFIX}impressions:{impression.user_id}", row)
                pipe.sadd(f"{PREFIX}impression-users", impression.user_id)
            pipe.incr(f"{PREFIX}impression-count")
            if impression.surface == COUNTED_SURFACE:
                for shown in impression.shown:
                    pipe.hincrby(f"{PREFIX}item-shown", shown.item_id, 1)
            pipe.execute()

    def item_counts(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if len(item_ids) == 0:  # (not `not item_ids`: a numpy array of ids has no truth value)
            return np.zeros(0), np.zeros(0)
        with self._errors():
            pipe = self._r.pipeline(transaction=False)
            pipe.hmget(f"{PREFIX}item-shown", list(item_ids))
            pipe.hmget(f"{PREFIX}item-clicks", list(item_ids))
            shown, clicks = pipe.execute()
        as_array = lambda values: np.array([float(v or 0) for v in values], dtype=np.float64)
        return as_array(shown), as_array(clicks)

    def impressions(self) -> Iterator[Impression]:
        with self._errors():
            anonymous = self._r.lrange(f"{PREFIX}anonymous-impressions", 0, -1)
        for rows in (anonymous, *self._lists("impression-users", "impressions:")):
            for row in rows:
                try:
                    yield Impression.from_row(_json(row))
                except (ValueError, TypeError, KeyError):
                    continue

    # --- the rest -------------------------------------------------------------------------------------
    def _lists(self, members: str, key: str) -> Iterator[list[str]]:
        """The lists `PREFIX + key + USER` of every USER in the set `PREFIX + members`, a batch at a time."""
        with self._errors():
            users = list(self._r.sscan_iter(f"{PREFIX}{members}", count=SCAN_BATCH))
        for start in range(0, len(users), SCAN_BATCH):
            with self._errors():
                pipe = self._r.pipeline(transaction=False)
                for user in users[start : start + SCAN_BATCH]:
                    pipe.lrange(f"{PREFIX}{key}{user}", 0, -1)
                batch = pipe.execute()
            yield from batch

    def _compact(self) -> None:
        """Have Redis rewrite its append-only file from memory and wait until it has: the erased records
        were in the old file, which Redis deletes once the rewrite is done. A rewrite already running may
        have started before the erasure, so it is waited for and another one started."""
        if not self._can_compact:
            log.warning("%s: erased from memory; its append-only file keeps the records until Redis rewrites it",
                        self.where)
            return
        import redis

        deadline = time.monotonic() + COMPACT_TIMEOUT_S
        while True:
            try:
                self._r.bgrewriteaof()
                break
            except redis.ResponseError as exc:
                if "in progress" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        while True:
            info = self._r.info("persistence")
            if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                break
            if time.monotonic() > deadline:
                raise EventLogError(f"{self.where}: the append-only file rewrite after an erasure did not finish")
            time.sleep(0.02)
        if info.get("aof_last_bgrewrite_status") != "ok":
            raise EventLogError(f"{self.where}: the append-only file rewrite after an erasure failed")

    def __len__(self) -> int:
        with self._errors():
            return int(self._r.get(f"{PREFIX}event-count") or 0)

    @property
    def users(self) -> int:
        with self._errors():
            return int(self._r.scard(f"{PREFIX}users"))

    def close(self) -> None:
        self._r.close()


def _json(row: str) -> dict[str, Any]:
    import json

    value = json.loads(row)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _parse_events(rows: Iterable[str]) -> Iterator[Event | Attributed]:
    for row in rows:
        try:
            yield parse_event(_json(row))
        except (ValueError, TypeError, KeyError):
            log.warning("an unreadable event in Redis is skipped")

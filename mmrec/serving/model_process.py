"""A served fusion transformer in its own process (`mmrec serve --model-process`): the model's forwards, the
ranking and the reasons run in a child process; the serving process keeps the vector store, the event log and
HTTP.

Why: a process runs one Python thread at a time, and a served model batch is mostly Python (small forwards,
per-request ranking, the reasons' deletion steps); qdrant-edge-py also holds that lock while it searches. One
process therefore serves at most one core's worth of requests however they are batched (8 concurrent clients
kept 0.96 of this 2-core box's cores busy). With the model in its own process, the serving process parses,
checks, searches and answers (JSON) while the model process forwards and ranks: two cores at work.

The child never opens the store: the embedded engine has one owner, and a second opener would not see the
items upserted after it opened. It reads through the serving process, which answers over the batch's pipe
while it waits, so a product upserted a second ago is ranked the moment the serving process can search it:

    serving process (RemoteRanker.recommend_many)          model process (_serve, a thread per conversation)
      ("recommend", requests, points)  ──────────────►     TwoStageRecommender.recommend_many over a StoreLink
                                       ◄──────────────     ("get", ids, names) | ("search", requests)
                                                           | ("vectors", which hits) | ("counts", ids)
      ("ok", value) | ("error", exception) ──────────►
                                       ◄──────────────     ("done", answers) | ("failed", exception)

Two conversations (pipes) by default, so that this process searches for one batch while the model ranks
another (`MicroBatcher(workers=2)`). A model process that dies is started again on the next batch (the batch
it held fails with a 503).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import queue
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from index import HitArrays, Point, SearchRequest, VersionedRows

if TYPE_CHECKING:  # the serving process imports torch only when it serves a model
    from mmrec.serving.two_stage import ItemCounts, RecommendRequest, ServingConfig

log = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # loading a checkpoint (torch import included) on a busy box
CLOSE_WAIT_S = 30.0  # for the batches in progress when the service stops
VECTOR_CACHE_MB = 256  # hit vectors the model process keeps (512-d: 131k candidates)


class ModelProcessError(RuntimeError):
    """The model process stopped, or never started."""


class StoreLink:
    """The store as the model process sees it (what `TwoStageRecommender` reads): `schema`, `get` and
    `search_batch_arrays`, each asked of the serving process over the pipe of the calling thread's batch
    (`use`); and the exploration's per-item counts, which the serving process's event log holds.

    A search's hits come without their vectors; those of hits not seen before at their point version are
    then asked for. Candidates recur across requests, so most of the 200 x C floats per request never
    cross the pipe (they would cost more to pickle than the search)."""

    def __init__(self, schema: Any, cache_mb: int = VECTOR_CACHE_MB) -> None:
        self.schema = schema
        self._local = threading.local()
        self._cache_mb = cache_mb
        self._vectors: dict[str, VersionedRows] = {}  # vector name -> hit vectors by item id and version
        self._vectors_lock = threading.Lock()

    def use(self, conn: Any) -> None:
        """Route this thread's reads over `conn` (one conversation per thread)."""
        self._local.conn = conn

    def _ask(self, *message: Any) -> Any:
        conn = self._local.conn
        conn.send(message)
        status, value = conn.recv()
        if status == "error":
            raise value
        return value

    def get(self, item_ids: Sequence[str], with_vectors: bool | Sequence[str] = False) -> list[Point]:
        return self._ask("get", list(item_ids), with_vectors if isinstance(with_vectors, bool) else list(with_vectors))

    def search_batch_arrays(self, requests: Sequence[SearchRequest]) -> list[HitArrays]:
        found = self._ask("search", list(requests))  # [(item_ids, scores, payload columns, versions)]
        vectors, missing = [], []
        with self._vectors_lock:
            for r, (request, (ids, _, _, versions)) in enumerate(zip(requests, found)):
                dim = self.schema.vectors[request.using]
                out = np.empty((len(ids), dim), dtype=np.float32)
                found_at = np.zeros(len(ids), dtype=bool)
                cache = self._cache(request.using, dim)
                if cache is not None and versions is not None:
                    at, rows = cache.find(ids, versions)
                    out[at] = cache.matrix[rows]
                    found_at[at] = True
                vectors.append(out)
                if not found_at.all():
                    missing.append((r, np.flatnonzero(~found_at)))
        if missing:
            fetched = self._ask("vectors", missing)
            with self._vectors_lock:
                for (r, at), rows in zip(missing, fetched):
                    vectors[r][at] = rows
                    ids, versions, cache = found[r][0], found[r][3], self._vectors.get(requests[r].using)
                    if cache is not None and versions is not None:
                        for i, row in zip(at.tolist(), rows):
                            cache.put(ids[i], int(versions[i]), row)
        return [HitArrays(ids, scores, _payloads(columns, len(ids)), v, versions)
                for (ids, scores, columns, versions), v in zip(found, vectors)]

    def _cache(self, using: str, dim: int) -> VersionedRows | None:
        cache = self._vectors.get(using)
        capacity = self._cache_mb * 2**20 // (4 * dim)
        if cache is None and capacity:
            cache = self._vectors[using] = VersionedRows(dim, capacity)
        return cache

    def item_counts(self, item_ids: Sequence[str]) -> Any:
        return self._ask("counts", list(item_ids))


def _columns(payloads: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, list[Any]]:
    """The `keys` ranking reads of each payload, as one list per key (cheaper to pickle than a dict per hit)."""
    return {k: [p.get(k) for p in payloads] for k in keys}


def _payloads(columns: dict[str, list[Any]], n: int) -> list[dict[str, Any]]:
    """`_columns` back to one (partial) payload per hit; absent keys stay absent."""
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, values in columns.items():
        for row, value in zip(rows, values):
            if value is not None:
                row[key] = value
    return rows


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (so the serving process maps it to the same 4xx/503), else its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - an exception class with a custom constructor
        return ModelProcessError(f"{type(exc).__name__}: {exc}")


def _serve(conns: list[Any], checkpoint: str, schema: Any, config: Any, vectors_version: str | None,
           explore: bool, threads: int) -> None:
    """The model process: load the checkpoint, then answer each conversation's batches on a thread of its own
    until told to close or the pipes end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the serving process, which closes this one
    import torch
    from threadpoolctl import threadpool_limits

    from mmrec.serving.two_stage import TwoStageRecommender

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    link = StoreLink(schema)
    try:
        ranker = TwoStageRecommender.from_checkpoint(checkpoint, link, expect_vectors_version=vectors_version,  # type: ignore[arg-type]
                                                     config=config, item_counts=link.item_counts if explore else None)
    except Exception as exc:  # noqa: BLE001 - reported to the serving process, which refuses to start
        conns[0].send(("failed", _portable(exc)))
        return
    import gc

    gc.freeze()  # the model is never garbage: full collections skip it (tail latency, as in `mmrec serve`)
    for conn in conns:
        conn.send(("ready", None))
    workers = [threading.Thread(target=_converse, args=(ranker, link, conn), daemon=True) for conn in conns]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def _converse(ranker: Any, link: StoreLink, conn: Any) -> None:
    """One conversation: batches in, answers out, one after another."""
    link.use(conn)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the serving process is gone
            return
        if message[0] == "close":
            return
        _, requests, points = message
        try:
            answers = ranker.recommend_many(requests, points=points)
        except Exception as exc:  # noqa: BLE001 - this batch fails, the process serves the next
            conn.send(("failed", _portable(exc)))
        else:
            conn.send(("done", answers))


class RemoteRanker:
    """Stands in for `TwoStageRecommender` in the serving process (`config`, `recommend_many`, `close`) with
    the model in a child process that reads `store` through this one. `conversations`: batches that may be in
    the model process at once (`parallel_batches`; with two, this process searches for one batch while the
    model ranks the other). `threads`: torch and BLAS threads of the model process."""

    def __init__(self, checkpoint: str | Path, store: Any, config: ServingConfig | None = None, *,
                 item_counts: ItemCounts | None = None, expect_vectors_version: str | None = None,
                 threads: int = 1, conversations: int = 2) -> None:
        from mmrec.serving.two_stage import RANKING_PAYLOAD_KEYS, ServingConfig

        if conversations < 1:
            raise ValueError(f"conversations must be >= 1, got {conversations}")
        self.config = config or ServingConfig()
        self.store = store
        self.item_counts = item_counts
        self.parallel_batches = conversations
        self._keys = RANKING_PAYLOAD_KEYS
        self._args = (str(checkpoint), store.schema, self.config, expect_vectors_version,
                      self.config.exploration.enabled and item_counts is not None, threads)
        self._lock = threading.Lock()  # guards the process and the pool of free conversations
        self._free: queue.Queue[Any] = queue.Queue()
        self._process: Any = None
        self._conns: list[Any] = []
        self._closed = False
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that holds torch and the engine's threads
        pairs = [ctx.Pipe() for _ in range(self.parallel_batches)]
        self._conns = [mine for mine, _ in pairs]
        self._process = ctx.Process(target=_serve, args=([theirs for _, theirs in pairs], *self._args),
                                    name="mmrec-model", daemon=True)
        self._process.start()
        for _, theirs in pairs:
            theirs.close()
        for conn in self._conns:
            if not conn.poll(START_TIMEOUT_S):
                self._stop()
                raise ModelProcessError(f"the model process did not load {self._args[0]} within {START_TIMEOUT_S:g} s")
            status, value = _recv(conn)
            if status == "failed":
                self._stop()
                raise value
        self._free = queue.Queue()
        for conn in self._conns:
            self._free.put(conn)
        log.info("model process %d serves %s", self._process.pid, self._args[0])

    def _conversation(self) -> tuple[queue.Queue[Any], Any]:
        """A free conversation with a running model process (started again if it died), and the pool to
        give it back to."""
        with self._lock:
            if self._closed:
                raise ModelProcessError("the model process is closed")
            if self._process is None or not self._process.is_alive():
                log.warning("the model process stopped (exit code %s); starting it again",
                            None if self._process is None else self._process.exitcode)
                self._stop()
                self._start()
            free = self._free
        return free, free.get()

    def recommend_many(self, requests: Sequence[RecommendRequest], *, points: Mapping[str, Point] | None = None
                       ) -> list[tuple[list[Any], list[str]]]:
        """`TwoStageRecommender.recommend_many`, run by the model process; its store reads are answered here."""
        free, conn = self._conversation()
        batch: dict[str, Any] = {}  # this batch's hits, as searched here (vectors, full payloads)
        try:
            try:
                conn.send(("recommend", list(requests), dict(points or {})))
            except (BrokenPipeError, OSError):
                raise ModelProcessError("the model process stopped") from None
            while True:
                status, value, *more = _recv(conn)
                if status == "done":
                    break
                if status == "failed":
                    raise value
                conn.send(self._answer(batch, status, value, *more))
        finally:
            free.put(conn)
        payloads = {i: p for hits in batch.get("hits", ()) for i, p in zip(hits.item_ids, hits.payloads)}
        for recs, _ in value:
            for r in recs:
                r.payload = dict(payloads.get(r.item_id, r.payload))
        return value

    def _answer(self, batch: dict[str, Any], kind: str, *args: Any) -> tuple[str, Any]:
        """The serving process's answer to one read of the model process (`StoreLink`)."""
        try:
            if kind == "get":
                return "ok", self.store.get(args[0], with_vectors=args[1])
            if kind == "search":
                found = batch["hits"] = self.store.search_batch_arrays(args[0])
                return "ok", [(h.item_ids, h.scores, _columns(h.payloads, self._keys), h.versions) for h in found]
            if kind == "vectors":
                return "ok", [batch["hits"][r].vectors[at] for r, at in args[0]]
            if kind == "counts" and self.item_counts is not None:
                return "ok", self.item_counts(args[0])
            return "error", ModelProcessError(f"the model process asked for {kind!r}")
        except Exception as exc:  # noqa: BLE001 - raised in the model process, which fails the batch with it
            return "error", _portable(exc)

    def close(self) -> None:
        """Stop the model process (after the batches in progress, given CLOSE_WAIT_S). Idempotent."""
        with self._lock:
            self._closed = True
            try:
                for _ in self._conns:
                    self._free.get(timeout=CLOSE_WAIT_S)
            except queue.Empty:
                log.warning("closing the model process with a batch still in it")
            self._stop()

    def _stop(self) -> None:
        if self._process is None:
            return
        for conn in self._conns:
            try:
                if self._process.is_alive():
                    conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        for conn in self._conns:
            conn.close()
        self._process, self._conns = None, []


def _recv(conn: Any) -> tuple[Any, ...]:
    try:
        return conn.recv()
    except (EOFError, OSError):
        raise ModelProcessError("the model process stopped") from None

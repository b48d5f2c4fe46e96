"""Dynamic micro-batching: concurrent requests that arrive within a few milliseconds of each other are
answered by one call on the whole batch (one model forward, one batched index query, one text-encoder call)
instead of one call each.

Why: on a small box the per-request cost of the model path is mostly fixed overhead (Python, small
matrix products, one engine call per query) and threads that run requests side by side only fight over the
same cores (torch, BLAS and the engine each have their own pool). One worker thread per batcher runs the
batches one after another; requests that arrive while it is busy wait for the next batch, so the batch size
grows with the load on its own and a single client pays at most the window.

    batcher = MicroBatcher(run_batch, BatchingConfig(window_ms=2))
    answer = await batcher.run(request)      # from an async route: the event loop never blocks
    answer = batcher.submit(request).result()  # from a thread

`run_batch(requests) -> answers` must give answer i for request i. If it raises, each request of that
batch is run again alone, so one bad request fails only itself.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")

DEFAULT_WINDOW_MS = 5.0
DEFAULT_MAX_BATCH = 32


@dataclass(frozen=True)
class BatchingConfig:
    """window_ms: how long a batch may wait for more requests when the previous batch had company
    (0: no batching, every request is answered on its own as before); a lone client never waits.
    max_batch: the most requests in one batch."""

    window_ms: float = DEFAULT_WINDOW_MS
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        if not 0 <= self.window_ms <= 1000:
            raise ValueError(f"the batch window must be 0..1000 ms, got {self.window_ms:g}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")

    @property
    def enabled(self) -> bool:
        return self.window_ms > 0


class BatcherClosed(RuntimeError):
    """A request was submitted to (or left waiting in) a batcher that has been closed."""


class MicroBatcher(Generic[Req, Res]):
    """Collects submitted requests into batches for `run_batch`, run on one worker thread."""

    def __init__(self, run_batch: Callable[[list[Req]], Sequence[Res]], config: BatchingConfig | None = None,
                 *, name: str = "batcher") -> None:
        self.config = config or BatchingConfig()
        self.name = name
        self._run_batch = run_batch
        self._queue: deque[tuple[float, Req, Future]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._in_system = 1  # the last batch and the requests queued when it was answered (how many to wait for)
        self.batches = 0  # how many batches ran, and how many requests they held (for tests and logs)
        self.requests = 0
        self._thread = threading.Thread(target=self._loop, name=f"mmrec-{name}", daemon=True)
        self._thread.start()

    def submit(self, request: Req) -> Future:
        """Queue a request; the future gets its answer (or its exception)."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"the {self.name} is closed")
            self._queue.append((time.monotonic(), request, future))
            self._cond.notify()
        return future

    async def run(self, request: Req) -> Res:
        """Submit and await the answer without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(request))

    def close(self) -> None:
        """Finish the batches already queued, then stop the worker. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
        if self.batches:
            log.info("%s: %d requests in %d batches (%.1f per batch)", self.name, self.requests, self.batches,
                     self.requests / self.batches)

    # ------------------------------------------------------------------------------------------------
    def _take(self) -> list[tuple[float, Req, Future]] | None:
        """The next batch: wait for a first request, then at most the window for as many requests as were
        in the system when the last batch was answered (that batch, whose clients are about to send their
        next requests, and those queued behind it), or a full batch. None once closed and drained.

        Waiting for that count, not for a full batch, keeps a lone client from paying the window (it never
        waits) while concurrent clients whose answers just went out get the moment they need to send their
        next request and join the batch, instead of splitting into two cohorts that take turns in
        half-size batches (counting the queue at take time instead keeps such a split going forever)."""
        window = self.config.window_ms / 1000.0
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            want = min(self._in_system, self.config.max_batch)
            deadline = time.monotonic() + window
            while len(self._queue) < want and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(len(self._queue), self.config.max_batch)
            return [self._queue.popleft() for _ in range(n)]

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            live = [(r, f) for _, r, f in batch if f.set_running_or_notify_cancel()]
            if live:
                self._execute(live)
            with self._cond:
                self._in_system = max(len(batch) + len(self._queue), 1)

    def _execute(self, batch: list[tuple[Req, Future]]) -> None:
        self.batches += 1
        self.requests += len(batch)
        try:
            answers = list(self._run_batch([r for r, _ in batch]))
            if len(answers) != len(batch):
                raise RuntimeError(f"{self.name}: {len(answers)} answers for {len(batch)} requests")
        except BaseException as exc:  # noqa: BLE001 - isolate the request that failed
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            log.debug("%s: a batch of %d failed (%s); answering its requests one by one", self.name, len(batch), exc)
            for request, future in batch:
                try:
                    future.set_result(self._run_batch([request])[0])
                except BaseException as one:  # noqa: BLE001
                    future.set_exception(one)
            return
        for (_, future), answer in zip(batch, answers):
            future.set_result(answer)

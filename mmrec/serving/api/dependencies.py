"""What routes are handed through FastAPI's `Depends`: the opened services (a small typed container on
`app.state`), the service settings, and the result filter that /search, /search/image and /similar
take as query parameters (declared once, here)."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from index import Filter
from mmrec.serving.api.schemas import MAX_K, Id
from mmrec.serving.batching import BatchingConfig, MicroBatcher
from mmrec.serving.api.settings import ServiceSettings
from mmrec.serving.api.telemetry import Telemetry
from mmrec.serving.interaction_log import InteractionLog
from mmrec.serving.language_rank import LanguageRankConfig
from mmrec.serving.markets import Markets
from mmrec.serving.variants import Variant
from mmrec.store.catalog_store import CatalogStore


@dataclass
class Services:
    """What the routes work on, opened once per process (`mmrec.serving.app.open_services`) and closed
    when the app shuts down. `events`: the interaction log (events and impressions; a file pair in the
    data dir or a shared Redis). `variants`: what answers /recommend, each with its traffic share (a
    ranker of None is content-based); `experiment` names the A/B test (it salts the user assignment).
    `batching`: the micro-batching of concurrent /recommend (model variants) and /search requests
    (`mmrec.serving.batching`; window 0: every request on its own). `language_rank`: how an unfiltered /search
    orders listings in several languages (`mmrec.serving.language_rank`; off by default)."""

    catalog: CatalogStore
    events: InteractionLog
    markets: Markets
    variants: tuple[Variant, ...] = (Variant("default", 1.0),)
    experiment: str = "default"
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    language_rank: LanguageRankConfig = field(default_factory=LanguageRankConfig)
    _batchers: dict[str, MicroBatcher] = field(default_factory=dict, init=False, repr=False)
    _batchers_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def batcher(self, name: str, run_batch: Callable[[list[Any]], list[Any]]) -> MicroBatcher:
        """The batcher `name` (one worker thread each, started on first use), running `run_batch`."""
        batcher = self._batchers.get(name)
        if batcher is None:
            with self._batchers_lock:
                if self._closed:
                    raise HTTPException(503, "the service is shutting down")
                batcher = self._batchers.get(name)
                if batcher is None:
                    batcher = self._batchers[name] = MicroBatcher(run_batch, self.batching, name=f"{name} batcher")
        return batcher

    def close(self) -> None:
        with self._batchers_lock:
            self._closed = True
            batchers, self._batchers = list(self._batchers.values()), {}
        try:
            for batcher in batchers:  # the batches already queued finish before the store closes
                batcher.close()
        finally:
            try:
                self.catalog.close()
            finally:
                self.events.close()


async def get_services(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if services is None:  # an app built for its OpenAPI document only
        raise HTTPException(503, "the service is not open")
    return services


async def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


async def get_telemetry(request: Request) -> Telemetry:
    return request.app.state.telemetry


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
TelemetryDep = Annotated[Telemetry, Depends(get_telemetry)]
K = Annotated[int, Query(ge=1, le=MAX_K, description="how many results")]
UserQuery = Annotated[Id | None, Query(description="the user shown the results (kept with the impression; "
                                      "erased with the user)")]


def make_filter(markets: Markets, market: str | None = None, language: str | None = None,
                category: str | None = None, in_stock: bool | None = None) -> Filter | None:
    """The store filter for these fields (None: no constraint); an unknown market is a 400 (checking a
    market not seen before reads the store: call it off the event loop when `market` is given)."""
    if market is not None:
        markets.check(market)
    flt = Filter(markets=market, languages=language, categories=category, in_stock=in_stock)
    return None if flt.is_empty() else flt


async def query_filter(
    services: ServicesDep,
    market: Annotated[str | None, Query(min_length=1, max_length=64,
                                        description="a market items are listed in (case-sensitive)")] = None,
    language: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    category: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    in_stock: bool | None = None,
) -> Filter | None:
    if market is None or services.markets.is_known(market):  # no store access: answered on the event loop
        return make_filter(services.markets, market, language, category, in_stock)
    return await run_in_threadpool(make_filter, services.markets, market, language, category, in_stock)


FilterDep = Annotated[Filter | None, Depends(query_filter)]

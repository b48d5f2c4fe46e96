"""What routes are handed through FastAPI's `Depends`: the opened services (a small typed container on
`app.state`), the service settings, and the result filter that /search, /search/image and /similar
take as query parameters (declared once, here)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from index import Filter
from mmrec.serving.api.schemas import MAX_K, Id
from mmrec.serving.api.settings import ServiceSettings
from mmrec.serving.api.telemetry import Telemetry
from mmrec.serving.interaction_log import InteractionLog
from mmrec.serving.markets import Markets
from mmrec.serving.variants import Variant
from mmrec.store.catalog_store import CatalogStore


@dataclass
class Services:
    """What the routes work on, opened once per process (`mmrec.serving.app.open_services`) and closed
    when the app shuts down. `events`: the interaction log (events and impressions; a file pair in the
    data dir or a shared Redis). `variants`: what answers /recommend, each with its traffic share (a
    ranker of None is content-based); `experiment` names the A/B test (it salts the user assignment)."""

    catalog: CatalogStore
    events: InteractionLog
    markets: Markets
    variants: tuple[Variant, ...] = (Variant("default", 1.0),)
    experiment: str = "default"

    def close(self) -> None:
        try:
            self.catalog.close()
        finally:
            self.events.close()


def get_services(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if services is None:  # an app built for its OpenAPI document only
        raise HTTPException(503, "the service is not open")
    return services


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def get_telemetry(request: Request) -> Telemetry:
    return request.app.state.telemetry


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
TelemetryDep = Annotated[Telemetry, Depends(get_telemetry)]
K = Annotated[int, Query(ge=1, le=MAX_K, description="how many results")]
UserQuery = Annotated[Id | None, Query(description="the user shown the results (kept with the impression; "
                                      "erased with the user)")]


def make_filter(markets: Markets, market: str | None = None, language: str | None = None,
                category: str | None = None, in_stock: bool | None = None) -> Filter | None:
    """The store filter for these fields (None: no constraint); an unknown market is a 400."""
    if market is not None:
        markets.check(market)
    flt = Filter(markets=market, languages=language, categories=category, in_stock=in_stock)
    return None if flt.is_empty() else flt


def query_filter(
    services: ServicesDep,
    market: Annotated[str | None, Query(min_length=1, max_length=64,
                                        description="a market items are listed in (case-sensitive)")] = None,
    language: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    category: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    in_stock: bool | None = None,
) -> Filter | None:
    return make_filter(services.markets, market, language, category, in_stock)


FilterDep = Annotated[Filter | None, Depends(query_filter)]

"""What routes are handed through FastAPI's `Depends`: the opened services (a small typed container on
`app.state`), the service settings, and the result filter that /search, /search/image and /similar
take as query parameters (declared once, here)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Query, Request

from index import Filter
from mmrec.serving.api.schemas import MAX_K
from mmrec.serving.api.settings import ServiceSettings
from mmrec.serving.event_log import EventLog
from mmrec.serving.markets import Markets
from mmrec.store.catalog_store import CatalogStore

if TYPE_CHECKING:  # torch comes with it; the app itself does not need it
    from mmrec.serving.two_stage import TwoStageRecommender


@dataclass
class Services:
    """What the routes work on, opened once per process (`mmrec.serving.app.open_service`) and closed
    when the app shuts down. `ranker`: the fusion transformer behind /recommend (None: content-based)."""

    catalog: CatalogStore
    events: EventLog
    markets: Markets
    ranker: "TwoStageRecommender | None" = None

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


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
K = Annotated[int, Query(ge=1, le=MAX_K, description="how many results")]


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

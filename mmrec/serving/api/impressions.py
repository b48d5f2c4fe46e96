"""Every answer that shows a list (/recommend, /search, /search/image, /items/{id}/similar) gets a request
id and is logged as an impression before it is sent: the items with their positions and scores, the
variant and model that ranked them, the user (when the request names one), the market, the time. No query
text or image is kept. A client that posts an event with that `request_id` attributes it to the list."""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from index import Filter
from mmrec.serving.api.dependencies import Services
from mmrec.serving.api.telemetry import Telemetry
from mmrec.serving.interaction_log import Impression, Shown, new_request_id
from mmrec.serving.variants import CONTENT


def log_shown(services: Services, telemetry: Telemetry, results: Sequence[dict[str, Any]], *, surface: str,
              user_id: str | None, market: str | None, variant: str | None = None, model: str = CONTENT,
              request_id: str | None = None) -> str:
    """Log what `results` (result dicts with item_id and score, in the order shown) showed; returns the
    request id. `variant`: the A/B arm (search surfaces are their own, named after the surface)."""
    impression = shown_impression(results, surface=surface, user_id=user_id, market=market, variant=variant,
                                  model=model, request_id=request_id)
    log_impressions(services, telemetry, [impression])
    return impression.request_id


def shown_impression(results: Sequence[dict[str, Any]], *, surface: str, user_id: str | None, market: str | None,
                     variant: str | None = None, model: str = CONTENT, request_id: str | None = None) -> Impression:
    """The impression `log_shown` records for `results` (not yet logged)."""
    shown = tuple(Shown(r["item_id"], position, float(r["score"])) for position, r in enumerate(results, 1))
    return Impression(request_id=request_id or new_request_id(), timestamp=time.time(), surface=surface,
                      variant=variant or surface, model=model, user_id=user_id, market=market, shown=shown)


def log_impressions(services: Services, telemetry: Telemetry, impressions: Sequence[Impression]) -> None:
    """Record impressions durably in one write where the log can (a micro-batch's answers: one fsync)."""
    services.events.log_impressions(impressions)
    for impression in impressions:
        telemetry.impressions.labels(impression.surface, impression.variant).inc()


def logged_search(services: Services, telemetry: Telemetry, out: dict[str, Any], *, surface: str,
                  user_id: str | None, flt: Filter | None) -> dict[str, Any]:
    """A search-like answer (`search_out`) with its request id, logged as an impression (its market: the
    filter's, when it names one)."""
    request_id = log_shown(services, telemetry, out["results"], surface=surface, user_id=user_id,
                           market=filter_market(flt))
    return {"request_id": request_id, **out}


def filter_market(flt: Filter | None) -> str | None:
    """The market a search impression is logged with: the filter's, when it names one."""
    return flt.markets[0] if flt is not None and flt.markets and len(flt.markets) == 1 else None

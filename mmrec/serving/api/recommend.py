"""POST /recommend: recommendations with reasons, for a user (from their events) or an ad-hoc history,
from the A/B variant the user is assigned to; the answer carries a request id and is logged as an impression."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from mmrec.serving.api.dependencies import ServicesDep, TelemetryDep, make_filter
from mmrec.serving.api.impressions import log_shown
from mmrec.serving.api.schemas import (
    ERRORS, NEGATIVE_RATING_BELOW, RecommendIn, RecommendOut, recommendation_out,
)
from mmrec.serving.interaction_log import new_request_id
from mmrec.serving.variants import pick

router = APIRouter(tags=["recommend"])


@router.post("/recommend", response_model=RecommendOut, responses=ERRORS)
def recommend(body: RecommendIn, services: ServicesDep, telemetry: TelemetryDep) -> dict[str, Any]:
    """Ranked by the variant's fusion transformer (`--model` / `--variant name=CHECKPOINT:SHARE`), else
    content-based (items near the mean of the history's vectors). A user is always served by the same
    variant (a hash of the user id); an ad-hoc history by a random one. Low ratings count against an item.
    History ids that are not in the catalog are left out and listed in `history_dropped` (item ids are
    not secret). A user without events, never seen or erased, gets the same empty answer either way: no
    user can be told to exist."""
    flt = make_filter(services.markets, market=body.market, language=body.language, in_stock=body.in_stock)
    request_id = new_request_id()
    variant = pick(services.variants, body.user_id if body.user_id is not None else request_id, services.experiment)
    dropped: list[str] = []
    negatives: list[str] = []
    if body.user_id is not None:
        source: list[Any] = services.events.history(body.user_id)
        history = [e.item_id for e in source]
        negatives = [e.item_id for e in source
                     if e.kind == "rating" and e.value is not None and e.value < NEGATIVE_RATING_BELOW]
    else:
        known = {p.item_id for p in services.catalog.store.get(list(dict.fromkeys(body.history or [])))}
        dropped = [i for i in dict.fromkeys(body.history or []) if i not in known]
        history = source = [i for i in body.history or [] if i in known]
    if not history:
        recs, used = [], []
    elif variant.ranker is not None:  # the fusion transformer reads the events themselves (times, kinds, markets)
        recs, used = variant.ranker.recommend(source, body.k, flt, market=body.market, negatives=negatives)
    else:
        recs, used = services.catalog.recommend(history, body.k, flt, negatives=negatives)
    results = [recommendation_out(r) for r in recs]
    log_shown(services, telemetry, results, surface="recommend", user_id=body.user_id, market=body.market,
              variant=variant.name, model=variant.model, request_id=request_id)
    return {"request_id": request_id, "variant": variant.name, "user_id": body.user_id, "history_used": used,
            "history_dropped": dropped, "results": results}

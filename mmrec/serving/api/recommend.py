"""POST /recommend: recommendations with reasons, for a user (from their events) or an ad-hoc history."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from mmrec.serving.api.dependencies import ServicesDep, make_filter
from mmrec.serving.api.schemas import (
    ERRORS, NEGATIVE_RATING_BELOW, RecommendIn, RecommendOut, recommendation_out,
)

router = APIRouter(tags=["recommend"])


@router.post("/recommend", response_model=RecommendOut, responses=ERRORS)
def recommend(body: RecommendIn, services: ServicesDep) -> dict[str, Any]:
    """Ranked by the fusion transformer when the service runs with `--model`, else content-based (items
    near the mean of the history's vectors). Low ratings count against an item. History ids that are not
    in the catalog are left out and listed in `history_dropped` (item ids are not secret). A user without
    events, never seen or erased, gets the same empty answer either way: no user can be told to exist."""
    flt = make_filter(services.markets, market=body.market, language=body.language, in_stock=body.in_stock)
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
    elif services.ranker is not None:  # the fusion transformer reads the events themselves (times, kinds, markets)
        recs, used = services.ranker.recommend(source, body.k, flt, market=body.market, negatives=negatives)
    else:
        recs, used = services.catalog.recommend(history, body.k, flt, negatives=negatives)
    return {"user_id": body.user_id, "history_used": used, "history_dropped": dropped,
            "results": [recommendation_out(r) for r in recs]}

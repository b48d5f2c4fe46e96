"""POST /recommend: recommendations with reasons, for a user (from their events) or an ad-hoc history,
from the A/B variant the user is assigned to; the answer carries a request id and is logged as an impression.

Requests are micro-batched per variant (`mmrec serve --batch-window-ms`, mmrec/serving/batching.py): the
concurrent requests of a few milliseconds are looked up, embedded and ranked together on the variant's batch
thread (a model: `TwoStageRecommender.recommend_many`, one forward and one batched index query; content-based:
`CatalogStore.recommend_many`, one batched grouped search), each answered as it would be alone, and their
impressions logged in one durable write. The event loop only validates and awaits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from index import Filter
from mmrec.serving.api.dependencies import Services, ServicesDep, TelemetryDep, query_filter
from mmrec.serving.api.impressions import log_impressions, shown_impression
from mmrec.serving.api.schemas import (
    ERRORS, NEGATIVE_RATING_BELOW, RecommendIn, RecommendOut, recommendation_out,
)
from mmrec.serving.api.telemetry import Telemetry
from mmrec.serving.interaction_log import new_request_id
from mmrec.serving.variants import Variant, pick
from mmrec.store.catalog_store import ContentRequest

router = APIRouter(tags=["recommend"])


@dataclass
class RecommendCall:
    """One checked /recommend request on its way to a batch."""

    body: RecommendIn
    flt: Filter | None
    variant: Variant
    request_id: str


@router.post("/recommend", response_model=RecommendOut, responses=ERRORS)
async def recommend(body: RecommendIn, services: ServicesDep, telemetry: TelemetryDep) -> dict[str, Any]:
    """Ranked by the variant's fusion transformer (`--model` / `--variant name=CHECKPOINT:SHARE`), else
    content-based (items near the mean of the history's vectors). A user is always served by the same
    variant (a hash of the user id); an ad-hoc history by a random one. Low ratings count against an item.
    History ids that are not in the catalog are left out and listed in `history_dropped` (item ids are
    not secret). A user without events, never seen or erased, gets the same empty answer either way: no
    user can be told to exist."""
    flt = await query_filter(services, body.market, body.language, None, body.in_stock)  # off the loop if it reads
    request_id = new_request_id()
    variant = pick(services.variants, body.user_id if body.user_id is not None else request_id, services.experiment)
    call = RecommendCall(body, flt, variant, request_id)
    if services.batching.enabled:
        batcher = services.batcher(f"recommend:{variant.name}", lambda calls: answer_calls(services, telemetry, calls))
        return await batcher.run(call)
    return (await run_in_threadpool(answer_calls, services, telemetry, [call]))[0]


def answer_calls(services: Services, telemetry: Telemetry, calls: list[RecommendCall]) -> list[dict[str, Any]]:
    """The answers to these requests, logged as impressions (one durable write for all): one store read
    for the ad-hoc histories' ids, one `recommend_many` per model variant and one for the content-based
    requests."""
    wanted = list(dict.fromkeys(i for c in calls if c.body.user_id is None for i in c.body.history or []))
    # one read, with the vectors when a model ranks (recommend_many reuses it instead of reading again)
    using = sorted({c.variant.ranker.config.using for c in calls if c.variant.ranker is not None})
    found = services.catalog.store.get(wanted, with_vectors=using or False) if wanted else []
    known = {p.item_id for p in found}
    sources, histories, negatives, dropped = [], [], [], []
    for c in calls:
        body = c.body
        if body.user_id is not None:
            source: list[Any] = services.events.history(body.user_id)
            histories.append([e.item_id for e in source])
            negatives.append([e.item_id for e in source
                              if e.kind == "rating" and e.value is not None and e.value < NEGATIVE_RATING_BELOW])
            dropped.append([])
        else:
            ids = body.history or []
            dropped.append([i for i in dict.fromkeys(ids) if i not in known])
            source = [i for i in ids if i in known]
            histories.append(source)
            negatives.append([])
        sources.append(source)
    ranked: list[tuple[list, list[str]] | None] = [None] * len(calls)
    by_ranker: dict[int, list[int]] = {}
    content: list[int] = []
    for i, c in enumerate(calls):
        if not histories[i]:
            ranked[i] = ([], [])
        elif c.variant.ranker is not None:  # the fusion transformer reads the events themselves
            by_ranker.setdefault(id(c.variant.ranker), []).append(i)
        else:
            content.append(i)
    if content:
        answers = services.catalog.recommend_many([ContentRequest(histories[i], calls[i].body.k, calls[i].flt,
                                                                  negatives[i]) for i in content])
        for i, a in zip(content, answers):
            ranked[i] = a
    if by_ranker:
        from mmrec.serving.two_stage import RecommendRequest

        for idx in by_ranker.values():
            ranker = calls[idx[0]].variant.ranker
            answers = ranker.recommend_many([
                RecommendRequest(sources[i], calls[i].body.k, calls[i].flt, market=calls[i].body.market,
                                 negatives=negatives[i]) for i in idx], points={p.item_id: p for p in found})
            for i, a in zip(idx, answers):
                ranked[i] = a
    out, impressions = [], []
    for c, d, (recs, used) in zip(calls, dropped, ranked):  # type: ignore[misc]
        results = [recommendation_out(r) for r in recs]
        out.append({"request_id": c.request_id, "variant": c.variant.name, "user_id": c.body.user_id,
                    "history_used": used, "history_dropped": d, "results": results})
        impressions.append(shown_impression(results, surface="recommend", user_id=c.body.user_id,
                                            market=c.body.market, variant=c.variant.name, model=c.variant.model,
                                            request_id=c.request_id))
    log_impressions(services, telemetry, impressions)
    return out

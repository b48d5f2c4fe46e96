"""Search: products matching a text query in any language, or an uploaded image. Each answer carries a
request id and is logged as an impression (without the query: see api/impressions.py).

Concurrent text queries are micro-batched (`mmrec serve --batch-window-ms`, mmrec/serving/batching.py): one
text-encoder call and one batched index query (`VectorStore.search_groups_batch`) for the queries of a few
milliseconds, instead of one encoder call at a time behind the encoder's lock."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from index import Filter, SearchRequest
from mmrec.serving import language_rank
from mmrec.serving.api.dependencies import FilterDep, K, Services, ServicesDep, TelemetryDep, UserQuery
from mmrec.serving.api.errors import clean
from mmrec.serving.api.images import check_image
from mmrec.serving.api.impressions import filter_market, log_impressions, logged_search, shown_impression
from mmrec.serving.api.telemetry import Telemetry
from mmrec.serving.api.schemas import ERRORS, MAX_IMAGE_BYTES, SearchOut, no_control, not_blank, search_out

router = APIRouter(tags=["search"])


@dataclass
class TextQuery:
    """One checked /search request on its way to a batch."""

    q: str
    k: int
    flt: Filter | None
    user_id: str | None = None


@router.get("/search", response_model=SearchOut, responses=ERRORS)
async def search(
    q: Annotated[str, Query(min_length=1, max_length=1000, description="text in any language")],
    services: ServicesDep, telemetry: TelemetryDep, flt: FilterDep, k: K = 10, user_id: UserQuery = None,
) -> dict[str, Any]:
    """Products matching a text query in any language, one result per product."""
    for check in (not_blank, no_control):
        try:
            check(q)
        except ValueError as exc:
            raise HTTPException(400, f"q: {clean(exc)}") from None
    query = TextQuery(q, k, flt, user_id)
    if services.batching.enabled:
        return await services.batcher("search", lambda queries: search_texts(services, telemetry, queries)).run(query)
    return (await run_in_threadpool(search_texts, services, telemetry, [query]))[0]


def search_texts(services: Services, telemetry: Telemetry, queries: list[TextQuery]) -> list[dict[str, Any]]:
    """The answers to text queries, logged as impressions in one durable write: one encoder call, one
    batched grouped search."""
    vectors = services.catalog.embed_queries([x.q for x in queries])
    groups = language_rank.search_groups(  # by product; language-fair when the service turns it on
        services.catalog.store, [SearchRequest(v, using="fused", k=x.k, filter=x.flt) for v, x in zip(vectors, queries)],
        services.language_rank)
    out, impressions = [], []
    for x, g in zip(queries, groups):
        answer = search_out(g)
        impression = shown_impression(answer["results"], surface="search", user_id=x.user_id,
                                      market=filter_market(x.flt))
        impressions.append(impression)
        out.append({"request_id": impression.request_id, **answer})
    log_impressions(services, telemetry, impressions)
    return out


@router.post("/search/image", response_model=SearchOut, responses=ERRORS)
def search_image(
    file: Annotated[UploadFile, File(description="an image (PNG, JPEG, WebP, ...)")],
    services: ServicesDep, telemetry: TelemetryDep, flt: FilterDep, k: K = 10, user_id: UserQuery = None,
) -> dict[str, Any]:
    """Products that look like / are described like the uploaded image, one result per product."""
    if services.catalog.encoder.image_encoder is None:
        raise HTTPException(400, "this service runs without an image encoder")
    data = file.file.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise HTTPException(413, f"image is larger than {MAX_IMAGE_BYTES} bytes")
    check_image("uploaded file", data)
    vector = services.catalog.embed_image(data)
    return logged_search(services, telemetry, search_out(services.catalog.search_vector(vector, k, flt)),
                         surface="search_image", user_id=user_id, flt=flt)


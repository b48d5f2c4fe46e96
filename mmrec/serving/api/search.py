"""Search: products matching a text query in any language, or an uploaded image. Each answer carries a
request id and is logged as an impression (without the query: see api/impressions.py)."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Query, UploadFile

from mmrec.serving.api.dependencies import FilterDep, K, ServicesDep, TelemetryDep, UserQuery
from mmrec.serving.api.errors import clean
from mmrec.serving.api.images import check_image
from mmrec.serving.api.impressions import logged_search
from mmrec.serving.api.schemas import ERRORS, MAX_IMAGE_BYTES, SearchOut, no_control, not_blank, search_out

router = APIRouter(tags=["search"])


@router.get("/search", response_model=SearchOut, responses=ERRORS)
def search(
    q: Annotated[str, Query(min_length=1, max_length=1000, description="text in any language")],
    services: ServicesDep, telemetry: TelemetryDep, flt: FilterDep, k: K = 10, user_id: UserQuery = None,
) -> dict[str, Any]:
    """Products matching a text query in any language, one result per product."""
    for check in (not_blank, no_control):
        try:
            check(q)
        except ValueError as exc:
            raise HTTPException(400, f"q: {clean(exc)}") from None
    vector = services.catalog.embed_query(q)
    return logged_search(services, telemetry, search_out(services.catalog.search_vector(vector, k, flt)),
                         surface="search", user_id=user_id, flt=flt)


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


"""Items: upsert a batch (searchable at once), read, delete, and similar items.

Item ids are opaque strings and may contain '/': the id is the rest of the path, percent-encoded or not
(`/items/sku%2F1` and `/items/sku/1` name the same item). `/items/{id}/similar` is declared before
`/items/{id}` so that it wins; an id that itself ends in '/similar' is refused at upsert.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path

from mmrec.serving.api.dependencies import FilterDep, K, ServicesDep, SettingsDep, TelemetryDep, UserQuery
from mmrec.serving.api.images import check_image, decode_base64, read_image_path
from mmrec.serving.api.impressions import logged_search
from mmrec.serving.api.schemas import (
    ERRORS, MAX_ID_CHARS, DeleteOut, ItemOut, ItemsIn, SearchOut, UpsertOut, item_out, search_out,
)
from mmrec.data.schema import Item

router = APIRouter(tags=["items"])
ItemIdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, description="may contain '/'")]


@router.post("/items", response_model=UpsertOut, responses=ERRORS)
def upsert_items(body: ItemsIn, services: ServicesDep, settings: SettingsDep) -> dict[str, Any]:
    """Upsert a batch: embedded and searchable/recommendable when this returns (all or nothing)."""
    ids = [it.item_id for it in body.items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise HTTPException(400, f"item_id {dup!r} appears more than once in the batch")
    records = []
    for it in body.items:
        label = f"item {it.item_id!r}"
        image: bytes | None = None
        if it.image_base64 is not None:
            image = decode_base64(label, it.image_base64)
        elif it.image_path is not None:
            image = read_image_path(label, it.image_path, settings.image_root)
        if image is not None:
            check_image(label, image)
            if services.catalog.encoder.image_encoder is None:
                raise HTTPException(400, "this service runs without an image encoder; leave images out")
        records.append(Item(
            item_id=it.item_id, title=it.title, description=it.description, language=it.language,
            market=it.market, category=it.category, product_id=it.product_id, price=it.price,
            in_stock=it.in_stock, created_at=it.created_at, image=image,
        ))
    written = services.catalog.upsert_items(records)
    services.markets.add(r.market for r in records)
    return {"upserted": len(written), "item_ids": written}


@router.get("/items/{item_id:path}/similar", response_model=SearchOut, responses=ERRORS)
def similar(item_id: ItemIdPath, services: ServicesDep, telemetry: TelemetryDep, flt: FilterDep, k: K = 10,
            user_id: UserQuery = None) -> dict[str, Any]:
    """Other products like this item (its own listings in other languages are left out); logged as an
    impression, like a search."""
    groups = services.catalog.similar(item_id, k, flt)
    if groups is None:
        raise HTTPException(404, "unknown item")
    return logged_search(services, telemetry, search_out(groups), surface="similar", user_id=user_id, flt=flt)


@router.get("/items/{item_id:path}", response_model=ItemOut, responses=ERRORS)
def get_item(item_id: ItemIdPath, services: ServicesDep) -> dict[str, Any]:
    payload = services.catalog.get(item_id)
    if payload is None:
        raise HTTPException(404, "unknown item")
    return item_out(payload, item_id)


@router.delete("/items/{item_id:path}", response_model=DeleteOut, responses=ERRORS)
def delete_item(item_id: ItemIdPath, services: ServicesDep) -> dict[str, Any]:
    """Delete an item; its events leave the event log too, so no history uses it again (even if an item
    with the same id is added later)."""
    if not services.catalog.delete(item_id):
        raise HTTPException(404, "unknown item")
    services.events.forget_item(item_id)
    return {"deleted": item_id}

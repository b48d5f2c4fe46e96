"""The HTTP service: item upserts that are searchable at once, multilingual text and image search,
similar items, content-based recommendations with reasons, and event ingestion.

Every input is validated before anything is written, so a request that fails changes nothing, and bad
input is answered with a 4xx that says why (422 for a malformed body or parameter, 400 for a value the
models cannot use, such as an undecodable image, 404 for unknown ids, 413 for an oversized upload).
Endpoints are plain `def`s: FastAPI runs them in its thread pool, and the store and encoders are
thread-safe. Run it with `mmrec serve` (see mmrec/commands/serve.py).
"""
from __future__ import annotations

import base64
import binascii
import io
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from encoders.base import ImageDecodeError
from index import DimensionError, Filter, PayloadError, StoreError, UnknownItemError
from mmrec.store.catalog_store import CatalogStore, ItemRecord, Recommendation
from mmrec.serving.event_log import EventLog
from mmrec.data.schema import EVENT_KINDS, Event

log = logging.getLogger(__name__)

MAX_BATCH = 256
MAX_EVENTS = 1000
MAX_HISTORY = 200
MAX_K = 100
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
# Ratings below this count against an item (negative example) when recommending from a user's events.
NEGATIVE_RATING_BELOW = 3.0


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Text = Annotated[str, AfterValidator(_utf8)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_utf8), AfterValidator(_not_blank)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_utf8), AfterValidator(_not_blank)]
Title = Annotated[str, StringConstraints(min_length=1, max_length=2000), AfterValidator(_utf8), AfterValidator(_not_blank)]
Price = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]
UnixTime = Annotated[int, Field(ge=0, le=2**53)]


class ItemIn(BaseModel):
    """A catalog item. `image_path` (a file readable by the server) or `image_base64` (encoded bytes)."""

    model_config = ConfigDict(extra="forbid")
    item_id: Id
    title: Title
    description: Annotated[Text, StringConstraints(max_length=20_000)] | None = None
    language: Label | None = None
    market: Label | None = None
    category: Annotated[Text, StringConstraints(min_length=1, max_length=256)] | None = None
    product_id: Id | None = Field(None, description="shared by the listings of one product in several languages")
    price: Price | None = None
    in_stock: bool = True
    created_at: UnixTime | None = Field(None, description="unix seconds; default: now")
    image_path: Annotated[Text, StringConstraints(min_length=1, max_length=4096)] | None = None
    image_base64: Annotated[str, StringConstraints(min_length=1, max_length=(MAX_IMAGE_BYTES * 4) // 3 + 8)] | None = None

    @model_validator(mode="after")
    def _one_image(self) -> "ItemIn":
        if self.image_path is not None and self.image_base64 is not None:
            raise ValueError("give image_path or image_base64, not both")
        return self


class ItemsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_BATCH)


class ItemOut(BaseModel):
    item_id: str
    product_id: str | None = None
    title: str | None = None
    description: str | None = None
    language: str | None = None
    market: str | None = None
    category: str | None = None
    price: float | None = None
    in_stock: bool | None = None
    created_at: int | None = None
    has_image: bool | None = None


class ResultOut(ItemOut):
    score: float


class SearchOut(BaseModel):
    results: list[ResultOut]


class Reason(BaseModel):
    item_id: str = Field(description="a history item this result resembles")
    similarity: float


class RecommendationOut(ResultOut):
    reasons: list[Reason]


class RecommendIn(BaseModel):
    """Recommend for a user (from the events posted for them) or for an ad-hoc history of item ids."""

    model_config = ConfigDict(extra="forbid")
    user_id: Id | None = None
    history: list[Id] | None = Field(None, min_length=1, max_length=MAX_HISTORY)
    k: int = Field(10, ge=1, le=MAX_K)
    market: Label | None = None
    language: Label | None = None
    in_stock: bool | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "RecommendIn":
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id or history")
        return self


class RecommendOut(BaseModel):
    user_id: str | None
    history_used: list[str]
    results: list[RecommendationOut]


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    item_id: Id
    timestamp: UnixTime | None = Field(None, description="unix seconds; default: now")
    kind: Literal[EVENT_KINDS] = "view"  # type: ignore[valid-type]
    value: Annotated[float, Field(allow_inf_nan=False, ge=-1e12, le=1e12)] | None = None
    market: Label | None = None
    session_id: Id | None = None


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS)


class EventsOut(BaseModel):
    appended: int


class UpsertOut(BaseModel):
    upserted: int
    item_ids: list[str]


class DeleteOut(BaseModel):
    deleted: str


class HealthOut(BaseModel):
    status: str
    items: int
    events: int
    users: int
    encoder: str


class ErrorOut(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "a value the models cannot use"},
    404: {"model": ErrorOut, "description": "unknown id"},
}


def _item_out(payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    fields = ItemOut.model_fields
    return {**{k: payload.get(k) for k in fields}, **extra}


def _filter(market: str | None = None, language: str | None = None, category: str | None = None,
            in_stock: bool | None = None) -> Filter | None:
    flt = Filter(markets=market, languages=language, categories=category, in_stock=in_stock)
    return None if flt.is_empty() else flt


def _decode_base64(item_id: str, data: str) -> bytes:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"item {item_id!r}: image_base64 is not valid base64") from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise HTTPException(413, f"item {item_id!r}: image is larger than {MAX_IMAGE_BYTES} bytes")
    return raw


def _check_image(label: str, image: bytes | str) -> None:
    """Reject what the encoder should never see: missing files, oversized or unreadable images. Only the
    header is read here, so a decompression bomb is refused before it is decoded."""
    from PIL import Image

    if isinstance(image, str):
        path = FsPath(image)
        if "\x00" in image or not path.is_file():
            raise HTTPException(400, f"{label}: image_path {image!r} is not a readable file on the server")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise HTTPException(413, f"{label}: image file is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
            width, height = im.size
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad input
        raise HTTPException(400, f"{label}: not a decodable image ({type(exc).__name__}: {exc})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise HTTPException(413, f"{label}: image has {width}x{height} pixels, more than {MAX_IMAGE_PIXELS}")


def create_app(catalog: CatalogStore, events: EventLog, ranker: Any | None = None) -> FastAPI:
    """The app over an opened catalog and event log; both are closed when the app shuts down. With a
    ``ranker`` (`mmrec.serving.two_stage.TwoStageRecommender`: the fusion transformer over the same store),
    POST /recommend retrieves and ranks with it; without one, recommendations are content-based."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        catalog.close()
        events.close()

    app = FastAPI(
        title="mmrec",
        version="0.1.0",
        description="Multimodal, cross-lingual product search and recommendation.",
        lifespan=lifespan,
    )

    @app.exception_handler(ImageDecodeError)
    def _bad_image(request: Request, exc: ImageDecodeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(UnknownItemError)
    def _unknown(request: Request, exc: UnknownItemError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(PayloadError)
    @app.exception_handler(DimensionError)
    def _bad_value(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(StoreError)
    def _store_down(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store error on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": f"vector store unavailable: {exc}"}, status_code=503)

    @app.get("/healthz", response_model=HealthOut)
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "items": catalog.count(), "events": len(events), "users": events.users,
                "encoder": catalog.encoder.name}

    @app.post("/items", response_model=UpsertOut, responses={**ERRORS, 413: {"model": ErrorOut}})
    def upsert_items(body: ItemsIn) -> dict[str, Any]:
        """Upsert a batch: embedded and searchable/recommendable when this returns (all or nothing)."""
        ids = [it.item_id for it in body.items]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise HTTPException(400, f"item_id {dup!r} appears more than once in the batch")
        records = []
        for it in body.items:
            image: bytes | str | None = None
            if it.image_base64 is not None:
                image = _decode_base64(it.item_id, it.image_base64)
            elif it.image_path is not None:
                image = it.image_path
            if image is not None:
                _check_image(f"item {it.item_id!r}", image)
                if catalog.encoder.image_encoder is None:
                    raise HTTPException(400, "this service runs without an image encoder; leave images out")
            records.append(ItemRecord(
                item_id=it.item_id, title=it.title, description=it.description, language=it.language,
                market=it.market, category=it.category, product_id=it.product_id, price=it.price,
                in_stock=it.in_stock, created_at=it.created_at, image=image,
            ))
        written = catalog.upsert_items(records)
        return {"upserted": len(written), "item_ids": written}

    @app.get("/items/{item_id}", response_model=ItemOut, responses=ERRORS)
    def get_item(item_id: Annotated[str, Path(min_length=1, max_length=256)]) -> dict[str, Any]:
        payload = catalog.get(item_id)
        if payload is None:
            raise HTTPException(404, f"unknown item {item_id!r}")
        return _item_out(payload)

    @app.delete("/items/{item_id}", response_model=DeleteOut, responses=ERRORS)
    def delete_item(item_id: Annotated[str, Path(min_length=1, max_length=256)]) -> dict[str, Any]:
        if not catalog.delete(item_id):
            raise HTTPException(404, f"unknown item {item_id!r}")
        return {"deleted": item_id}

    @app.get("/search", response_model=SearchOut, responses=ERRORS)
    def search(
        q: Annotated[str, Query(min_length=1, max_length=1000, description="text in any language")],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        market: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        language: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        category: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        in_stock: bool | None = None,
    ) -> dict[str, Any]:
        """Products matching a text query in any language, one result per product."""
        if not q.strip():
            raise HTTPException(400, "q must not be blank")
        try:
            _utf8(q)
        except ValueError as exc:
            raise HTTPException(400, f"q: {exc}") from None
        vector = catalog.embed_query(q)
        groups = catalog.search_vector(vector, k, _filter(market, language, category, in_stock))
        return {"results": [_item_out(g.hits[0].payload, score=g.hits[0].score) for g in groups]}

    @app.post("/search/image", response_model=SearchOut, responses={**ERRORS, 413: {"model": ErrorOut}})
    def search_image(
        file: Annotated[UploadFile, File(description="an image (PNG, JPEG, WebP, ...)")],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        market: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        language: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        category: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        in_stock: bool | None = None,
    ) -> dict[str, Any]:
        """Products that look like / are described like the uploaded image, one result per product."""
        if catalog.encoder.image_encoder is None:
            raise HTTPException(400, "this service runs without an image encoder")
        data = file.file.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise HTTPException(413, f"image is larger than {MAX_IMAGE_BYTES} bytes")
        if not data:
            raise HTTPException(400, "the uploaded file is empty")
        _check_image("uploaded file", data)
        vector = catalog.embed_image(data)
        groups = catalog.search_vector(vector, k, _filter(market, language, category, in_stock))
        return {"results": [_item_out(g.hits[0].payload, score=g.hits[0].score) for g in groups]}

    @app.get("/items/{item_id}/similar", response_model=SearchOut, responses=ERRORS)
    def similar(
        item_id: Annotated[str, Path(min_length=1, max_length=256)],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        market: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        language: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        in_stock: bool | None = None,
    ) -> dict[str, Any]:
        """Other products like this item (its own listings in other languages are left out)."""
        groups = catalog.similar(item_id, k, _filter(market, language, None, in_stock))
        if groups is None:
            raise HTTPException(404, f"unknown item {item_id!r}")
        return {"results": [_item_out(g.hits[0].payload, score=g.hits[0].score) for g in groups]}

    @app.post("/recommend", response_model=RecommendOut, responses=ERRORS)
    def recommend(body: RecommendIn) -> dict[str, Any]:
        """Content-based recommendations from a user's events or a given history, with reasons."""
        negatives: list[str] = []
        if body.user_id is not None:
            user_events = events.history(body.user_id)
            if not user_events:
                raise HTTPException(404, f"no events for user {body.user_id!r}")
            history = [e.item_id for e in user_events]
            negatives = [e.item_id for e in user_events
                         if e.kind == "rating" and e.value is not None and e.value < NEGATIVE_RATING_BELOW]
        else:
            history = list(body.history or [])
            known = {p["item_id"] for p in _payloads(catalog, history)}
            unknown = [i for i in dict.fromkeys(history) if i not in known]
            if unknown:
                raise HTTPException(404, f"unknown history item ids: {', '.join(map(repr, unknown[:10]))}")
        flt = _filter(body.market, body.language, None, body.in_stock)
        if ranker is not None:  # the fusion transformer reads the events themselves (times, kinds, markets)
            source = user_events if body.user_id is not None else history
            recs, used = ranker.recommend(source, body.k, flt, market=body.market, negatives=negatives)
        else:
            recs, used = catalog.recommend(history, body.k, flt, negatives=negatives)
        return {"user_id": body.user_id, "history_used": used, "results": [_rec_out(r) for r in recs]}

    @app.post("/events", response_model=EventsOut, responses=ERRORS)
    def post_events(body: EventsIn) -> dict[str, Any]:
        """Append interactions (durably); the next /recommend for the user reflects them."""
        ids = list(dict.fromkeys(e.item_id for e in body.events))
        known = {p["item_id"] for p in _payloads(catalog, ids)}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise HTTPException(404, f"unknown item ids: {', '.join(map(repr, unknown[:10]))}")
        now = int(time.time())
        appended = events.append(
            Event(user_id=e.user_id, item_id=e.item_id, timestamp=e.timestamp if e.timestamp is not None else now,
                  kind=e.kind, value=e.value, market=e.market, session_id=e.session_id)
            for e in body.events
        )
        return {"appended": appended}

    return app


def _payloads(catalog: CatalogStore, item_ids: list[str]) -> list[dict[str, Any]]:
    return [p.payload for p in catalog.store.get(list(dict.fromkeys(item_ids)))]


def _rec_out(rec: Recommendation) -> dict[str, Any]:
    reasons = [{"item_id": i, "similarity": s} for i, s in rec.reasons]
    return _item_out(rec.payload, score=rec.score, reasons=reasons)


def openapi_spec() -> dict[str, Any]:
    """The service's OpenAPI document, without opening a store or loading models (docs, fuzzing)."""
    return create_app(None, None).openapi()  # type: ignore[arg-type] - routes are not called


def open_service(data_dir: str | FsPath, config: Any, model: str | FsPath | None = None) -> FastAPI:
    """Open (or create) the catalog and event log in `data_dir` and build the app; `model`: a fusion
    transformer checkpoint (`mmrec train`) to recommend with, checked against the catalog's vector space."""
    data_dir = FsPath(data_dir)
    catalog = CatalogStore.open(data_dir, config)
    try:
        events = EventLog(data_dir / "events.jsonl")
        ranker = None
        if model is not None:
            from mmrec.serving.two_stage import load_ranker

            ranker = load_ranker(model, catalog)
    except Exception:
        catalog.close()
        raise
    return create_app(catalog, events, ranker)

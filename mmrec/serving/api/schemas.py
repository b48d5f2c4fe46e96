"""Request and response bodies of the HTTP API, and the limits they enforce.

Every field is checked here, before a route runs, so a request that fails validation changes nothing.
Result shapes are defined once: an item (`ItemOut`), a scored item (`ResultOut`), a recommendation with
its reasons (`RecommendationOut`); `search_out` / `recommendation_out` build them from store results.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from index import Group
from mmrec.data.schema import EVENT_KINDS
from mmrec.store.catalog_store import Recommendation

MAX_BATCH = 256
MAX_EVENTS = 1000
MAX_HISTORY = 200
MAX_K = 100
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MAX_ID_CHARS = 256
# Ratings below this count against an item (negative example) when recommending from a user's events.
NEGATIVE_RATING_BELOW = 3.0

# C0/C1 control characters (NUL, ANSI escapes, ...). Free text may keep tab, newline and carriage return.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def no_control_in_text(value: str) -> str:
    if _CONTROL_IN_TEXT.search(value):
        raise ValueError("must not contain control characters (tab, newline and carriage return are allowed)")
    return value


def not_blank(value: str) -> str:
    """Whitespace and invisible format characters (BOM, zero-width space, ...) alone are blank."""
    if all(c.isspace() or unicodedata.category(c) == "Cf" for c in value):
        raise ValueError("must not be blank")
    return value


def url_safe_id(value: str) -> str:
    """Any id stored can be read and deleted through /items/{item_id}: refuse the few that a URL cannot
    carry unambiguously (dot segments, which clients collapse, and a trailing /similar, another route)."""
    if any(seg in (".", "..") for seg in value.split("/")):
        raise ValueError("must not contain '.' or '..' as a '/'-separated segment")
    if value.endswith("/similar"):
        raise ValueError("must not end with '/similar'")
    return value


Text = Annotated[str, AfterValidator(utf8), AfterValidator(no_control_in_text)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(utf8),
               AfterValidator(no_control), AfterValidator(not_blank)]
ItemId = Annotated[Id, AfterValidator(url_safe_id)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(utf8),
                  AfterValidator(no_control), AfterValidator(not_blank)]
Title = Annotated[str, StringConstraints(min_length=1, max_length=2000), AfterValidator(utf8),
                  AfterValidator(no_control_in_text), AfterValidator(not_blank)]
Price = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False, strict=True)]
UnixTime = Annotated[int, Field(ge=0, le=2**53, strict=True)]
Count = Annotated[int, Field(ge=1, le=MAX_K, strict=True)]  # strict: `true` is not 1
RequestId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$"),
                      Field(description="the request_id of the /recommend or /search answer that showed the item")]


class ItemIn(BaseModel):
    """A catalog item, with an optional image: `image_base64` (encoded bytes), or `image_path` (a file
    under the server's --image-root; refused when the server has none)."""

    model_config = ConfigDict(extra="forbid")
    item_id: ItemId
    title: Title
    description: Annotated[Text, StringConstraints(max_length=20_000)] | None = None
    language: Label | None = None
    market: Label | None = None
    category: Annotated[Text, StringConstraints(min_length=1, max_length=256), AfterValidator(no_control)] | None = None
    product_id: Id | None = Field(None, description="shared by the listings of one product in several languages")
    price: Price | None = None
    in_stock: Annotated[bool, Field(strict=True)] = True
    created_at: UnixTime | None = Field(None, description="unix seconds; default: now")
    image_path: Annotated[Text, StringConstraints(min_length=1, max_length=4096), AfterValidator(no_control)] | None = None
    image_base64: Annotated[str, StringConstraints(min_length=1, max_length=(MAX_IMAGE_BYTES * 4) // 3 + 8)] | None = None

    @model_validator(mode="after")
    def _one_image(self) -> "ItemIn":
        if self.image_path is not None and self.image_base64 is not None:
            raise ValueError("give image_path or image_base64, not both")
        return self


class ItemsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_BATCH)


class FilterFields(BaseModel):
    """The result filters a JSON body can carry (the same ones /search takes as query parameters)."""

    market: Label | None = None
    language: Label | None = None
    in_stock: Annotated[bool, Field(strict=True)] | None = None


class RecommendIn(FilterFields):
    """Recommend for a user (from the events posted for them) or for an ad-hoc history of item ids."""

    model_config = ConfigDict(extra="forbid")
    user_id: Id | None = None
    history: list[Id] | None = Field(None, min_length=1, max_length=MAX_HISTORY)
    k: Count = 10

    @model_validator(mode="after")
    def _one_source(self) -> "RecommendIn":
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id or history")
        return self


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    item_id: Id
    timestamp: UnixTime | None = Field(None, description="unix seconds; default: now")
    kind: Literal[EVENT_KINDS] = "view"  # type: ignore[valid-type]
    value: Annotated[float, Field(allow_inf_nan=False, ge=-1e12, le=1e12, strict=True)] | None = None
    market: Label | None = None
    session_id: Id | None = None
    request_id: RequestId | None = None
    position: Count | None = Field(None, description="1-based place the item had in that answer (needs request_id)")

    @model_validator(mode="after")
    def _position_needs_request(self) -> "EventIn":
        if self.position is not None and self.request_id is None:
            raise ValueError("position needs the request_id of the answer that showed the item")
        return self


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS)


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
    request_id: str = Field(description="name it in POST /events to attribute what the user did with these results")
    results: list[ResultOut]


class Reason(BaseModel):
    item_id: str = Field(description="a history item behind this result")
    attribution: float = Field(description="how much less likely (log-probability) this result is without the "
                               "item; largest first, positive only (content-based service: the cosine drop)")
    similarity: float = Field(deprecated=True, description="= attribution, the 0.1 name; removed next release")


class RecommendationOut(ResultOut):
    reasons: list[Reason]
    explored: bool = Field(False, description="shown in an exploration slot for a new item (`mmrec serve --explore`), "
                           "not for its rank: its score is below the page's")


class RecommendOut(BaseModel):
    request_id: str = Field(description="name it in POST /events to attribute what the user did with these results")
    variant: str = Field(description="the A/B variant that answered (`mmrec serve --variant`)")
    user_id: str | None
    history_used: list[str] = Field(description="the history items the recommendations come from, newest first")
    history_dropped: list[str] = Field(
        default_factory=list, description="ids of a given `history` that are not in the catalog (left out)")
    results: list[RecommendationOut]


class EventsOut(BaseModel):
    appended: int


class UpsertOut(BaseModel):
    upserted: int
    item_ids: list[str]


class DeleteOut(BaseModel):
    deleted: str


class UserDeleteOut(BaseModel):
    user_id: str
    events_deleted: int
    impressions_deleted: int


class HealthOut(BaseModel):
    """Counts are left out for a caller without a key when the service has keys (/healthz is open)."""

    status: str
    items: int | None = None
    events: int | None = None
    users: int | None = None
    encoder: str | None = None
    event_log: str | None = Field(None, description="where events are kept: file or redis")
    variants: list[str] | None = None


class ErrorOut(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "a value the models cannot use"},
    401: {"model": ErrorOut, "description": "no API key, or a wrong one (when the service has keys)"},
    403: {"model": ErrorOut, "description": "a read-only API key on a write"},
    404: {"model": ErrorOut, "description": "unknown id"},
    413: {"model": ErrorOut, "description": "request body or image too large"},
    422: {"model": ErrorOut, "description": "a malformed body or parameter"},
}


def item_out(payload: dict[str, Any], item_id: str | None = None, **extra: Any) -> dict[str, Any]:
    out = {k: payload.get(k) for k in ItemOut.model_fields}
    if item_id is not None:
        out["item_id"] = item_id
    return {**out, **extra}


def search_out(groups: list[Group]) -> dict[str, Any]:
    """One result per product: the best listing of each group (the request id is added by the route)."""
    return {"results": [item_out(g.hits[0].payload, g.hits[0].item_id, score=g.hits[0].score) for g in groups]}


def recommendation_out(rec: Recommendation) -> dict[str, Any]:
    reasons = [{"item_id": i, "attribution": a, "similarity": a} for i, a in rec.reasons]
    return item_out(rec.payload, rec.item_id, score=rec.score, reasons=reasons, explored=rec.explored)

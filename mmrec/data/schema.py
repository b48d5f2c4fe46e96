"""The data model: items (catalog rows) and events (interactions), as dataclasses and Arrow schemas.

Catalogs and event logs are held as `datasets.Dataset` (Arrow, memory-mapped) so a million rows is
ordinary; the dataclasses are the row-level view for code that handles one record at a time.
Ids are strings everywhere so that catalogs from different sources never collide on integer ids.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets

EVENT_KINDS: tuple[str, ...] = ("view", "click", "cart", "purchase", "rating")


@dataclass
class Item:
    """One catalog item: a product as listed in one market/language, from a catalog file or a service upsert.

    `product_id` ties together the rows of the same product listed in several languages; it defaults to
    `item_id` for single-language catalogs. `created_at` (unix seconds) drives cold-start splits. The image
    is `image_path`, or `image` (encoded bytes or a PIL image, e.g. from an upload; kept in memory only, never
    written to a row). `attributes` are free fields (a dict, or their JSON as stored in a row); the item
    recipe reads `alt_title` and `year` from them.
    """

    item_id: str
    title: str
    description: str | None = None
    language: str | None = None
    market: str | None = None
    category: str | None = None
    image_path: str | None = None
    price: float | None = None
    attributes: dict[str, Any] | str = field(default_factory=dict)
    product_id: str | None = None
    created_at: int | None = None
    in_stock: bool = True
    image: Any = field(default=None, repr=False)

    def to_row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k != "image"}
        row["product_id"] = self.product_id or self.item_id
        if not isinstance(self.attributes, str):
            row["attributes"] = json.dumps(self.attributes, ensure_ascii=False, sort_keys=True)
        return row


@dataclass
class Event:
    """One interaction. `timestamp` is unix seconds (UTC); `value` is a rating, quantity or amount."""

    user_id: str
    item_id: str
    timestamp: int
    kind: str = "view"
    value: float | None = None
    market: str | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind {self.kind!r} is not one of {', '.join(EVENT_KINDS)}")

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


# Free attributes are stored as a JSON string: Arrow needs one type per column, user attributes vary.
ITEM_FEATURES = datasets.Features(
    {
        "item_id": datasets.Value("string"),
        "product_id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "description": datasets.Value("string"),
        "language": datasets.Value("string"),
        "market": datasets.Value("string"),
        "category": datasets.Value("string"),
        "image_path": datasets.Value("string"),
        "price": datasets.Value("float64"),
        "attributes": datasets.Value("string"),
        "created_at": datasets.Value("int64"),
    }
)

EVENT_FEATURES = datasets.Features(
    {
        "user_id": datasets.Value("string"),
        "item_id": datasets.Value("string"),
        "timestamp": datasets.Value("int64"),
        "kind": datasets.Value("string"),
        "value": datasets.Value("float64"),
        "market": datasets.Value("string"),
        "session_id": datasets.Value("string"),
    }
)

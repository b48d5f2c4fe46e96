"""The collection schema and the records that go in and out of a store, shared by every backend.

Items are addressed by their string `item_id`; Qdrant wants an integer or UUID, so the point id is a
UUID5 of the item id: deterministic, so writing the same item twice updates one point.
"""
from __future__ import annotations

import functools
import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from index.errors import DimensionError, PayloadError, SchemaError

VECTOR_NAMES: tuple[str, ...] = ("text", "image", "fused")
DISTANCES: tuple[str, ...] = ("cosine", "dot", "euclid")

# Payload fields with a payload index, and the index type. Other payload keys are stored, not indexed.
PAYLOAD_INDEXES: dict[str, str] = {
    "item_id": "keyword",
    "product_id": "keyword",
    "language": "keyword",
    "market": "keyword",
    "category": "keyword",
    "price": "float",
    "in_stock": "bool",
    "created_at": "integer",
}

# Indexed fields that also get payload-aware HNSW links (a sub-graph per value) so that a filter on them
# stays fast and accurate on the graph. Each such field costs about one more graph build, so only the
# selective filters the service uses get them; price/in_stock/created_at filters still use their index.
HNSW_PAYLOAD_FIELDS: tuple[str, ...] = ("market", "language")

_POINT_NAMESPACE = uuid.UUID("6f1d3c2e-8a4b-5c6d-9e0f-1a2b3c4d5e6f")


def point_id(item_id: str) -> str:
    """The Qdrant point id (a UUID string) for an item id; the same item id always maps to the same point."""
    if not isinstance(item_id, str) or not item_id:
        raise PayloadError(f"item_id must be a non-empty string, got {item_id!r}")
    try:
        return _uuid5(item_id)
    except UnicodeEncodeError:
        raise PayloadError(f"item_id {item_id!r} is not valid Unicode text (lone surrogates)") from None


@functools.lru_cache(maxsize=1 << 20)
def _uuid5(item_id: str) -> str:  # uuid5 costs ~20 us; a history lookup makes dozens
    return str(uuid.uuid5(_POINT_NAMESPACE, item_id))


@dataclass(frozen=True)
class CollectionSchema:
    """Dimensions of the three named vectors (from the encoders) and the distance they are compared with.

    `name` is the collection name on a Qdrant server; an edge store holds exactly one collection.
    """

    text_dim: int
    image_dim: int
    fused_dim: int
    distance: str = "cosine"
    name: str = "items"

    def __post_init__(self) -> None:
        for vname in VECTOR_NAMES:
            dim = getattr(self, f"{vname}_dim")
            if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
                raise SchemaError(f"{vname}_dim must be a positive integer, got {dim!r}")
        if self.distance not in DISTANCES:
            raise SchemaError(f"distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")
        if not self.name or not isinstance(self.name, str):
            raise SchemaError(f"collection name must be a non-empty string, got {self.name!r}")

    @property
    def vectors(self) -> dict[str, int]:
        """Named vector -> dimension."""
        return {vname: getattr(self, f"{vname}_dim") for vname in VECTOR_NAMES}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CollectionSchema":
        return cls(**{k: data[k] for k in ("text_dim", "image_dim", "fused_dim", "distance", "name") if k in data})

    def check_compatible(self, other: "CollectionSchema", where: str) -> None:
        """Raise SchemaError if `other` (what is stored) differs in vectors or distance from this schema."""
        if self.vectors != other.vectors or self.distance != other.distance:
            raise SchemaError(
                f"{where} holds vectors {other.vectors} ({other.distance}), but the schema asks for "
                f"{self.vectors} ({self.distance}); use another directory/collection or re-index"
            )

    @staticmethod
    def check_using(using: str) -> str:
        if using not in VECTOR_NAMES:
            raise DimensionError(f"unknown vector name {using!r}; expected one of {', '.join(VECTOR_NAMES)}")
        return using

    def check_vector(self, using: str, vector: Any, what: str) -> np.ndarray:
        """`vector` as a finite float32 array of the right length for `using`; DimensionError otherwise."""
        self.check_using(using)
        try:
            arr = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise DimensionError(f"{what}: {using} vector is not numeric ({exc})") from None
        expected = self.vectors[using]
        if arr.ndim != 1 or arr.shape[0] != expected:
            raise DimensionError(f"{what}: {using} vector must have shape ({expected},), got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise DimensionError(f"{what}: {using} vector contains NaN or infinity")
        if self.distance == "cosine" and not np.any(arr):
            raise DimensionError(f"{what}: {using} vector is all zeros, which has no cosine direction")
        return arr


@dataclass
class Point:
    """One item as stored: its id, any subset of the named vectors, and its payload.

    `payload` holds the indexed fields of PAYLOAD_INDEXES (None values are left out) and any other
    JSON-serialisable keys the caller wants back with results (e.g. a title for display).
    """

    item_id: str
    vectors: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Hit:
    """One search result: the item, its score (higher is better for cosine/dot), payload, maybe vectors."""

    item_id: str
    score: float
    payload: dict[str, Any]
    vectors: dict[str, np.ndarray] | None = None


@dataclass
class Group:
    """Results sharing one value of the group-by field (a product listed in several languages)."""

    key: Any
    hits: list[Hit]

    @property
    def score(self) -> float:
        return self.hits[0].score


def clean_payload(point: Point) -> dict[str, Any]:
    """The payload to store for `point`: typed indexed fields checked, item_id set, product_id defaulted.

    product_id defaults to item_id so that grouping never drops an item for lacking the field.
    """
    item_id = point.item_id
    point_id(item_id)  # validates the id
    out: dict[str, Any] = {}
    for key, value in (point.payload or {}).items():
        if not isinstance(key, str):
            raise PayloadError(f"item {item_id!r}: payload keys must be strings, got {key!r}")
        if value is None:
            continue
        kind = PAYLOAD_INDEXES.get(key)
        if kind == "keyword":
            if not isinstance(value, str):
                raise PayloadError(f"item {item_id!r}: payload {key!r} must be a string, got {value!r}")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise PayloadError(f"item {item_id!r}: payload {key!r} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise PayloadError(f"item {item_id!r}: payload {key!r} must be finite, got {value!r}")
        elif kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise PayloadError(f"item {item_id!r}: payload {key!r} must be true/false, got {value!r}")
            value = bool(value)
        elif kind == "integer":
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise PayloadError(f"item {item_id!r}: payload {key!r} must be an integer, got {value!r}")
            value = int(value)
        out[key] = value
    if out.get("item_id", item_id) != item_id:
        raise PayloadError(f"item {item_id!r}: payload item_id {out['item_id']!r} differs from the point's")
    out["item_id"] = item_id
    out.setdefault("product_id", item_id)
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"item {item_id!r}: payload is not JSON-serialisable ({exc})") from None
    return out


def clean_vectors(schema: CollectionSchema, point: Point) -> dict[str, list[float]]:
    """The named vectors of `point` checked against the schema, as plain float lists for the engines."""
    if not point.vectors:
        raise DimensionError(f"item {point.item_id!r} has no vectors; give at least one of {', '.join(VECTOR_NAMES)}")
    out: dict[str, list[float]] = {}
    for using, vector in point.vectors.items():
        if vector is None:
            continue
        out[using] = schema.check_vector(using, vector, f"item {point.item_id!r}").tolist()
    if not out:
        raise DimensionError(f"item {point.item_id!r} has no vectors; give at least one of {', '.join(VECTOR_NAMES)}")
    return out


def unique_ids(item_ids: Sequence[str], what: str) -> list[str]:
    """Item ids de-duplicated in order, each checked to be a non-empty string."""
    if isinstance(item_ids, str):
        raise PayloadError(f"{what} must be a list of item ids, not one string ({item_ids!r})")
    seen: dict[str, None] = {}
    for item_id in item_ids:
        point_id(item_id)
        seen.setdefault(item_id, None)
    return list(seen)

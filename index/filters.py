"""A backend-neutral filter over the indexed payload fields; each backend translates it to its own types.

Keeping our own small dataclass (rather than passing Qdrant filter objects around) lets the service and
the recommender say "market in {de, fr}, in stock, price <= 50" once, for the edge engine and a server.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterable

from index.errors import PayloadError
from index.schema import unique_ids

_IN_SETS = ("markets", "languages", "categories", "product_ids")


def _as_tuple(name: str, values: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):  # Filter(markets="de") means one market, not the letters d and e
        values = (values,)
    out = tuple(dict.fromkeys(values))
    if not out:
        raise PayloadError(f"Filter.{name} is empty, which matches nothing; pass None for no constraint")
    for value in out:
        if not isinstance(value, str) or not value:
            raise PayloadError(f"Filter.{name} values must be non-empty strings, got {value!r}")
    return out


@dataclass(frozen=True)
class Filter:
    """Conditions that all must hold. None means "no constraint"; ranges are inclusive at both ends.

    In-sets (markets, languages, categories, product_ids) match any listed value. `exclude_item_ids` and
    `exclude_product_ids` drop results (e.g. the user's history, or the product being looked at).
    """

    markets: tuple[str, ...] | None = None
    languages: tuple[str, ...] | None = None
    categories: tuple[str, ...] | None = None
    product_ids: tuple[str, ...] | None = None
    in_stock: bool | None = None
    price_min: float | None = None
    price_max: float | None = None
    created_from: int | None = None
    created_to: int | None = None
    exclude_item_ids: tuple[str, ...] = ()
    exclude_product_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in _IN_SETS:
            object.__setattr__(self, name, _as_tuple(name, getattr(self, name)))
        object.__setattr__(self, "exclude_item_ids", tuple(unique_ids(self.exclude_item_ids, "exclude_item_ids")))
        if self.exclude_product_ids:
            object.__setattr__(self, "exclude_product_ids", _as_tuple("exclude_product_ids", self.exclude_product_ids))
        else:
            object.__setattr__(self, "exclude_product_ids", ())
        if self.in_stock is not None and not isinstance(self.in_stock, bool):
            raise PayloadError(f"Filter.in_stock must be true, false or None, got {self.in_stock!r}")
        for lo, hi, kind in (("price_min", "price_max", float), ("created_from", "created_to", int)):
            for name in (lo, hi):
                value = getattr(self, name)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise PayloadError(f"Filter.{name} must be a number, got {value!r}")
                if kind is int and value != int(value):
                    raise PayloadError(f"Filter.{name} must be an integer (unix seconds), got {value!r}")
                if value != value:  # NaN
                    raise PayloadError(f"Filter.{name} must not be NaN")
                object.__setattr__(self, name, kind(value))
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise PayloadError(f"Filter.{lo} ({a}) is greater than Filter.{hi} ({b}): nothing can match")

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) in (None, ()) for f in fields(self))

    def with_excluded(self, item_ids: Iterable[str]) -> "Filter":
        """A copy that also excludes `item_ids`."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}
        kwargs["exclude_item_ids"] = tuple(self.exclude_item_ids) + tuple(item_ids)
        return Filter(**kwargs)

    def matches(self, item_id: str, payload: dict[str, Any]) -> bool:
        """Whether a point with this id and payload passes the filter, with the semantics every backend
        gives it (a missing field fails a condition on it): for points the caller holds already and the
        index does not search, e.g. history items a recommender may re-offer."""
        if item_id in self.exclude_item_ids:
            return False
        if self.exclude_product_ids and str(payload.get("product_id")) in self.exclude_product_ids:
            return False
        for attr, key in self.in_set_fields().items():
            allowed = getattr(self, attr)
            if allowed is not None and (payload.get(key) is None or str(payload.get(key)) not in allowed):
                return False
        stock = payload.get("in_stock")
        if self.in_stock is not None and (stock is None or bool(stock) != self.in_stock):
            return False
        ranges = ((self.price_min, self.price_max, "price"), (self.created_from, self.created_to, "created_at"))
        for lo, hi, key in ranges:
            if lo is None and hi is None:
                continue
            value = payload.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return False
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                return False
        return True

    # Field name in the payload for each in-set.
    @staticmethod
    def in_set_fields() -> dict[str, str]:
        return {"markets": "market", "languages": "language", "categories": "category", "product_ids": "product_id"}

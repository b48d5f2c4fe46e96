"""A catalog by name, path, Dataset or list of items, and its rows grouped into products (a product listed in several languages is
one product with several titles): what text tuning and adapter training learn from."""
from __future__ import annotations

from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Any

import datasets

from encoders.adapter_training import CatalogProduct
from mmrec.data.io import load_catalog
from mmrec.errors import UserError


def group_products(items: Iterable[dict]) -> list[CatalogProduct]:
    """Group catalog rows into products: rows sharing `product_id` (else `item_id`) are one product; its first
    image (None if it has none) and all its distinct non-blank titles (every language) are kept."""
    groups: dict[str, CatalogProduct] = {}
    for row in items:
        key = row.get("product_id") or row.get("item_id")
        if not key:
            continue
        prod = groups.get(key)
        if prod is None:
            prod = groups[key] = CatalogProduct(str(key), None, [])
        if prod.image is None and row.get("image_path"):
            prod.image = row["image_path"]
        title = row.get("title")
        if isinstance(title, str) and title.strip() and title not in prod.titles:
            prod.titles.append(title)
    return list(groups.values())


def load_catalog_items(catalog: str) -> Any:
    """A built-in dataset name or a catalog file (JSONL / Parquet / CSV) -> items Dataset."""
    from mmrec.data import datasets

    if catalog in datasets.names():
        return datasets.load(catalog).items
    if not Path(catalog).exists():
        raise UserError(f"{catalog!r} is neither a built-in dataset ({', '.join(datasets.names())}) nor a file")
    items, _ = load_catalog(catalog)
    return items


def as_dataset(catalog: Any) -> datasets.Dataset:
    """A Dataset from a Dataset, a built-in dataset name, a catalog file, or an iterable of items/dicts."""
    if isinstance(catalog, datasets.Dataset):
        ds = catalog
    elif isinstance(catalog, (str, Path)):
        ds = load_catalog_items(str(catalog))
    elif isinstance(catalog, Iterable):
        rows = []
        for item in catalog:
            if hasattr(item, "to_row"):
                rows.append(item.to_row())
            elif isinstance(item, Mapping):
                rows.append(dict(item))
            else:
                raise UserError(f"cannot embed an item of type {type(item).__name__}: give mmrec.Item, dicts or a Dataset")
        if not rows:
            raise UserError("nothing to embed: the catalog is empty")
        ds = datasets.Dataset.from_list(rows)
    else:
        raise UserError(f"cannot embed {type(catalog).__name__}: give a Dataset, a catalog path or an iterable of items")
    if len(ds) == 0:
        raise UserError("nothing to embed: the catalog is empty")
    if "title" not in ds.column_names:
        raise UserError(f"the catalog has no 'title' column (columns: {', '.join(ds.column_names)})")
    return ds

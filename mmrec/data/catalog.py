"""A catalog by name or path, and its rows grouped into products (a product listed in several languages is
one product with several titles): what text tuning and adapter training learn from."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

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

"""`mmrec index CATALOG --data-dir DIR`: fill a service data dir (Qdrant Edge store + catalog.json) from a
catalog, so `mmrec serve --data-dir DIR` and `mmrec train --vectors service:DIR` start from it.

Listings already in the store are skipped, so a re-run after adding products embeds only the new ones.
"""
from __future__ import annotations

import argparse

from mmrec.commands import parse_recipe
from mmrec.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("index", help="embed a catalog into a service data dir (the vector store)")
    parser.add_argument("catalog", help="built-in dataset name (e.g. emoji-market) or a JSONL/Parquet/CSV catalog")
    parser.add_argument("--data-dir", required=True, help="the service data dir to create or extend")
    parser.add_argument("--text-encoder", default="default", help="text encoder spec [default]")
    parser.add_argument("--image-encoder", default="default",
                        help="image encoder spec, or 'none' for text only [default: efficientnet-lite0:onnx]")
    parser.add_argument("--adapter", default="default",
                        help="image->text adapter: 'default', a file from `mmrec train-adapter`, or 'none'")
    parser.add_argument("--text-fields", default=None,
                        help="the item recipe: fields in the text [title,alt_title,year,description]")
    parser.add_argument("--batch-size", type=int, default=128, help="listings per upsert [128]")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from index import SchemaError, StoreError
    from mmrec.data.catalog import load_catalog_items
    from mmrec.store.catalog_store import CatalogConfig, CatalogStore
    from mmrec.store.indexing import index_catalog

    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    items = load_catalog_items(args.catalog)
    none = ("none", "")
    config = CatalogConfig(text_encoder=args.text_encoder,
                           image_encoder=None if args.image_encoder.lower() in none else args.image_encoder,
                           adapter=None if args.adapter.lower() in none else args.adapter,
                           recipe=parse_recipe(args.text_fields).fields)
    try:
        catalog = CatalogStore.open(args.data_dir, config)
    except (StoreError, SchemaError, ValueError, OSError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    try:
        added = index_catalog(catalog, items, batch_size=args.batch_size, progress=not args.no_progress)
        print(f"{added:,} listings embedded and indexed, {catalog.count() - added:,} already in {args.data_dir}; "
              f"vector space {catalog.encoder.space} ({catalog.encoder.name}, {catalog.encoder.recipe.id})")
    finally:
        catalog.close()
    return 0

"""`mmrec embed CATALOG --out PATH`: add text / image / fused vectors to a catalog (resumable, cached)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmrec.commands import parse_recipe
from mmrec.errors import UserError

FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "embed", help="embed a catalog's items (text, image, fused vectors)",
        description="Embeds every item of a catalog in batches through a content-hash cache: a re-run embeds "
                    "only new or changed items, and an interrupted run resumes where it stopped.")
    parser.add_argument("catalog", help="built-in dataset name (e.g. emoji-market) or a JSONL/Parquet/CSV catalog")
    parser.add_argument("--out", required=True, help="output file (.parquet, .jsonl or .csv) or a directory "
                                                     "(saved as a datasets.Dataset)")
    parser.add_argument("--text-encoder", default="default", help="text encoder spec [default]")
    parser.add_argument("--image-encoder", default="default", help="image encoder spec [efficientnet-lite0]")
    parser.add_argument("--no-images", action="store_true", help="text only (fused vector = text vector)")
    parser.add_argument("--adapter", default="default",
                        help="image->text adapter: 'default', a saved adapter path, or 'none' (class-name bridge)")
    parser.add_argument("--text-fields", default=None,
                        help="the item recipe: fields in the text, from title, alt_title, year, description, "
                             "category [title,alt_title,year,description]")
    parser.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                        help="map a catalog field to your column, e.g. --map title=name (repeatable)")
    parser.add_argument("--batch-size", type=int, default=64, help="items per model call [64]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/BLAS threads; 1 is fastest on a busy 2-core machine [1]")
    parser.add_argument("--cache-dir", default=None, help="content-hash cache folder [$MMREC_CACHE/embeddings]")
    parser.add_argument("--no-cache", action="store_true", help="embed everything, store nothing")
    parser.set_defaults(func=_run)


def _mapping(pairs: list[str]) -> dict[str, str] | None:
    out = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field or not column:
            raise UserError(f"--map expects FIELD=COLUMN, got {pair!r}")
        out[field.strip()] = column.strip()
    return out or None


def _load(catalog: str, mapping: dict[str, str] | None):
    from mmrec.data import datasets

    if catalog in datasets.names() and not Path(catalog).exists():
        if mapping:
            raise UserError("--map applies to catalog files, not built-in datasets")
        return datasets.load(catalog).items
    from mmrec.data.io import load_catalog

    items, report = load_catalog(catalog, mapping)
    if report.rows_skipped or report.images_removed:
        print(report.summary())
    return items


def _run(args: argparse.Namespace) -> int:
    from mmrec.embedding.embed import embed

    if args.batch_size < 1 or args.threads < 1:
        raise UserError("--batch-size and --threads must be >= 1")
    out = Path(args.out)
    fmt = FORMATS.get(out.suffix.lower())
    if out.suffix and fmt is None:
        raise UserError(f"--out {out}: use .parquet, .jsonl, .csv or a directory")
    items = _load(args.catalog, _mapping(args.map))
    adapter = None if args.adapter.lower() == "none" else args.adapter
    ds, stats = embed(items, text_encoder=args.text_encoder, image_encoder=None if args.no_images else args.image_encoder,
                      adapter=adapter, recipe=parse_recipe(args.text_fields).fields, batch_size=args.batch_size, threads=args.threads,
                      cache_dir=False if args.no_cache else args.cache_dir, return_stats=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        ds.to_parquet(str(out))
    elif fmt == "json":
        ds.to_json(str(out), lines=True, force_ascii=False)
    elif fmt == "csv":
        ds = ds.map(lambda r: {c: json.dumps(r[c]) for c in ("text_vector", "image_vector", "fused_vector")})
        ds.to_csv(str(out), index=False)
    else:
        ds.save_to_disk(str(out))
    print(stats.summary())
    print(f"wrote {len(ds):,} rows to {out}")
    return 0

"""`mmrec embed CATALOG --out PATH`: add text / image / fused vectors to a catalog (resumable, cached).

`--engine ray` runs the same encoders on a Ray Data actor pool (a local Ray, or a cluster with --address)
and writes OUT as a directory of Parquet parts; `--store DIR` also upserts the vectors into a service data
dir (as `mmrec index` would, without embedding again).
"""
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
    parser.add_argument("--image-encoder", default="default", help="image encoder spec [default: efficientnet-lite0:onnx]")
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
    parser.add_argument("--store", default=None, metavar="DATA_DIR",
                        help="also upsert the vectors into this service data dir (created if new; "
                             "what `mmrec serve --data-dir` reads)")
    dist = parser.add_argument_group("distributed (--engine ray; pip install 'mmrec[distributed]')")
    dist.add_argument("--engine", choices=("local", "ray"), default="local",
                      help="local: this process; ray: a Ray Data actor pool; --out is then a directory of "
                           "Parquet parts, and a re-run skips the listings already in it [local]")
    dist.add_argument("--address", default=None,
                      help="Ray cluster to join ('auto', 'ray://HOST:10001'); without it a local Ray is started")
    dist.add_argument("--workers", type=int, default=2, help="actors, each loading the encoders once [2]")
    dist.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor [1]")
    dist.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor, on GPU clusters [0]")
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


def _config(args: argparse.Namespace):
    from mmrec.embedding.item_encoder import EncoderConfig

    return EncoderConfig(text_encoder=args.text_encoder, image_encoder=None if args.no_images else args.image_encoder,
                         adapter=None if args.adapter.lower() == "none" else args.adapter,
                         recipe=parse_recipe(args.text_fields).fields)


def _run(args: argparse.Namespace) -> int:
    from mmrec.data.catalog import as_dataset
    from mmrec.embedding.item_encoder import load_item_encoder

    if args.batch_size < 1 or args.threads < 1:
        raise UserError("--batch-size and --threads must be >= 1")
    out = Path(args.out)
    fmt = FORMATS.get(out.suffix.lower())
    if args.engine == "ray":
        return _run_ray(args, out, fmt)
    if out.suffix and fmt is None:
        raise UserError(f"--out {out}: use .parquet, .jsonl, .csv or a directory")
    items = as_dataset(_load(args.catalog, _mapping(args.map)))
    encoder = load_item_encoder(_config(args), cache_dir=False if args.no_cache else args.cache_dir,
                                batch_size=args.batch_size, threads=args.threads, progress=True)
    catalog = _open_store(args, encoder) if args.store else None
    stored = 0
    try:
        rows = _write(items, encoder, out, fmt, catalog)
        stored = catalog.count() if catalog is not None else 0
    finally:
        if catalog is not None:
            catalog.close()  # closes the encoder too
        else:
            encoder.close()
    print(encoder.stats.summary())
    print(f"wrote {rows:,} rows to {out}")
    if catalog is not None:
        print(f"upserted {rows:,} listings into {args.store} ({stored:,} stored)")
    return 0


def _write(items, encoder, out: Path, fmt: str | None, catalog) -> int:
    """Embed `items` chunk by chunk into OUT (and the store): nothing holds all rows or vectors at once, so
    peak memory stays flat however large the catalog (`mmrec.embedding.embed.embedded_tables`)."""
    import datasets

    from mmrec.embedding.embed import VECTOR_COLUMNS, embed_catalog, vector_features
    from mmrec.store.indexing import upsert_embedded_rows

    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt is None:  # a datasets.Dataset directory: built memory-mapped, then saved
        ds = embed_catalog(items, encoder)
        ds.save_to_disk(str(out))
        if catalog is not None:
            upsert_embedded_rows(catalog, ds.with_format("arrow").iter(batch_size=512), total=len(ds),
                                 progress=False)
        return len(ds)
    base = items.remove_columns([f"{c}_vector" for c in VECTOR_COLUMNS if f"{c}_vector" in items.column_names])
    features = datasets.Features({**base.features, **vector_features(encoder.dim)})
    schema = features.arrow_schema
    tmp = out.with_name(out.name + ".tmp")
    try:
        rows = _write_file(tmp, items, encoder, fmt, catalog, schema)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written file is left beside OUT
        raise
    tmp.replace(out)
    if catalog is not None and rows:
        catalog.store.build_index()
    return rows


def _write_file(tmp: Path, items, encoder, fmt: str, catalog, schema) -> int:
    """`_write`'s file formats: one chunk of embedded rows at a time into `tmp` (and the store)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmrec.embedding.embed import VECTOR_COLUMNS, embedded_tables
    from mmrec.store.indexing import upsert_embedded_rows

    rows = 0
    with open(tmp, "wb") as fh:
        writer = pq.ParquetWriter(fh, schema) if fmt == "parquet" else None
        try:
            for table in embedded_tables(items, encoder):
                table = table.cast(schema)
                if writer is not None:
                    writer.write_table(table)
                elif fmt == "json":
                    datasets.Dataset(datasets.table.InMemoryTable(table)).to_json(fh, lines=True, force_ascii=False)
                else:  # CSV cells hold each vector as a JSON list
                    text = table
                    for c in VECTOR_COLUMNS:
                        name = f"{c}_vector"
                        cells = pa.array([json.dumps(v) for v in table.column(name).to_pylist()], pa.string())
                        text = text.set_column(text.schema.get_field_index(name), name, cells)
                    datasets.Dataset(datasets.table.InMemoryTable(text)).to_csv(fh, index=False, header=rows == 0)
                if catalog is not None:
                    upsert_embedded_rows(catalog, table.to_batches(), progress=False, build=False)
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
    return rows


def _open_store(args: argparse.Namespace, encoder):
    """The service data dir `--store`, opened with the encoder that embeds (so its vectors are the store's)."""
    from index import SchemaError, StoreError
    from mmrec.store.catalog_store import CatalogConfig, CatalogStore

    config = _config(args)
    try:
        return CatalogStore.open(args.store, CatalogConfig(text_encoder=config.text_encoder,
                                                           image_encoder=config.image_encoder,
                                                           adapter=config.adapter, recipe=config.recipe),
                                 encoder=encoder)
    except (StoreError, SchemaError, ValueError, OSError) as exc:
        encoder.close()
        raise UserError(str(exc).splitlines()[0]) from None


def _run_ray(args: argparse.Namespace, out: Path, fmt: str | None) -> int:
    from mmrec.embedding.distributed import RayConfig, embed_ray
    from mmrec.embedding.parts import EmbedOutput

    if fmt not in (None, "parquet"):
        raise UserError(f"--out {out}: --engine ray writes a directory of Parquet parts (give a folder or *.parquet)")
    ray_config = RayConfig(address=args.address, workers=args.workers, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    items = _load(args.catalog, _mapping(args.map))
    run = embed_ray(items, out, _config(args), ray_config, batch_size=args.batch_size, threads=args.threads,
                    cache_dir=False if args.no_cache else args.cache_dir)
    print(run.summary())
    print(f"{out} holds {run.rows:,} rows (Parquet parts; read it with pandas.read_parquet or pyarrow.dataset)")
    if args.store:
        table = EmbedOutput(out).read()
        _upsert(args, table.to_batches(max_chunksize=args.batch_size * 4), table.num_rows)
    return 0


def _upsert(args: argparse.Namespace, batches, total: int) -> None:
    """The embedded rows into the service data dir `--store`, in batches, without embedding again."""
    from index import SchemaError, StoreError
    from mmrec.store.catalog_store import CatalogConfig, CatalogStore
    from mmrec.store.indexing import upsert_embedded_rows

    config = _config(args)
    try:
        catalog = CatalogStore.open(args.store, CatalogConfig(text_encoder=config.text_encoder,
                                                              image_encoder=config.image_encoder,
                                                              adapter=config.adapter, recipe=config.recipe))
    except (StoreError, SchemaError, ValueError, OSError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    try:
        upserted = upsert_embedded_rows(catalog, batches, total=total)
        print(f"upserted {upserted:,} listings into {args.store} ({catalog.count():,} stored)")
    finally:
        catalog.close()

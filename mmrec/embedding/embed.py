"""`mmrec.embed`: a catalog in, the same catalog with text / image / fused vectors out.

The first thing users touch. It runs the one `ItemEncoder` (recipe + encoders + content-hash cache) over
the catalog in batches, so re-running on a grown catalog only embeds the new or changed items, and the
vectors are exactly those the store and training use for the same item. `engine="ray"` runs the same
encoder on a Ray Data actor pool instead (`mmrec.embedding.distributed`, optional extra `distributed`).
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from mmrec.data.catalog import as_dataset
from mmrec.embedding.item_encoder import EncoderConfig, ItemEncoder, load_item_encoder
from mmrec.embedding.recipe import DEFAULT_FIELDS
from mmrec.errors import UserError

log = logging.getLogger(__name__)

VECTOR_COLUMNS = ("text", "image", "fused")


def iter_rows(ds: datasets.Dataset, chunk: int = 256) -> Iterator[dict[str, Any]]:
    """Rows of a Dataset read in column slices (much faster than row-by-row indexing)."""
    for s in range(0, len(ds), chunk):
        block = ds[s : s + chunk]
        cols = list(block)
        for j in range(len(block[cols[0]])):
            yield {c: block[c][j] for c in cols}


def embedded_tables(ds: datasets.Dataset, encoder: ItemEncoder, *, chunk: int = 1024,
                    vectors_only: bool = False) -> Iterator[pa.Table]:
    """The catalog with its vectors, as Arrow tables of whole encoder batches, each cut once it holds
    `chunk` rows or more (so at most chunk + batch_size - 1), in catalog order: the input
    columns (unless `vectors_only`) + text_vector / image_vector / fused_vector (null where a modality is
    missing). One progress bar and one `encoder.stats` for the whole run.

    The streaming core of `embed_catalog` and `mmrec embed`: only one chunk of rows and vectors is in
    memory at a time, so peak memory does not grow with the catalog; every batch is in the embedding cache
    before its table is yielded (an interrupted run resumes from the cache)."""
    wanted = [c for c in ds.column_names if c in ("title", "description", "category", "attributes", "image",
                                                   "image_path")]
    schema = vector_features(encoder.dim).arrow_schema
    base = ds.remove_columns([c for c in schema.names if c in ds.column_names])
    rows = base.with_format("arrow")
    pending: list[pa.RecordBatch] = []
    start = held = 0

    def flush() -> pa.Table:
        nonlocal start, held
        vectors = pa.Table.from_batches(pending, schema=schema).combine_chunks()
        pending.clear()
        table = vectors
        if not vectors_only:
            table = rows[start : start + held]
            for name in schema.names:
                table = table.append_column(schema.field(name), vectors.column(name))
            table = table.replace_schema_metadata(None)
        start, held = start + held, 0
        return table

    for out in encoder.embed_batches(iter_rows(ds.select_columns(wanted), 256), total=len(ds)):
        pending.append(vector_batch(out, schema, encoder.dim))
        held += len(out["fused"])
        if held >= chunk:
            yield flush()
    if held:
        yield flush()
    if start != len(ds):  # pragma: no cover - the encoder yields one row per input
        raise RuntimeError(f"embedded {start} rows for {len(ds)} items")


def embed_catalog(ds: datasets.Dataset, encoder: ItemEncoder, *, chunk: int = 1024) -> datasets.Dataset:
    """`ds` with text_vector, image_vector (None where no usable image) and fused_vector columns added.

    Streams (`embedded_tables`): the vectors are written chunk by chunk to an Arrow file and come back
    memory-mapped, so no copy of all vectors is built in RAM (92k items held ~0.6 GB of vectors and row
    lists before). The file lives in datasets' temporary cache folder, removed when the process ends."""
    schema = vector_features(encoder.dim).arrow_schema
    path = _vectors_file()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for table in embedded_tables(ds, encoder, chunk=chunk, vectors_only=True):
            writer.write_table(table)
    vectors = datasets.Dataset.from_file(str(path))
    base = ds.remove_columns([c for c in schema.names if c in ds.column_names])
    return datasets.concatenate_datasets([base, vectors], axis=1)


def vector_features(dim: int) -> datasets.Features:
    """The three vector columns' features: fixed-size float32 lists of the encoder's width."""
    feature = datasets.Sequence(datasets.Value("float32"), length=dim)
    return datasets.Features({f"{name}_vector": feature for name in VECTOR_COLUMNS})


def vector_batch(out: dict[str, Any], schema: pa.Schema, dim: int) -> pa.RecordBatch:
    """One batch of encoder output as Arrow fixed-size lists; a row with a non-finite value (a missing
    modality) is null."""
    columns = []
    for name in VECTOR_COLUMNS:
        arr = np.asarray(out[name], dtype=np.float32).reshape(-1, dim)
        valid = np.isfinite(arr).all(axis=1)
        flat = pa.array(np.where(valid[:, None], arr, 0.0).reshape(-1), type=pa.float32())
        columns.append(pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~valid)))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _vectors_file() -> Path:
    """A fresh file in datasets' per-process temporary cache folder (what `Dataset.map` uses for in-memory
    datasets; deleted when the process ends)."""
    from datasets.fingerprint import get_temporary_cache_files_directory

    folder = Path(get_temporary_cache_files_directory())
    fd, name = tempfile.mkstemp(prefix="mmrec-vectors-", suffix=".arrow", dir=folder)
    os.close(fd)
    return Path(name)


def embed(catalog: Any, *, text_encoder: Any = "default", image_encoder: Any = "default", adapter: Any = "default",
          mix: dict[str, Any] | None = None, recipe: tuple[str, ...] = DEFAULT_FIELDS, batch_size: int = 64,
          threads: int | None = None, cache_dir: str | Path | None | bool = None, progress: bool = True,
          return_stats: bool = False, engine: str = "local", out: str | Path | None = None,
          ray: Any = None) -> Any:
    """Embed a catalog; returns it as a `datasets.Dataset` with `text_vector`, `image_vector` (None where the
    item has no usable image) and `fused_vector` columns, all in the shared text space.

    catalog: a Dataset, a built-in dataset name, a JSONL/Parquet/CSV file, or an iterable of Items/dicts.
    text_encoder / image_encoder / adapter / mix / recipe: see `mmrec.EncoderConfig` (specs or objects;
      image_encoder None embeds text only, fused = text; "default" image encoder = efficientnet-lite0:onnx).
    threads: torch/BLAS threads during the run (None leaves the process setting alone).
    cache_dir: the content-hash cache (None: $MMREC_CACHE/embeddings; False: no cache).
    return_stats: also return the run's `EmbedStats` (items embedded, cache hits, bad images, items/s).
    engine: "local" (this process) or "ray": a Ray Data actor pool (`mmrec.embedding.distributed`) that
      writes Parquet parts into `out` (resumable: listings already there are skipped; a temporary folder
      when `out` is None) and returns them as here, in catalog order; `ray` is a `RayConfig` (cluster
      address, workers, CPUs/GPUs per worker); with return_stats, the run's `RayEmbedRun`.
    """
    if engine not in ("local", "ray"):
        raise UserError(f"engine must be 'local' or 'ray', not {engine!r}")
    ds = as_dataset(catalog)
    config = EncoderConfig(text_encoder=text_encoder, adapter=adapter, mix=dict(mix or {}), recipe=tuple(recipe),
                           image_encoder=EncoderConfig.image_encoder if image_encoder == "default" else image_encoder)
    if batch_size < 1 or (threads is not None and threads < 1):
        raise UserError("batch_size and threads must be >= 1")
    if engine == "ray":
        return _embed_on_ray(ds, config, out, ray, batch_size=batch_size, threads=threads, cache_dir=cache_dir,
                             return_stats=return_stats)
    encoder = load_item_encoder(config, cache_dir=cache_dir, batch_size=batch_size, threads=threads,
                                progress=progress)
    try:
        result = embed_catalog(ds, encoder)
    finally:
        encoder.close()
    log.info("embedded %s", encoder.stats.summary())
    return (result, encoder.stats) if return_stats else result


def _embed_on_ray(ds: datasets.Dataset, config: EncoderConfig, out: str | Path | None, ray: Any, *, batch_size: int,
                  threads: int | None, cache_dir: Any, return_stats: bool) -> Any:
    """`embed(..., engine="ray")`: the Ray Data run, read back as a Dataset in catalog order."""
    import tempfile

    from datasets.table import InMemoryTable

    from mmrec.embedding.distributed import embed_ray
    from mmrec.embedding.parts import EmbedOutput

    with tempfile.TemporaryDirectory(prefix="mmrec-embed-") as tmp:
        run = embed_ray(ds, out or Path(tmp) / "out", config, ray, batch_size=batch_size, threads=threads,
                        cache_dir=cache_dir)
        order = [str(i) for i in ds["item_id"]]
        result = datasets.Dataset(InMemoryTable(EmbedOutput(run.out).read(order=order)))
    return (result, run) if return_stats else result

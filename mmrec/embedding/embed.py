"""`mmrec.embed`: a catalog in, the same catalog with text / image / fused vectors out.

The first thing users touch. It runs the one `ItemEncoder` (recipe + encoders + content-hash cache) over
the catalog in batches, so re-running on a grown catalog only embeds the new or changed items, and the
vectors are exactly those the store and training use for the same item. `engine="ray"` runs the same
encoder on a Ray Data actor pool instead (`mmrec.embedding.distributed`, optional extra `distributed`).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np

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


def embed_catalog(ds: datasets.Dataset, encoder: ItemEncoder) -> datasets.Dataset:
    """`ds` with text_vector, image_vector (None where no usable image) and fused_vector columns added."""
    wanted = [c for c in ds.column_names if c in ("title", "description", "category", "attributes", "image",
                                                   "image_path")]
    res = encoder.embed(iter_rows(ds.select_columns(wanted)), total=len(ds))
    feature = datasets.Sequence(datasets.Value("float32"), length=encoder.dim)
    out = ds
    for name in VECTOR_COLUMNS:
        col = f"{name}_vector"
        if col in out.column_names:
            out = out.remove_columns(col)
        out = out.add_column(col, [None if not np.isfinite(row).all() else row for row in res[name]], feature=feature)
    return out


def embed(catalog: Any, *, text_encoder: Any = "default", image_encoder: Any = "default", adapter: Any = "default",
          mix: dict[str, Any] | None = None, recipe: tuple[str, ...] = DEFAULT_FIELDS, batch_size: int = 64,
          threads: int | None = None, cache_dir: str | Path | None | bool = None, progress: bool = True,
          return_stats: bool = False, engine: str = "local", out: str | Path | None = None,
          ray: Any = None) -> Any:
    """Embed a catalog; returns it as a `datasets.Dataset` with `text_vector`, `image_vector` (None where the
    item has no usable image) and `fused_vector` columns, all in the shared text space.

    catalog: a Dataset, a built-in dataset name, a JSONL/Parquet/CSV file, or an iterable of Items/dicts.
    text_encoder / image_encoder / adapter / mix / recipe: see `mmrec.EncoderConfig` (specs or objects;
      image_encoder None embeds text only, fused = text; "default" image encoder = efficientnet-lite0).
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

"""Batch embedding on Ray Data: `mmrec embed CATALOG --out OUT --engine ray` and `mmrec.embed(...,
engine="ray")`. Needs the optional extra `pip install mmrec[distributed]` (ray[data]); `import mmrec` never
imports ray.

The pipeline is Ray's own: the catalog (the loaded catalog's Arrow table, or any `ray.data.Dataset`,
e.g. `ray.data.read_parquet("s3://.../catalog/")`) -> `map_batches` over an actor pool whose actors each
load the `ItemEncoder` once (`workers` actors, `num_cpus` / `num_gpus` each) -> `write_parquet` into a new
run folder of OUT (`mmrec.embedding.parts`), with Ray's progress bars. Listings whose content key is
already in OUT are skipped by the actors before any model runs, so an interrupted or repeated run embeds
only what is missing. The vectors are those of the single-process path: same encoder, recipe and cache key.

Without `address` a local Ray is started for the run (and stopped after); with one (e.g. "auto" on a
cluster node, or "ray://head:10001") the run joins that cluster, whose workers need mmrec installed.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmrec.embedding.item_encoder import EncoderConfig, load_item_encoder
from mmrec.embedding.parts import KEY_COLUMN, EmbedOutput
from mmrec.errors import UserError

log = logging.getLogger(__name__)

VECTOR_COLUMNS = ("text", "image", "fused")


@dataclass
class RayConfig:
    """Where the Ray Data pipeline runs and how wide.

    address: a running Ray cluster ("auto", "ray://HOST:10001"); None starts a local Ray for the run.
    workers: actors in the pool; each loads the item encoder once and embeds batches.
    num_cpus / num_gpus: resources each actor reserves (num_gpus for GPU clusters; the bundled encoders
      run on CPU, see the README).
    """

    address: str | None = None
    workers: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def validate(self) -> None:
        if self.workers < 1 or self.num_cpus <= 0 or self.num_gpus < 0:
            raise UserError("ray: workers must be >= 1, num_cpus > 0 and num_gpus >= 0")


@dataclass
class RayEmbedRun:
    """What one distributed run did."""

    out: Path
    items: int  # listings in the catalog
    skipped: int  # already in OUT (same content key)
    embedded: int  # embedded and written by this run
    rows: int  # rows in OUT after the run (one per listing)
    seconds: float  # the pipeline (Ray start and encoder loading in the driver excluded)

    @property
    def items_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        return (f"{self.items:,} items: {self.embedded:,} embedded on Ray, {self.skipped:,} already in {self.out}; "
                f"{self.seconds:.1f}s ({self.items_per_s:,.1f} items/s)")


def _require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError("--engine ray needs Ray Data: pip install 'mmrec[distributed]'") from None
    return ray


class EmbedBatches:
    """The actor of the pool: loads the item encoder once, then turns catalog batches (Arrow tables) into
    the same rows with text/image/fused vectors and the content key, leaving out listings in `done`."""

    def __init__(self, config: EncoderConfig, batch_size: int, threads: int | None, cache_dir: Any,
                 done: list[Any], space: str | None = None) -> None:
        import ray

        self.encoder = load_item_encoder(config, cache_dir=cache_dir, batch_size=batch_size, threads=threads)
        if space is not None and self.encoder.space != space:
            # A node that built its own default text space (the tuned e5 is not bit-identical across machines)
            # would write vectors of another space under the driver's name: refuse instead.
            self.encoder.close()
            raise UserError(f"a Ray worker's item encoder is not the driver's ({self.encoder.space} vs {space}): "
                            "give the workers the driver's $MMREC_CACHE/models (or pass a text space directory)")
        self.threads = threads
        self.done: set[str] = ray.get(done[0]) if done else set()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from encoders.cache import content_key
        from encoders.threads import torch_threads

        rows = batch.to_pylist()
        identity = self.encoder.embedder.identity
        keys = [content_key(identity, text, image) for text, image in self.encoder.inputs(rows)]
        todo = [i for i, key in enumerate(keys) if key not in self.done]
        dim = self.encoder.dim
        table = batch.take(pa.array(todo, pa.int64()))
        if todo:
            with torch_threads(self.threads, self.encoder.text_encoder, self.encoder.image_encoder):
                out = self.encoder.encode([rows[i] for i in todo], errors="skip")
            if out["image_errors"]:
                log.warning("%d images could not be decoded; those items got text-only vectors (first: %s)",
                            len(out["image_errors"]), next(iter(out["image_errors"].values())))
        else:
            out = {name: np.zeros((0, dim), np.float32) for name in VECTOR_COLUMNS}
        for name in VECTOR_COLUMNS:
            table = table.append_column(f"{name}_vector", _vector_column(out[name], dim))
        return table.append_column(KEY_COLUMN, pa.array([keys[i] for i in todo], pa.string()))


def _vector_column(vectors: np.ndarray, dim: int) -> Any:
    """(n, dim) float32 with NaN rows -> fixed_size_list<float>[dim] with nulls (as the local path writes)."""
    import pyarrow as pa

    vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, dim)
    missing = ~np.isfinite(vectors).all(axis=1)
    flat = pa.array(np.where(missing[:, None], 0.0, vectors).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(missing))


def _source(catalog: Any, ray: Any, workers: int, batch_size: int) -> tuple[Any, Any]:
    """(ray.data.Dataset of catalog rows, pyarrow array of their item ids)."""
    import pyarrow as pa

    if isinstance(catalog, ray.data.Dataset):
        if "item_id" not in catalog.columns():
            raise UserError("the catalog has no 'item_id' column: the ray engine keys its output by listing")
        ids = pa.concat_tables(ray.get(catalog.select_columns(["item_id"]).to_arrow_refs()))["item_id"]
        return catalog, ids.combine_chunks()
    from mmrec.data.catalog import as_dataset

    ds = as_dataset(catalog)
    if "item_id" not in ds.column_names:
        raise UserError("the catalog has no 'item_id' column: the ray engine keys its output by listing")
    blocks = max(4 * workers, math.ceil(len(ds) / (8 * batch_size)))
    # What ray.data.from_huggingface does with an in-memory Dataset, without its Hugging Face Hub lookup
    # (offline here) and its aiohttp import.
    table = ds.with_format("arrow")[:]
    return ray.data.from_arrow(table, override_num_blocks=min(blocks, len(ds))), table["item_id"].combine_chunks()


def embed_ray(catalog: Any, out: str | Path, config: EncoderConfig | None = None, ray_config: RayConfig | None = None,
              *, batch_size: int = 64, threads: int | None = 1, cache_dir: Any = None) -> RayEmbedRun:
    """Embed `catalog` into the Parquet parts directory `out` on Ray Data (see the module docstring).

    catalog: a `ray.data.Dataset` of catalog rows (item_id, title, ...), or anything `mmrec.embed` takes.
    config: the encoders and recipe (`EncoderConfig`); batch_size: items per model call (and per Ray
    batch); threads: torch threads per actor; cache_dir: each actor's content-hash cache, as in `embed`.
    """
    ray = _require_ray()
    config = config or EncoderConfig()
    ray_config = ray_config or RayConfig()
    ray_config.validate()
    if batch_size < 1 or (threads is not None and threads < 1):
        raise UserError("batch_size and threads must be >= 1")
    EmbedOutput.check(out)
    # The driver loads the encoder once: its space names OUT, and a default adapter is trained into the
    # cache here, once, instead of in every actor.
    encoder = load_item_encoder(config, cache_dir=False, progress=True)
    space = {"space": encoder.space, "encoder": encoder.name, "recipe": encoder.recipe.id, "dim": encoder.dim}
    encoder.close()
    output = EmbedOutput.open(out, space)
    started = not ray.is_initialized()
    if started:
        if ray_config.address:
            ray.init(address=ray_config.address)
        else:  # a local Ray: room for the actors and for the write tasks beside them
            need = math.ceil(ray_config.workers * ray_config.num_cpus) + 1
            ray.init(num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False)
    try:
        source, ids = _source(catalog, ray, ray_config.workers, batch_size)
        done = output.reconcile(ids)
        run_dir = output.next_run()
        t0 = time.perf_counter()
        embedded = source.map_batches(
            EmbedBatches, batch_size=batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=ray_config.workers),
            num_cpus=ray_config.num_cpus, num_gpus=ray_config.num_gpus or None,
            fn_constructor_kwargs={"config": config, "batch_size": batch_size, "threads": threads,
                                   "cache_dir": cache_dir, "done": [ray.put(done)], "space": space["space"]})
        embedded.write_parquet(str(run_dir))
        seconds = time.perf_counter() - t0
        written = _rows_in(run_dir)
        output.reconcile(ids)
        return RayEmbedRun(out=Path(out), items=len(ids), skipped=len(ids) - written, embedded=written,
                           rows=output.count(), seconds=seconds)
    finally:
        if started:
            ray.shutdown()


def _rows_in(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in folder.glob("*.parquet")) if folder.is_dir() else 0

"""The output of a distributed embedding run (`mmrec embed --engine ray`): a directory of Parquet parts that
makes the run resumable by content hash.

    OUT/_mmrec_embed.json     the vector space the parts hold (recipe + encoders); another one is refused
    OUT/run-0001/*.parquet    the rows the first run embedded (catalog columns + text/image/fused vectors
    OUT/run-0002/*.parquet      + content_key, the embedding cache's key of the item's text and image)

Each run embeds only the listings whose content key is not already in OUT, into a new run-NNNN folder
written by Ray's `write_parquet` (every worker writes its own files). Before and after a run, `reconcile`
makes OUT one row per listing of the current catalog: a listing's row in the newest run wins (a changed
listing was re-embedded), and rows of listings no longer in the catalog are dropped. Parts a crash left
unreadable are deleted, and their listings embedded again.

Any Parquet reader reads OUT as one table (`pandas.read_parquet(OUT)`, `pyarrow.dataset`, Spark, DuckDB):
files and folders starting with "_" are ignored by convention, and the run folders are plain folders.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmrec.errors import UserError

log = logging.getLogger(__name__)

MARKER = "_mmrec_embed.json"
KEY_COLUMN = "content_key"


@dataclass
class EmbedOutput:
    """An output directory of Parquet parts in one vector space (see the module docstring)."""

    root: Path

    @staticmethod
    def check(root: str | Path) -> None:
        """Refuse, before any work, an output path that is a file or a directory of something else."""
        root = Path(root)
        if root.is_file():
            raise UserError(f"--out {root} is a file; the ray engine writes a directory of Parquet parts")
        if root.is_dir() and any(root.iterdir()) and not (root / MARKER).exists():
            raise UserError(f"--out {root} is a non-empty directory that no `mmrec embed --engine ray` wrote")

    @classmethod
    def open(cls, root: str | Path, space: dict[str, Any]) -> "EmbedOutput":
        """Create `root` for `space` ({"space", "encoder", "recipe", "dim"}), or reopen it if it holds that
        space; a file, a foreign directory or another space is a UserError."""
        cls.check(root)
        root = Path(root)
        marker = root / MARKER
        if marker.exists():
            stored = json.loads(marker.read_text())
            if stored.get("space") != space["space"]:
                raise UserError(f"{root} holds vectors of space {stored.get('space')} (encoder {stored.get('encoder')}, "
                                f"recipe {stored.get('recipe')}), not {space['space']}: use another --out")
        else:
            root.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(space, indent=2))
            tmp.replace(marker)
        return cls(root)

    def runs(self) -> list[tuple[int, Path]]:
        """(run number, folder) of the runs so far, oldest first."""
        found = []
        for path in self.root.glob("run-*"):
            suffix = path.name[4:]
            if path.is_dir() and suffix.isdigit():
                found.append((int(suffix), path))
        return sorted(found)

    def next_run(self) -> Path:
        runs = self.runs()
        return self.root / f"run-{(runs[-1][0] + 1) if runs else 1:04d}"

    def files(self) -> list[tuple[int, Path]]:
        """(run number, Parquet file) of every part."""
        return [(n, f) for n, folder in self.runs() for f in sorted(folder.glob("*.parquet"))]

    def count(self) -> int:
        """Rows in all parts (from the Parquet footers)."""
        return sum(pq.read_metadata(f).num_rows for _, f in self.files())

    def read(self, order: list[str] | None = None) -> pa.Table:
        """All parts as one table without the content key; rows in the order of the item ids `order`
        (listings not in OUT left out), else in no particular order."""
        files = [str(f) for _, f in self.files()]
        if not files:
            raise UserError(f"{self.root} holds no embedded rows")
        table = pa.concat_tables([pq.read_table(f) for f in files]).drop_columns([KEY_COLUMN])
        if order is not None:
            where = {item_id: i for i, item_id in enumerate(table["item_id"].to_pylist())}
            table = table.take(pa.array([where[i] for i in order if i in where], pa.int64()))
        return table

    def reconcile(self, catalog_ids: pa.Array) -> set[str]:
        """Make the parts hold one row per listing of `catalog_ids` (the newest run's row; rows of other
        listings dropped) and return the content keys they hold: the listings a run can skip."""
        tables, paths = [], []
        for run, path in self.files():
            try:
                part = pq.read_table(path, columns=["item_id", KEY_COLUMN])
            except (OSError, pa.ArrowException) as exc:
                log.warning("%s is unreadable (%s): deleted; its listings are embedded again", path, exc)
                path.unlink()
                continue
            n = part.num_rows
            tables.append(part.append_column("run", pa.array([run] * n, pa.int32()))
                          .append_column("file", pa.array([len(paths)] * n, pa.int32()))
                          .append_column("row", pa.array(range(n), pa.int64())))
            paths.append(path)
        if not tables:
            return set()
        rows = pa.concat_tables(tables)
        newest = rows.group_by("item_id").aggregate([("run", "max")])
        rows = rows.join(newest, "item_id")
        current = pc.is_in(rows["item_id"], value_set=catalog_ids.cast(rows["item_id"].type))
        keep = pc.and_(pc.equal(rows["run"], rows["run_max"]), current)
        dropped = rows.filter(pc.invert(keep))
        for file_index in pc.unique(dropped["file"]).to_pylist():
            gone = dropped.filter(pc.equal(dropped["file"], file_index))["row"]
            self._drop_rows(paths[file_index], gone)
        return set(rows.filter(keep)[KEY_COLUMN].to_pylist())

    @staticmethod
    def _drop_rows(path: Path, rows: pa.Array) -> None:
        """Rewrite one part without `rows` (atomically: a crash leaves the old part or the new one)."""
        table = pq.read_table(path)
        mask = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), value_set=rows))
        table = table.filter(mask)
        if table.num_rows == 0:
            path.unlink()
            return
        tmp = path.with_name("_" + path.name + ".tmp")  # "_": ignored by Parquet readers meanwhile
        pq.write_table(table, tmp)
        tmp.replace(path)

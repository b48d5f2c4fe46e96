"""Rows derived from stored points, cached by point and stamped with the point version they were derived at.

Why: a search returns the same popular points request after request, and turning each hit into an array
row (the engine's vector as a list of floats, or a model's row computed from it) costs more than the
search itself. The engine bumps a point's version on every write to it, so an entry read at another
version is a miss, never a stale answer. Used for the edge store's hit vectors (`index.edge`) and for the
service's candidate rows (`mmrec.serving.two_stage`).

    cache = VersionedRows(dim=64, capacity=100_000)
    cache.put(key, version, row, tag)            # tag: anything kept beside the row (a payload, an ID code)
    at, rows = cache.find(keys, versions)        # positions of the cached keys, and their rows
    out[at] = cache.matrix[rows]

Not thread-safe: callers hold their own lock.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np


class VersionedRows:
    """A ring of `capacity` float32 rows of width `dim`, each with a tag, keyed by point; when full, the
    oldest entry's row is reused first. Storage grows (doubling) up to the capacity as entries arrive."""

    def __init__(self, dim: int, capacity: int) -> None:
        if dim < 1 or capacity < 1:
            raise ValueError(f"VersionedRows needs dim >= 1 and capacity >= 1, got {dim}, {capacity}")
        self.capacity = capacity
        size = min(capacity, 4096)
        self.matrix = np.empty((size, dim), dtype=np.float32)
        self.versions = np.full(size, -1, dtype=np.int64)
        self.tags: list[Any] = []  # row -> tag
        self.owner: list[Hashable] = []  # row -> key
        self.rows: dict[Hashable, int] = {}  # key -> row
        self.next = 0  # the row to reuse once full

    def __len__(self) -> int:
        return len(self.rows)

    def find(self, keys: Sequence[Hashable], versions: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions i of `keys` cached at `versions[i]`, their rows): one dict lookup per key, the version
        check and everything after it vectorised."""
        get = self.rows.get
        rows = np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        hit = rows >= 0
        hit[hit] = self.versions[rows[hit]] == np.asarray(versions, dtype=np.int64)[hit]
        at = np.flatnonzero(hit)
        return at, rows[at]

    def put(self, key: Hashable, version: int, row_values: np.ndarray, tag: Any = None) -> None:
        """Cache (or overwrite) `key`'s row at `version`."""
        row = self.rows.get(key)
        if row is None:
            if len(self.owner) < self.capacity:
                row = len(self.owner)
                self.owner.append(key)
                self.tags.append(None)
                if row >= len(self.matrix):
                    self._grow()
            else:
                row, self.next = self.next, (self.next + 1) % self.capacity
                del self.rows[self.owner[row]]
                self.owner[row] = key
            self.rows[key] = row
        self.matrix[row] = row_values
        self.versions[row] = version
        self.tags[row] = tag

    def _grow(self) -> None:
        size = min(2 * len(self.matrix), self.capacity)
        matrix = np.empty((size, self.matrix.shape[1]), dtype=np.float32)
        matrix[: len(self.matrix)] = self.matrix
        versions = np.full(size, -1, dtype=np.int64)
        versions[: len(self.versions)] = self.versions
        self.matrix, self.versions = matrix, versions

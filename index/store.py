"""The one interface every vector store backend implements, with the input checks they share.

Backends implement the underscore methods; the public methods validate arguments once, here, so the
edge engine and a Qdrant server reject the same bad input with the same error.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from index.errors import PayloadError, StoreError, UnknownItemError
from index.filters import Filter
from index.schema import CollectionSchema, Group, Hit, Point, clean_payload, clean_vectors, unique_ids

RECOMMEND_STRATEGIES: tuple[str, ...] = ("average_vector", "best_score", "sum_scores")
MAX_K = 10_000


def _check_k(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise PayloadError(f"{name} must be an integer between 1 and {MAX_K}, got {k!r}")
    return int(k)


def average_vector_query(positives: np.ndarray, negatives: np.ndarray | None) -> np.ndarray:
    """Qdrant's `average_vector` recommend query: avg(pos) + (avg(pos) - avg(neg)), or avg(pos) alone."""
    pos = positives.mean(axis=0)
    if negatives is None or len(negatives) == 0:
        return pos
    return pos + (pos - negatives.mean(axis=0))


@dataclass(frozen=True)
class SearchRequest:
    """One query of a batch (`VectorStore.search_batch` / `search_groups_batch`): the arguments of one
    `search` call, with the same meaning, so a batch answers exactly what the calls one by one would."""

    vector: Any
    using: str = "fused"
    k: int = 10
    filter: Filter | None = None
    exact: bool = False
    hnsw_ef: int | None = None
    with_vectors: bool = False


@dataclass
class HitArrays:
    """One query's hits laid out for vectorised scoring (`VectorStore.search_batch_arrays`): the hits
    `search(..., with_vectors=True)` returns, in the same order, as parallel lists and one matrix of their
    `using` vectors. A hit whose vector can no longer be read (deleted since the search) is left out.
    `payloads` may be shared with the backend's hit cache (index.edge): read them, copy before changing."""

    item_ids: list[str]
    scores: np.ndarray  # (n,) float64, the index's similarity
    payloads: list[dict[str, Any]]
    vectors: np.ndarray  # (n, dim) float32: each hit's `using` vector as stored
    versions: np.ndarray | None = None  # (n,) int64 point versions where the backend reports them (a point's
    # version changes with every write to it, so a caller may cache what it derives from a hit by it)

    def __len__(self) -> int:
        return len(self.item_ids)


class VectorStore(ABC):
    """A Qdrant collection of items: named vectors `text`/`image`/`fused` and an indexed payload.

    Use `index.open_store(...)` to get one. All writes are idempotent by item id and acknowledged only
    once durable against a crash of this process (edge: in the WAL; server: `wait=True`).
    """

    kind: str
    schema: CollectionSchema

    # --- writes -----------------------------------------------------------------------------------------
    def upsert(self, points: Iterable[Point], batch_size: int = 256) -> int:
        """Insert or replace points (same item id = same point; the whole point is replaced, so a
        vector left out is removed). Validates every point of a batch before writing any. Returns the
        number of points written."""
        _check_k(batch_size, "batch_size")
        written = 0
        batch: list[tuple[str, dict[str, list[float]], dict[str, Any]]] = []
        for point in points:
            if not isinstance(point, Point):
                raise PayloadError(f"upsert() takes index.Point objects, got {type(point).__name__}")
            batch.append((point.item_id, clean_vectors(self.schema, point), clean_payload(point)))
            if len(batch) >= batch_size:
                self._upsert(batch)
                written += len(batch)
                batch = []
        if batch:
            self._upsert(batch)
            written += len(batch)
        return written

    def delete(self, item_ids: Sequence[str]) -> None:
        """Delete items by id; ids not in the store are ignored."""
        ids = unique_ids(item_ids, "item_ids")
        if ids:
            self._delete(ids)

    # --- reads ------------------------------------------------------------------------------------------
    def get(self, item_ids: Sequence[str], with_vectors: bool | Sequence[str] = False) -> list[Point]:
        """The stored points for `item_ids`, in the order asked; ids not in the store are left out.
        `with_vectors`: True for every named vector, or the names of the ones wanted (fewer to convert)."""
        ids = unique_ids(item_ids, "item_ids")
        if not ids:
            return []
        if not isinstance(with_vectors, bool):
            names = list(dict.fromkeys(with_vectors))
            for name in names:
                self.schema.check_using(name)
            with_vectors = names or False
        found = {p.item_id: p for p in self._get(ids, with_vectors)}
        return [found[i] for i in ids if i in found]

    def count(self, filter: Filter | None = None) -> int:
        """Exact number of points (matching `filter`)."""
        return self._count(self._check_filter(filter))

    def search(
        self,
        vector: Any,
        *,
        using: str = "fused",
        k: int = 10,
        filter: Filter | None = None,
        exact: bool = False,
        hnsw_ef: int | None = None,
        with_vectors: bool = False,
    ) -> list[Hit]:
        """Top-k points by similarity of their `using` vector to `vector` (points lacking it are skipped).
        `exact=True` scans every vector instead of the HNSW graph; `with_vectors=True` returns each hit's
        `using` vector (as stored: unit length for cosine) in `Hit.vectors`."""
        query = self.schema.check_vector(using, vector, "query")
        return self._search(query, using, _check_k(k), self._check_filter(filter), exact, hnsw_ef, with_vectors)

    def search_batch(self, requests: Sequence[SearchRequest]) -> list[list[Hit]]:
        """`search` for several queries at once: result i is what `search(**requests[i])` returns. Every
        request is checked before any runs. Backends with a batch API plan the queries together (one
        engine call for the concurrent requests of a server instead of one each)."""
        checked = [self._check_request(r) for r in requests]
        return self._search_batch(checked) if checked else []

    def search_batch_arrays(self, requests: Sequence[SearchRequest]) -> list[HitArrays]:
        """`search_batch` with every hit's `using` vector, as arrays (`HitArrays`) rather than one `Hit`
        object per result: a ranker that rescores hundreds of candidates per query reads them as one
        matrix (the requests' `with_vectors` is implied)."""
        checked = [self._check_request(r) for r in requests]
        checked = [SearchRequest(r.vector, r.using, r.k, r.filter, r.exact, r.hnsw_ef, True) for r in checked]
        return self._search_batch_arrays(checked) if checked else []

    def search_groups_batch(self, requests: Sequence[SearchRequest], *, group_by: str = "product_id",
                            group_size: int = 1) -> list[list[Group]]:
        """`search_groups` for several queries at once (one `group_by` / `group_size` for the batch):
        result i is what `search_groups` returns for requests[i] (its `hnsw_ef` is not used, as there)."""
        checked = [self._check_request(r) for r in requests]
        group_by = self._check_group_by(group_by)
        group_size = _check_k(group_size, "group_size")
        return self._search_groups_batch(checked, group_by, group_size) if checked else []

    def search_groups(
        self,
        vector: Any,
        *,
        using: str = "fused",
        k: int = 10,
        group_by: str = "product_id",
        group_size: int = 1,
        filter: Filter | None = None,
        exact: bool = False,
        with_vectors: bool = False,
    ) -> list[Group]:
        """Top-k groups (by best hit) of points sharing `group_by`, up to `group_size` hits each, so one
        product listed in 14 languages takes one slot of a result page, not 14."""
        query = self.schema.check_vector(using, vector, "query")
        group_by = self._check_group_by(group_by)
        return self._search_groups(
            query, using, _check_k(k), group_by, _check_k(group_size, "group_size"), self._check_filter(filter), exact,
            with_vectors,
        )

    def recommend(
        self,
        positive_ids: Sequence[str],
        negative_ids: Sequence[str] = (),
        *,
        using: str = "fused",
        k: int = 10,
        filter: Filter | None = None,
        strategy: str = "average_vector",
        exact: bool = False,
    ) -> list[Hit]:
        """Items like the positive examples and unlike the negative ones, by their stored `using` vectors;
        the examples themselves are never returned. Unknown example ids raise UnknownItemError."""
        pos, neg, vectors = self._check_examples(positive_ids, negative_ids, using, strategy)
        return self._recommend(pos, neg, vectors, using, _check_k(k), self._check_filter(filter), strategy, exact)

    def recommend_groups(
        self,
        positive_ids: Sequence[str],
        negative_ids: Sequence[str] = (),
        *,
        using: str = "fused",
        k: int = 10,
        group_by: str = "product_id",
        group_size: int = 1,
        filter: Filter | None = None,
        strategy: str = "average_vector",
        exact: bool = False,
    ) -> list[Group]:
        """recommend() with results grouped like search_groups()."""
        pos, neg, vectors = self._check_examples(positive_ids, negative_ids, using, strategy)
        group_by = self._check_group_by(group_by)
        return self._recommend_groups(
            pos, neg, vectors, using, _check_k(k), group_by, _check_k(group_size, "group_size"),
            self._check_filter(filter), strategy, exact,
        )

    # --- maintenance ------------------------------------------------------------------------------------
    def build_index(self) -> None:
        """Build HNSW graphs and merge segments after a bulk load (searches work before, just slower)."""

    def flush(self) -> None:
        """Persist everything to its final on-disk form (writes are already crash-safe without it)."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """kind, points, indexed_vectors (in HNSW graphs), segments, and where the store is."""

    @abstractmethod
    def close(self) -> None:
        """Release the store (the edge directory lock, the server connection). Idempotent."""

    def __enter__(self) -> "VectorStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers ----------------------------------------------------------------------------------------
    @staticmethod
    def _check_filter(filter: Filter | None) -> Filter | None:
        if filter is None:
            return None
        if not isinstance(filter, Filter):
            raise PayloadError(f"filter must be an index.Filter, got {type(filter).__name__}")
        return None if filter.is_empty() else filter

    def _check_request(self, request: SearchRequest) -> SearchRequest:
        if not isinstance(request, SearchRequest):
            raise PayloadError(f"a search batch takes index.SearchRequest objects, got {type(request).__name__}")
        vector = self.schema.check_vector(request.using, request.vector, "query")
        return SearchRequest(vector, request.using, _check_k(request.k), self._check_filter(request.filter),
                             bool(request.exact), request.hnsw_ef, bool(request.with_vectors))

    @staticmethod
    def _check_group_by(group_by: str) -> str:
        allowed = list(_GROUPABLE)
        if group_by not in allowed:
            raise PayloadError(f"group_by must be one of {', '.join(allowed)}, got {group_by!r}")
        return group_by

    def _check_examples(
        self, positive_ids: Sequence[str], negative_ids: Sequence[str], using: str, strategy: str
    ) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
        """Checked example ids (negatives that are also positives dropped) and their stored vectors."""
        if strategy not in RECOMMEND_STRATEGIES:
            raise PayloadError(f"strategy must be one of {', '.join(RECOMMEND_STRATEGIES)}, got {strategy!r}")
        self.schema.check_using(using)
        pos = unique_ids(positive_ids, "positive_ids")
        neg = [i for i in unique_ids(negative_ids, "negative_ids") if i not in set(pos)]
        if not pos:
            raise PayloadError("recommend needs at least one positive example id")
        stored = {p.item_id: p for p in self._get(pos + neg, with_vectors=True)}
        missing = [i for i in pos + neg if i not in stored]
        if missing:
            raise UnknownItemError(f"unknown example item ids: {', '.join(missing[:10])}", missing)
        lacking = [i for i in pos + neg if using not in stored[i].vectors]
        if lacking:
            raise UnknownItemError(f"example items without a {using!r} vector: {', '.join(lacking[:10])}", lacking)
        return pos, neg, {i: np.asarray(stored[i].vectors[using], dtype=np.float32) for i in pos + neg}

    def _closed_error(self) -> StoreError:
        return StoreError(f"the {self.kind} store is closed")

    # --- backend hooks ----------------------------------------------------------------------------------
    @abstractmethod
    def _upsert(self, batch: list[tuple[str, dict[str, list[float]], dict[str, Any]]]) -> None: ...

    @abstractmethod
    def _delete(self, item_ids: list[str]) -> None: ...

    @abstractmethod
    def _get(self, item_ids: list[str], with_vectors: bool | list[str]) -> list[Point]: ...

    @abstractmethod
    def _count(self, filter: Filter | None) -> int: ...

    @abstractmethod
    def _search(
        self, query: np.ndarray, using: str, k: int, filter: Filter | None, exact: bool, hnsw_ef: int | None,
        with_vectors: bool,
    ) -> list[Hit]: ...

    def _search_batch(self, requests: list[SearchRequest]) -> list[list[Hit]]:
        """Checked requests, one by one (backends with a batch API override this)."""
        return [self._search(r.vector, r.using, r.k, r.filter, r.exact, r.hnsw_ef, r.with_vectors) for r in requests]

    def _search_batch_arrays(self, requests: list[SearchRequest]) -> list[HitArrays]:
        """From `_search_batch` (backends that can hand vectors over as arrays override this)."""
        out = []
        for r, hits in zip(requests, self._search_batch(requests)):
            hits = [h for h in hits if h.vectors and r.using in h.vectors]
            dim = self.schema.vectors[r.using]
            out.append(HitArrays(
                [h.item_id for h in hits], np.array([h.score for h in hits], dtype=np.float64),
                [h.payload for h in hits],
                np.stack([np.asarray(h.vectors[r.using], dtype=np.float32) for h in hits])  # type: ignore[index]
                if hits else np.zeros((0, dim), dtype=np.float32)))
        return out

    def _search_groups_batch(self, requests: list[SearchRequest], group_by: str, group_size: int
                             ) -> list[list[Group]]:
        return [self._search_groups(r.vector, r.using, r.k, group_by, group_size, r.filter, r.exact, r.with_vectors)
                for r in requests]

    @abstractmethod
    def _search_groups(
        self, query: np.ndarray, using: str, k: int, group_by: str, group_size: int, filter: Filter | None,
        exact: bool, with_vectors: bool,
    ) -> list[Group]: ...

    @abstractmethod
    def _recommend(
        self, pos: list[str], neg: list[str], vectors: dict[str, np.ndarray], using: str, k: int,
        filter: Filter | None, strategy: str, exact: bool,
    ) -> list[Hit]: ...

    @abstractmethod
    def _recommend_groups(
        self, pos: list[str], neg: list[str], vectors: dict[str, np.ndarray], using: str, k: int,
        group_by: str, group_size: int, filter: Filter | None, strategy: str, exact: bool,
    ) -> list[Group]: ...


# Payload fields a result can be grouped by (keyword-indexed, one value per point).
_GROUPABLE = {"product_id": "keyword", "item_id": "keyword", "language": "keyword", "market": "keyword",
              "category": "keyword"}


def group_hits(hits: list[Hit], group_by: str, k: int, group_size: int) -> list[Group]:
    """Group score-ordered hits by a payload field: groups ordered by their best hit, at most k groups of
    at most group_size hits. Hits lacking the field are dropped, as Qdrant's own grouping does."""
    groups: dict[Any, Group] = {}
    for hit in hits:
        key = hit.payload.get(group_by)
        if key is None:
            continue
        group = groups.get(key)
        if group is None:
            if len(groups) >= k:
                continue
            groups[key] = group = Group(key=key, hits=[])
        if len(group.hits) < group_size:
            group.hits.append(hit)
    return list(groups.values())

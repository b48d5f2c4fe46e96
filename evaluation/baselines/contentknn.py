"""Content k-nearest neighbours: items whose vectors are closest to the history's. Needs no events on
the candidate item, so it is the natural cold-start and cross-lingual baseline."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..data import EvalSet, Histories, Interactions, as_histories
from ..metrics import unit_rows
from ..protocol import Recommendations, top_k


@dataclass
class ContentKNN:
    """score(u, j) = cosine similarity between item j's vector and the history's vectors.

    ``item_vectors`` is (n_items, d), row i = the vector of the split's item i (``split.item_ids``).
    ``aggregate="mean"``: similarity to the mean of the history's unit vectors (a user profile);
    ``"max"``: the largest similarity to any single history item (keeps multi-interest users' minor
    tastes). ``history_window``: only the last N history items (None = all).
    """

    item_vectors: np.ndarray
    aggregate: str = "mean"
    history_window: int | None = None
    name: str = "contentknn"
    unit_: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.aggregate not in ("mean", "max"):
            raise ValueError(f"aggregate must be 'mean' or 'max', got {self.aggregate!r}")
        vecs = np.asarray(self.item_vectors, dtype=np.float32)
        if vecs.ndim != 2:
            raise ValueError(f"item_vectors must be (n_items, d), got shape {vecs.shape}")
        self.unit_ = unit_rows(vecs, np.float32)

    def fit(self, train: Interactions, valid: EvalSet | None = None) -> "ContentKNN":
        if train.n_items != len(self.unit_):
            raise ValueError(
                f"item_vectors has {len(self.unit_)} rows but the split has {train.n_items} items; "
                "align the vectors with split.item_ids"
            )
        return self

    def recommend(
        self,
        histories: Histories | Sequence[Sequence[int]],
        k: int,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
    ) -> Recommendations:
        h = as_histories(histories)
        unit = self.unit_
        rows, items = h.row_of_event(), h.items
        if self.history_window is not None:
            keep = h.position_from_end() < self.history_window
            rows, items = rows[keep], items[keep]
        if self.aggregate == "mean":
            # Sparse (n, n_items) averaging matrix times the unit vectors = the mean profile per row.
            counts = np.bincount(rows, minlength=len(h)).astype(np.float32)
            weights = 1.0 / counts[rows]
            avg = sp.csr_matrix((weights, (rows, items)), shape=(len(h), len(unit)))
            scores = np.asarray(avg @ unit) @ unit.T
        else:
            scores = np.zeros((len(h), len(unit)), dtype=np.float32)
            bounds = np.searchsorted(rows, np.arange(len(h) + 1))  # rows are sorted
            for i in range(len(h)):
                sel = items[bounds[i] : bounds[i + 1]]
                if len(sel):
                    scores[i] = (unit[sel] @ unit.T).max(axis=0)
        return top_k(scores, k, histories=h if exclude_seen else None, candidates=candidates)

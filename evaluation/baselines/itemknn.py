"""Item-based k-nearest neighbours over co-occurrence (Sarwar et al. 2001; Deshpande & Karypis 2004)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..data import EvalSet, Histories, Interactions, as_histories
from ..protocol import Recommendations, top_k


def _binary_matrix(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0  # repeated interactions count once
    return m


@dataclass
class ItemKNN:
    """score(u, j) = sum over items i in u's history of sim(i, j), sim from training co-occurrence.

    ``similarity="cosine"``: |U_i ∩ U_j| / (sqrt(|U_i| |U_j|) + shrink) over the sets of training users
    who touched i and j; ``"cooccurrence"``: the raw count |U_i ∩ U_j|. Each item keeps its
    ``n_neighbors`` most similar items (0 = all). ``history_window`` uses only the last N history items
    and ``recency_decay`` d weights the item n positions from the end by d**n (recent taste; on ML-1M
    leave-one-out the last few items carry most of the signal: validation NDCG@10 0.032 with the whole
    history, 0.105 with decay 0.5 and all neighbours).
    """

    n_neighbors: int = 200
    similarity: str = "cosine"
    shrink: float = 0.0
    history_window: int | None = None
    recency_decay: float | None = None
    name: str = "itemknn"
    sim_: sp.csr_matrix | None = field(default=None, repr=False)

    def fit(self, train: Interactions, valid: EvalSet | None = None) -> "ItemKNN":
        if self.similarity not in ("cosine", "cooccurrence"):
            raise ValueError(f"similarity must be 'cosine' or 'cooccurrence', got {self.similarity!r}")
        n_items = train.n_items
        x = _binary_matrix(train.user, train.item, (train.n_users, n_items))
        co = (x.T @ x).tocsr().astype(np.float32)
        co.setdiag(0.0)
        co.eliminate_zeros()
        if self.similarity == "cosine":
            norm = np.sqrt(np.asarray(x.sum(axis=0)).ravel()).astype(np.float32)
            rows = np.repeat(np.arange(n_items), np.diff(co.indptr))
            co.data = co.data / (norm[rows] * norm[co.indices] + np.float32(self.shrink))
        if self.n_neighbors:
            co = self._prune(co, self.n_neighbors)
        self.sim_ = co
        return self

    @staticmethod
    def _prune(m: sp.csr_matrix, n: int) -> sp.csr_matrix:
        """Keep the n largest entries of each row (ties: lower column index)."""
        indptr, indices, data = [0], [], []
        for r in range(m.shape[0]):
            s, e = m.indptr[r], m.indptr[r + 1]
            cols, vals = m.indices[s:e], m.data[s:e]
            if e - s > n:
                keep = np.lexsort((cols, -vals))[:n]
                cols, vals = cols[keep], vals[keep]
            indices.append(cols)
            data.append(vals)
            indptr.append(indptr[-1] + len(cols))
        out = sp.csr_matrix(
            (np.concatenate(data) if data else [], np.concatenate(indices) if indices else [], indptr),
            shape=m.shape,
        )
        out.sort_indices()
        return out

    def recommend(
        self,
        histories: Histories | Sequence[Sequence[int]],
        k: int,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
    ) -> Recommendations:
        if self.sim_ is None:
            raise RuntimeError("call fit() first")
        h = as_histories(histories)
        rows, cols = h.row_of_event(), h.items
        pos_from_end = h.position_from_end()
        if self.history_window is not None:
            keep = pos_from_end < self.history_window
            rows, cols, pos_from_end = rows[keep], cols[keep], pos_from_end[keep]
        if self.recency_decay is None:
            hist = _binary_matrix(rows, cols, (len(h), self.sim_.shape[0]))
        else:  # the weights of a repeated item add up
            weights = np.power(np.float32(self.recency_decay), pos_from_end.astype(np.float32))
            hist = sp.csr_matrix((weights, (rows, cols)), shape=(len(h), self.sim_.shape[0]))
        scores = np.asarray((hist @ self.sim_).todense(), dtype=np.float64)
        return top_k(scores, k, histories=h if exclude_seen else None, candidates=candidates)

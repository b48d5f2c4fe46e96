"""A warm start for the item-ID embeddings from who-bought-what-next (PPMI + truncated SVD).

Why: under a wall-clock budget the fusion transformer stops long before its ID embeddings have
converged. The co-occurrence structure the IDs have to learn ("people who had X next had Y") is
cheap to compute directly from the same training events: count item pairs that occur within a few
events of each other in one history, weight them by positive pointwise mutual information and keep
the top singular directions. Starting the ID table there instead of at noise is the classic
word2vec-as-matrix-factorisation result applied to item sequences; training then refines it.

Everything here is computed from the training histories only, so it leaks nothing from a held-out
split. Sparse throughout: the pair matrix holds only pairs that occurred.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from evaluation import Histories


def cooccurrence_matrix(items: np.ndarray, indptr: np.ndarray, n: int, window: int) -> sp.csr_matrix:
    """(n, n) symmetric counts of item pairs at most ``window`` events apart in one history.

    items: (events,) codes in 0..n-1, negative = skip (e.g. items without an ID); indptr: (rows + 1,)."""
    items = np.asarray(items, dtype=np.int64)
    row = Histories(indptr=indptr, items=items).row_of_event()
    a_all, b_all = [], []
    for offset in range(1, window + 1):
        a, b = items[:-offset], items[offset:]
        keep = (row[:-offset] == row[offset:]) & (a >= 0) & (b >= 0) & (a != b)
        a_all.append(a[keep])
        b_all.append(b[keep])
    a = np.concatenate(a_all + b_all)
    b = np.concatenate(b_all + a_all)
    return sp.csr_matrix((np.ones(len(a), dtype=np.float64), (a, b)), shape=(n, n))


def ppmi_embeddings(counts: sp.csr_matrix, dim: int, *, scale: float = 0.02, seed: int = 0) -> np.ndarray:
    """(n, dim) rows U·sqrt(S) of the truncated SVD of the positive PMI matrix, rescaled so the entries
    have standard deviation ``scale`` (the model's own init scale). Items without pairs get zeros."""
    n = counts.shape[0]
    counts = counts.tocoo()
    total = counts.sum()
    row_sum = np.asarray(counts.sum(axis=1)).ravel()
    if total == 0 or n < 3:
        return np.zeros((n, dim), dtype=np.float32)
    pmi = np.log(counts.data * total / (row_sum[counts.row] * row_sum[counts.col]))
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (counts.row[keep], counts.col[keep])), shape=(n, n))
    k = min(dim, n - 2)
    v0 = np.random.default_rng(seed).standard_normal(n)  # seeded start vector: deterministic result
    u, s, _ = svds(ppmi, k=k, v0=v0)
    u = u[:, np.argsort(-s)] * np.sqrt(np.sort(s)[::-1])
    u = np.sign(u.sum(axis=0, keepdims=True) + 1e-12) * u  # fix the SVD's arbitrary signs
    out = np.zeros((n, dim), dtype=np.float64)
    out[:, :k] = u
    std = out[:, :k].std()
    return (out * (scale / std if std > 0 else 0.0)).astype(np.float32)


__all__ = ["cooccurrence_matrix", "ppmi_embeddings"]

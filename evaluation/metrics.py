"""Ranking metrics: per-user reference functions and vectorised versions that agree with them bit for bit.

Conventions shared by every accuracy metric (binary relevance unless noted):

* ``ranked`` is the list the user is shown, best first. Only its first ``k`` *positions* count. A repeated
  item counts once, at its first position; later copies occupy a slot and earn nothing (a recommender that
  repeats itself wastes the user's screen, and must not gain from it). In the vectorised functions a
  negative item index (``-1``) marks an empty slot (fewer than ``k`` candidates were left).
* ``k`` larger than the list: the missing positions are empty slots (they earn nothing; Precision@K still
  divides by ``k``).
* ``k < 1`` raises ``ValueError``.
* A user with **no relevant items** has no defined score: every accuracy metric returns ``nan`` (not 0,
  which would silently pull the mean down, nor 1). Means are taken with ``nanmean`` and the split
  protocols never emit such users.

The per-user functions are the readable definitions; the ``*_batch`` functions compute the same numbers
for many users from a hit matrix, adding in the same order so the results are identical, not just close
(``tests/test_evaluation_metrics.py`` checks equality).
"""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Literal

import numpy as np

__all__ = [
    "precision_at_k",
    "recall_at_k",
    "ndcg_at_k",
    "graded_ndcg_at_k",
    "mrr_at_k",
    "hit_rate_at_k",
    "map_at_k",
    "hit_matrix",
    "precision_at_k_batch",
    "recall_at_k_batch",
    "ndcg_at_k_batch",
    "mrr_at_k_batch",
    "hit_rate_at_k_batch",
    "map_at_k_batch",
    "accuracy_metrics_batch",
    "ACCURACY_METRICS",
    "catalog_coverage",
    "intra_list_diversity",
    "novelty",
    "unit_rows",
]

ACCURACY_METRICS: tuple[str, ...] = ("precision", "recall", "ndcg", "mrr", "hit_rate", "map")


def _discount(i: int) -> float:
    """1 / log2(position + 1) for 0-based ``i`` (position i+1): the DCG discount. Shared by both paths."""
    return 1.0 / math.log2(i + 2)


def _discounts(k: int) -> np.ndarray:
    return np.array([_discount(i) for i in range(k)], dtype=np.float64)


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _first_hits(ranked: Sequence, relevant: Collection, k: int) -> list[bool]:
    """Hit flag for each of the first ``k`` positions; repeats of an item earlier in the list are misses."""
    seen: set = set()
    flags = []
    for item in list(ranked)[:k]:
        flags.append(item in relevant and item not in seen)
        seen.add(item)
    return flags


# --------------------------------------------------------------------------------------------------------
# Per-user reference definitions
# --------------------------------------------------------------------------------------------------------


def precision_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    """Precision@K = |relevant items among the first k positions| / k.

    Divides by ``k`` even when fewer than ``k`` items were returned: empty slots are not free.
    """
    _check_k(k)
    if len(relevant) == 0:
        return math.nan
    return sum(_first_hits(ranked, relevant, k)) / k


def recall_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    """Recall@K = |relevant items among the first k positions| / |relevant|.

    With one held-out target (leave-one-out) this equals HitRate@K. The denominator is |relevant|, not
    min(|relevant|, k), so a user with more relevant items than k cannot reach 1.
    """
    _check_k(k)
    if len(relevant) == 0:
        return math.nan
    return sum(_first_hits(ranked, relevant, k)) / len(relevant)


def ndcg_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    """Binary NDCG@K = DCG@K / IDCG@K.

    DCG@K = sum over hit positions p (1-based, p <= k) of 1 / log2(p + 1);
    IDCG@K = the DCG of a perfect list = sum_{p=1}^{min(|relevant|, k)} 1 / log2(p + 1).
    """
    _check_k(k)
    if len(relevant) == 0:
        return math.nan
    dcg = 0.0
    for i, hit in enumerate(_first_hits(ranked, relevant, k)):
        if hit:
            dcg += _discount(i)
    idcg = 0.0
    for i in range(min(len(relevant), k)):
        idcg += _discount(i)
    return dcg / idcg


def graded_ndcg_at_k(
    ranked: Sequence,
    relevance: Mapping,
    k: int,
    gain: Literal["linear", "exponential"] = "linear",
) -> float:
    """Graded NDCG@K with ``relevance`` mapping item -> grade (e.g. a rating); grades <= 0 are irrelevant.

    gain(g) = g ("linear", Järvelin & Kekäläinen) or 2**g - 1 ("exponential", Burges et al.);
    DCG@K = sum over the first k positions p (1-based, first occurrence only) of gain / log2(p + 1);
    IDCG@K = the DCG of the grades sorted in decreasing order. ``nan`` when no grade is positive.
    With all grades equal to 1 this equals ``ndcg_at_k``.
    """
    _check_k(k)
    if gain not in ("linear", "exponential"):
        raise ValueError(f"gain must be 'linear' or 'exponential', got {gain!r}")

    def g(value: float) -> float:
        return float(value) if gain == "linear" else 2.0 ** float(value) - 1.0

    positive = {item: grade for item, grade in relevance.items() if grade > 0}
    if not positive:
        return math.nan
    top = list(ranked)[:k]
    dcg = 0.0
    for i, hit in enumerate(_first_hits(top, positive, k)):
        if hit:
            dcg += g(positive[top[i]]) * _discount(i)
    idcg = 0.0
    for i, grade in enumerate(sorted(positive.values(), reverse=True)[:k]):
        idcg += g(grade) * _discount(i)
    return dcg / idcg


def mrr_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    """MRR@K (reciprocal rank) = 1 / position of the first relevant item within the first k, else 0."""
    _check_k(k)
    if len(relevant) == 0:
        return math.nan
    for i, hit in enumerate(_first_hits(ranked, relevant, k)):
        if hit:
            return 1.0 / (i + 1)
    return 0.0


def hit_rate_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    """HitRate@K = 1 if any relevant item is among the first k positions, else 0."""
    _check_k(k)
    if len(relevant) == 0:
        return math.nan
    return 1.0 if any(_first_hits(ranked, relevant, k)) else 0.0


def map_at_k(ranked: Sequence, relevant: Collection, k: int) -> float:
    """AP@K (the per-user term of MAP@K) = (1 / min(|relevant|, k)) * sum over hit positions p <= k of
    Precision@p.

    The min(|relevant|, k) denominator makes a perfect list score 1 even when |relevant| > k.
    """
    _check_k(k)
    if len(relevant) == 0:
        return math.nan
    total = 0.0
    n_hits = 0
    for i, hit in enumerate(_first_hits(ranked, relevant, k)):
        if hit:
            n_hits += 1
            total += n_hits / (i + 1)
    return total / min(len(relevant), k)


# --------------------------------------------------------------------------------------------------------
# Vectorised versions over many users
# --------------------------------------------------------------------------------------------------------


def _first_occurrence(ranked: np.ndarray) -> np.ndarray:
    """(n, K) bool: True where the slot holds a real item (>= 0) seen for the first time in its row."""
    n, width = ranked.shape
    first = ranked >= 0
    if width > 1:
        order = np.argsort(ranked, axis=1, kind="stable")
        srt = np.take_along_axis(ranked, order, axis=1)
        dup_sorted = np.zeros_like(first)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]  # stable sort: the earliest copy comes first
        dup = np.zeros_like(first)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        first &= ~dup
    return first


def hit_matrix(
    ranked: np.ndarray,
    relevant: np.ndarray | Sequence[Collection[int]],
) -> tuple[np.ndarray, np.ndarray]:
    """Hits of a batch of rankings: returns ``(hits (n, K) bool, n_relevant (n,) int)``.

    ``ranked`` is an (n_users, K) int matrix of item indices (``-1`` = empty slot). ``relevant`` is either
    an (n_users,) int array of single targets (leave-one-out) or a sequence of per-user collections of
    item indices. A repeated item is a hit only at its first position (see the module docstring).
    """
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be a 2-d (n_users, k) array, got shape {ranked.shape}")
    n = ranked.shape[0]
    if isinstance(relevant, np.ndarray) and relevant.ndim == 1 and np.issubdtype(relevant.dtype, np.integer):
        if len(relevant) != n:
            raise ValueError(f"{len(relevant)} targets for {n} rankings")
        hits = (ranked == relevant[:, None]) & (relevant[:, None] >= 0)
        n_rel = (relevant >= 0).astype(np.int64)
    else:
        if len(relevant) != n:
            raise ValueError(f"{len(relevant)} relevant sets for {n} rankings")
        hits = np.zeros(ranked.shape, dtype=bool)
        n_rel = np.zeros(n, dtype=np.int64)
        for u, rel in enumerate(relevant):
            rel_arr = np.fromiter((int(x) for x in rel), dtype=np.int64, count=len(rel))
            rel_arr = np.unique(rel_arr)
            n_rel[u] = len(rel_arr)
            if len(rel_arr):
                hits[u] = np.isin(ranked[u], rel_arr)
    hits &= _first_occurrence(ranked)
    return hits, n_rel


def _prepare(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _check_k(k)
    hits = np.asarray(hits, dtype=bool)
    if hits.shape[1] < k:  # fewer slots than k: pad with empty (miss) slots
        hits = np.concatenate([hits, np.zeros((hits.shape[0], k - hits.shape[1]), dtype=bool)], axis=1)
    hits = hits[:, :k]
    n_relevant = np.asarray(n_relevant, dtype=np.int64)
    undefined = n_relevant == 0
    return hits, n_relevant, undefined


def _finish(values: np.ndarray, undefined: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64, copy=True)
    values[undefined] = np.nan
    return values


def precision_at_k_batch(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Vectorised ``precision_at_k`` from ``hit_matrix`` output; (n,) floats."""
    hits, n_rel, undefined = _prepare(hits, n_relevant, k)
    return _finish(hits.sum(axis=1) / k, undefined)


def recall_at_k_batch(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Vectorised ``recall_at_k``."""
    hits, n_rel, undefined = _prepare(hits, n_relevant, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _finish(hits.sum(axis=1) / n_rel, undefined)


def ndcg_at_k_batch(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Vectorised binary ``ndcg_at_k`` (sequential cumulative sums: same additions as the loop)."""
    hits, n_rel, undefined = _prepare(hits, n_relevant, k)
    disc = _discounts(k)
    dcg = np.cumsum(np.where(hits, disc[None, :], 0.0), axis=1)[:, -1]
    ideal = np.cumsum(disc)
    idcg = ideal[np.clip(np.minimum(n_rel, k) - 1, 0, k - 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return _finish(dcg / idcg, undefined)


def mrr_at_k_batch(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Vectorised ``mrr_at_k``."""
    hits, n_rel, undefined = _prepare(hits, n_relevant, k)
    any_hit = hits.any(axis=1)
    first = np.argmax(hits, axis=1)
    return _finish(np.where(any_hit, 1.0 / (first + 1), 0.0), undefined)


def hit_rate_at_k_batch(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Vectorised ``hit_rate_at_k``."""
    hits, n_rel, undefined = _prepare(hits, n_relevant, k)
    return _finish(hits.any(axis=1).astype(np.float64), undefined)


def map_at_k_batch(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Vectorised ``map_at_k`` (per-user AP@K)."""
    hits, n_rel, undefined = _prepare(hits, n_relevant, k)
    n_hits_so_far = np.cumsum(hits, axis=1)
    prec = n_hits_so_far / np.arange(1, k + 1)[None, :]
    total = np.cumsum(np.where(hits, prec, 0.0), axis=1)[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return _finish(total / np.minimum(n_rel, k), undefined)


_BATCH = {
    "precision": precision_at_k_batch,
    "recall": recall_at_k_batch,
    "ndcg": ndcg_at_k_batch,
    "mrr": mrr_at_k_batch,
    "hit_rate": hit_rate_at_k_batch,
    "map": map_at_k_batch,
}


def accuracy_metrics_batch(
    hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int], metrics: Sequence[str] = ACCURACY_METRICS
) -> dict[str, np.ndarray]:
    """Every metric at every cutoff, keyed ``"<metric>@<k>"``, each an (n,) array of per-user values."""
    out: dict[str, np.ndarray] = {}
    for name in metrics:
        if name not in _BATCH:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(_BATCH)}")
        for k in ks:
            out[f"{name}@{k}"] = _BATCH[name](hits, n_relevant, k)
    return out


# --------------------------------------------------------------------------------------------------------
# Beyond accuracy
# --------------------------------------------------------------------------------------------------------


def catalog_coverage(ranked: np.ndarray, n_items: int, k: int) -> float:
    """Catalog coverage@K = |distinct items shown in any user's first k positions| / n_items.

    A recommender that shows everyone the same ten bestsellers covers 10 / n_items of the catalog.
    """
    _check_k(k)
    if n_items < 1:
        raise ValueError("n_items must be positive")
    top = np.asarray(ranked)[:, :k]
    return float(len(np.unique(top[top >= 0])) / n_items)


def unit_rows(vectors: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Each row scaled to unit L2 norm (all-zero rows stay zero), so dot products are cosines."""
    vecs = np.asarray(vectors, dtype=dtype)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.where(norms > 0, norms, 1.0)


def intra_list_diversity(ranked: np.ndarray, item_vectors: np.ndarray, k: int) -> np.ndarray:
    """Intra-list diversity@K per user = mean over distinct pairs (i, j) in the user's first k items of the
    cosine distance 1 - cos(v_i, v_j), from ``item_vectors`` (n_items, d) aligned with the item indices.

    Empty slots and repeats are ignored; a list with fewer than two distinct items scores ``nan``.
    """
    _check_k(k)
    unit = unit_rows(item_vectors)
    top = np.asarray(ranked)[:, :k]
    valid = _first_occurrence(top)
    out = np.full(top.shape[0], np.nan)
    for u in range(top.shape[0]):
        items = top[u][valid[u]]
        m = len(items)
        if m < 2:
            continue
        sims = unit[items] @ unit[items].T
        pair_sum = (sims.sum() - np.trace(sims)) / 2.0
        out[u] = 1.0 - pair_sum / (m * (m - 1) / 2.0)
    return out


def novelty(ranked: np.ndarray, item_user_counts: np.ndarray, n_users: int, k: int) -> np.ndarray:
    """Novelty@K per user = mean over the first k distinct items of the self-information -log2 p(i),
    with p(i) = (users who interacted with i in training + 1) / (n_users + 1).

    Popular items carry little information (p near 1, novelty near 0); the +1 smoothing keeps never-seen
    (cold) items finite at log2(n_users + 1) bits. Empty lists score ``nan``.
    """
    _check_k(k)
    counts = np.asarray(item_user_counts, dtype=np.float64)
    info = -np.log2((counts + 1.0) / (n_users + 1.0))
    top = np.asarray(ranked)[:, :k]
    valid = _first_occurrence(top)
    vals = np.where(valid, info[np.where(top >= 0, top, 0)], 0.0)
    n_valid = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_valid > 0, vals.sum(axis=1) / n_valid, np.nan)

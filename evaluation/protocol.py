"""The `Recommender` protocol every compared model implements, and the runner that scores it on a split.

A model sees training `Interactions` in ``fit`` and, at request time, nothing but `Histories` (plus an
optional candidate set). The runner asks for the top max(ks) items per case over the FULL candidate set,
with items already in the history excluded by default, and computes every metric per case, so that two
models on the same split can be compared user by user (``evaluation.significance``).
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from .data import EvalSet, Histories, Interactions, Split, as_histories
from .metrics import (
    ACCURACY_METRICS,
    accuracy_metrics_batch,
    catalog_coverage,
    hit_matrix,
    intra_list_diversity,
    novelty,
)

__all__ = [
    "Recommendations",
    "Recommender",
    "top_k",
    "tie_order",
    "EvalResult",
    "evaluate",
    "evaluate_cases",
    "popularity_segments",
    "item_label_segments",
]


class Recommendations(NamedTuple):
    """Top-k lists: ``items`` (n, k) int64 item indices, best first, -1 = empty slot (fewer than k
    candidates left); ``scores`` (n, k) float, -inf in empty slots."""

    items: np.ndarray
    scores: np.ndarray


@runtime_checkable
class Recommender(Protocol):
    """What the runner needs from a model.

    ``fit`` receives the split's training interactions (and its validation cases, for early stopping)
    and returns the fitted model. ``recommend`` returns, for each history row, the k best items among
    ``candidates`` (default: every item of the vocabulary), never an item of that row's history when
    ``exclude_seen`` is true. Implementations should use `top_k` so ties and exclusions behave the same
    for every model.
    """

    name: str

    def fit(self, train: Interactions, valid: EvalSet | None = None) -> "Recommender": ...

    def recommend(
        self,
        histories: Histories | Sequence[Sequence[int]],
        k: int,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
    ) -> Recommendations: ...


@lru_cache(maxsize=16)
def tie_order(n_items: int, seed: int = 0) -> np.ndarray:
    """A fixed, seeded random order of the item indices, used to break score ties.

    Breaking ties by item index is NOT neutral: vocabularies are often ordered by id, and ids track
    release or insertion time, so "lowest index first" quietly favours old (or new) items. Measured on
    ML-100k's cold-start split: an item-kNN whose cold-item scores all tie at 0 reached NDCG@10 0.44
    with index order, far above a content model, purely from the id order.
    """
    order = np.random.default_rng(seed).permutation(n_items)
    order.flags.writeable = False
    return order


def top_k(
    scores: np.ndarray,
    k: int,
    *,
    histories: Histories | Sequence[Sequence[int]] | None = None,
    candidates: np.ndarray | None = None,
    tie_seed: int = 0,
) -> Recommendations:
    """Top-k items per row of a dense (n, n_items) score matrix (modified in place).

    Items of ``histories`` (row-aligned) get -inf; with ``candidates`` only those columns compete. NaN
    scores count as -inf. Equal scores are ordered by `tie_order` (a seeded random item order, the same
    for every model), so results are deterministic and no model profits from how ids were assigned.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (n, n_items), got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    n, n_items = scores.shape
    np.nan_to_num(scores, copy=False, nan=-np.inf)
    if histories is not None:
        h = as_histories(histories)
        if len(h) != n:
            raise ValueError(f"{len(h)} histories for {n} score rows")
        if len(h.items):
            scores[h.row_of_event(), h.items] = -np.inf
    order = tie_order(n_items, tie_seed)
    if candidates is None:
        columns = order
    else:
        columns = np.unique(np.asarray(candidates, dtype=np.int64))
        if len(columns) and (columns[0] < 0 or columns[-1] >= n_items):
            raise ValueError("candidate item index out of range")
        rank = np.empty(n_items, dtype=np.int64)
        rank[order] = np.arange(n_items)
        columns = columns[np.argsort(rank[columns])]
    scores = scores[:, columns]  # columns in tie order: "lower column" now means "earlier in tie order"
    width = scores.shape[1]
    kk = min(k, width)
    if kk == 0:
        return Recommendations(np.full((n, k), -1, np.int64), np.full((n, k), -np.inf))
    # k-th largest value per row; everything above it is in, ties at it are filled in column order.
    kth = -np.partition(-scores, kk - 1, axis=1)[:, kk - 1 : kk]
    above = scores > kth
    at = scores == kth
    need = kk - above.sum(axis=1, keepdims=True)
    take = above | (at & (np.cumsum(at, axis=1) <= need))
    rows, cols = np.nonzero(take)  # row-major: kk entries per row, ascending column
    cols = cols.reshape(n, kk)
    vals = scores[rows, cols.ravel()].reshape(n, kk)
    srt = np.lexsort((cols, -vals), axis=1)
    cols = np.take_along_axis(cols, srt, axis=1)
    vals = np.take_along_axis(vals, srt, axis=1)
    items = np.where(np.isneginf(vals), -1, columns[cols]).astype(np.int64)
    if kk < k:
        items = np.concatenate([items, np.full((n, k - kk), -1, np.int64)], axis=1)
        vals = np.concatenate([vals, np.full((n, k - kk), -np.inf)], axis=1)
    return Recommendations(items, vals.astype(np.float64))


# --------------------------------------------------------------------------------------------------------
# Segments
# --------------------------------------------------------------------------------------------------------


def popularity_segments(train: Interactions, eval_set: EvalSet) -> np.ndarray:
    """Label each case by its (first) target item's training popularity: "cold" (no training event),
    "head" (top 10% of items by training events), "torso" (next 40%), "tail" (the rest, still warm)."""
    counts = train.item_counts()
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    n = len(counts)
    label = np.where(rank < 0.1 * n, "head", np.where(rank < 0.5 * n, "torso", "tail")).astype(object)
    label[counts == 0] = "cold"
    return label[eval_set.first_targets()]


def item_label_segments(item_labels: np.ndarray, eval_set: EvalSet) -> np.ndarray:
    """Label each case by an attribute of its (first) target item (``item_labels`` aligned with the
    split's item vocabulary: language, market, category, ...)."""
    labels = np.asarray(item_labels, dtype=object)
    return labels[eval_set.first_targets()]


# --------------------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Per-case metrics of one model on one EvalSet, kept per case so comparisons can be paired.

    ``per_case["ndcg@10"]`` is an (n_cases,) array aligned with ``users`` (the pairing key);
    ``beyond`` holds catalog coverage@k, mean novelty@k and (when item vectors were given) intra-list
    diversity@k; ``segments`` maps a segment name to per-case labels.
    """

    model: str
    protocol: str
    ks: tuple[int, ...]
    users: np.ndarray
    per_case: dict[str, np.ndarray]
    recommendations: np.ndarray
    beyond: dict[str, float] = field(default_factory=dict)
    segments: dict[str, np.ndarray] = field(default_factory=dict)
    fit_seconds: float | None = None
    recommend_seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def n_cases(self) -> int:
        return len(self.users)

    def mean(self, metric: str) -> float:
        return float(np.nanmean(self.per_case[metric])) if self.n_cases else float("nan")

    def summary(self) -> dict[str, float]:
        out = {m: self.mean(m) for m in self.per_case}
        out.update(self.beyond)
        return out

    def segment_means(self, metric: str, segment: str) -> dict[str, tuple[float, int]]:
        """{label: (mean of ``metric`` over the cases with that label, number of cases)}."""
        labels = self.segments[segment]
        vals = self.per_case[metric]
        out = {}
        for lab in sorted({str(x) for x in labels}):
            mask = np.array([str(x) == lab for x in labels])
            out[lab] = (float(np.nanmean(vals[mask])), int(mask.sum()))
        return out


def _batch_rows(n_items: int, batch_size: int | None) -> int:
    """Cases per `recommend` call: ``batch_size`` if given, else as many as keep the score matrix small."""
    if batch_size:
        return batch_size
    return max(64, min(4096, int(2e7 // max(n_items, 1))))  # ~160 MB of float64 scores per batch


def evaluate_cases(
    model: Recommender,
    eval_set: EvalSet,
    n_items: int,
    ks: Sequence[int] = (5, 10, 20),
    *,
    exclude_seen: bool = True,
    metrics: Sequence[str] = ACCURACY_METRICS,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """Ask ``model`` for top-max(ks) lists on every case and score them.

    Returns (per-case metrics, recommendations (n, max_k), seconds spent in ``recommend``). Cases are
    grouped by candidate set; within a group, they are sent in batches.
    """
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    kmax = ks[-1]
    n = len(eval_set)
    recs = np.full((n, kmax), -1, dtype=np.int64)
    if eval_set.candidates is None:
        groups = [(None, np.arange(n))]
    else:
        groups = [(eval_set.candidates[g], np.flatnonzero(eval_set.candidate_group == g))
                  for g in range(len(eval_set.candidates))]
    bs = _batch_rows(n_items, batch_size)
    seconds = 0.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"recommend {getattr(model, 'name', type(model).__name__)}", unit="case", leave=False)
    for cands, rows in groups:
        for start in range(0, len(rows), bs):
            chunk = rows[start : start + bs]
            t0 = time.perf_counter()
            out = model.recommend(eval_set.histories.subset(chunk), kmax, exclude_seen=exclude_seen, candidates=cands)
            seconds += time.perf_counter() - t0
            items = np.asarray(out[0] if isinstance(out, tuple) else out)
            if items.shape != (len(chunk), kmax):
                raise ValueError(f"{type(model).__name__}.recommend returned shape {items.shape}, "
                                 f"expected {(len(chunk), kmax)}")
            recs[chunk] = items
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    single = eval_set.single_targets()
    relevant = single if single is not None else eval_set.relevant_sets()
    hits, n_rel = hit_matrix(recs, relevant)
    return accuracy_metrics_batch(hits, n_rel, ks, metrics), recs, seconds


def evaluate(
    model: Recommender,
    split: Split,
    ks: Sequence[int] = (5, 10, 20),
    *,
    on: str = "test",
    fit: bool = True,
    exclude_seen: bool = True,
    metrics: Sequence[str] = ACCURACY_METRICS,
    item_vectors: np.ndarray | None = None,
    segments: Mapping[str, np.ndarray] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Fit ``model`` on ``split.train`` (unless ``fit=False``) and score it on ``split.test`` (or
    ``on="valid"``) with full ranking.

    Adds beyond-accuracy numbers (catalog coverage, novelty; intra-list diversity from ``item_vectors``
    aligned with ``split.item_ids``) and segment labels: "target_popularity" always, "target_market" when
    the cases have one, plus any given in ``segments`` (name -> per-case labels).
    """
    eval_set = split.test if on == "test" else split.valid if on == "valid" else None
    if eval_set is None:
        raise ValueError(f"split has no {on!r} cases" if on in ("test", "valid") else "on must be 'test' or 'valid'")
    fit_seconds = None
    if fit:
        t0 = time.perf_counter()
        model = model.fit(split.train, split.valid) or model
        fit_seconds = time.perf_counter() - t0
    per_case, recs, rec_seconds = evaluate_cases(
        model, eval_set, split.n_items, ks, exclude_seen=exclude_seen, metrics=metrics,
        batch_size=batch_size, progress=progress,
    )
    ks = tuple(sorted({int(k) for k in ks}))
    beyond: dict[str, float] = {}
    user_counts = split.train.item_user_counts()
    n_train_users = int(len(np.unique(split.train.user))) or 1
    for k in ks:
        beyond[f"coverage@{k}"] = catalog_coverage(recs, split.n_items, k)
        beyond[f"novelty@{k}"] = float(np.nanmean(novelty(recs, user_counts, n_train_users, k)))
        if item_vectors is not None:
            if len(item_vectors) != split.n_items:
                raise ValueError(f"item_vectors has {len(item_vectors)} rows, the split has {split.n_items} items")
            beyond[f"diversity@{k}"] = float(np.nanmean(intra_list_diversity(recs, item_vectors, k)))
    segs = {"target_popularity": popularity_segments(split.train, eval_set)}
    if eval_set.target_market is not None:
        segs["target_market"] = np.asarray(eval_set.target_market, dtype=object)
    for name, labels in (segments or {}).items():
        labels = np.asarray(labels, dtype=object)
        if len(labels) != len(eval_set):
            raise ValueError(f"segment {name!r} has {len(labels)} labels for {len(eval_set)} cases")
        segs[name] = labels
    return EvalResult(
        model=getattr(model, "name", type(model).__name__),
        protocol=split.protocol,
        ks=ks,
        users=eval_set.users.copy(),
        per_case=per_case,
        recommendations=recs,
        beyond=beyond,
        segments=segs,
        fit_seconds=fit_seconds,
        recommend_seconds=rec_seconds,
        info={"on": on, "exclude_seen": exclude_seen, "n_items": split.n_items},
    )

"""The integer-coded containers every split protocol produces and every model consumes.

Item and user ids become indices into a split's vocabularies (``Split.item_ids`` / ``Split.user_ids``) so
that models work on arrays, not strings. Ragged data (one history or target list per row) is stored in
CSR layout: an ``indptr`` of row offsets plus flat per-event columns, which keeps batching and subsetting
vectorised. Nothing here reads an events table (`evaluation.events`) or decides what is held out
(`evaluation.splits`).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Histories", "Interactions", "EvalSet", "Split", "as_histories"]


def _ragged_take(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the values of ``rows`` in a CSR layout, and the new indptr."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    new_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_indptr[1:])
    pos = np.repeat(starts - new_indptr[:-1], lengths) + np.arange(new_indptr[-1])
    return pos, new_indptr


@dataclass(frozen=True)
class Histories:
    """What a recommender knows at request time: one time-ordered event history per row (CSR layout).

    Behaves as a sequence of int arrays (``h[i]`` = item indices of row i, oldest first), so simple models
    need nothing else; richer models read the aligned per-event columns.

    Fields:
        indptr:     (n + 1,) int64; row i's events are positions ``indptr[i]:indptr[i+1]``.
        items:      (nnz,) int64 item indices into the split's ``item_ids``.
        timestamps: (nnz,) int64 unix seconds, or None.
        markets:    (nnz,) object (str or None) market of each event, or None.
        kinds:      (nnz,) object event kind (view/click/cart/purchase/rating), or None.
        users:      (n,) int64 user index into the split's ``user_ids`` (-1 for an ad-hoc history), or None.
        context_market: (n,) object, the market the recommendation is shown in (known at request time:
                    the storefront), or None. Per-market popularity uses it.
    """

    indptr: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None = None
    markets: np.ndarray | None = None
    kinds: np.ndarray | None = None
    users: np.ndarray | None = None
    context_market: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.items[self.indptr[i] : self.indptr[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    @property
    def lengths(self) -> np.ndarray:
        """(n,) number of events per row."""
        return np.diff(self.indptr)

    def row_of_event(self) -> np.ndarray:
        """(nnz,) row index of each event (for vectorised scatter into a (n, n_items) matrix)."""
        return np.repeat(np.arange(len(self)), self.lengths)

    def position_from_end(self) -> np.ndarray:
        """(nnz,) how many events of its row follow each event: 0 = the most recent (history windows, decay)."""
        return np.repeat(self.indptr[1:] - 1, self.lengths) - np.arange(len(self.items))

    def subset(self, rows: np.ndarray | Sequence[int]) -> "Histories":
        """The listed rows, in the given order, with every per-event column (how the runner batches)."""
        rows = np.asarray(rows, dtype=np.int64)
        pos, indptr = _ragged_take(self.indptr, rows)

        def take(col: np.ndarray | None) -> np.ndarray | None:
            return None if col is None else col[pos]

        return Histories(
            indptr=indptr,
            items=self.items[pos],
            timestamps=take(self.timestamps),
            markets=take(self.markets),
            kinds=take(self.kinds),
            users=None if self.users is None else self.users[rows],
            context_market=None if self.context_market is None else self.context_market[rows],
        )

    @classmethod
    def from_lists(
        cls,
        rows: Sequence[Sequence[int]],
        *,
        timestamps: Sequence[Sequence[int]] | None = None,
        context_market: Sequence[str | None] | None = None,
    ) -> "Histories":
        """Ad-hoc histories from lists of item indices (oldest first)."""
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if len(rows) else np.zeros(0, np.int64)
        ts = None
        if timestamps is not None:
            ts = np.concatenate([np.asarray(t, dtype=np.int64) for t in timestamps]) if len(rows) else None
        ctx = None if context_market is None else np.asarray(list(context_market), dtype=object)
        return cls(indptr=indptr, items=items.astype(np.int64), timestamps=ts, context_market=ctx,
                   users=np.full(len(rows), -1, dtype=np.int64))


def as_histories(histories: Histories | Sequence[Sequence[int]]) -> Histories:
    """Accept a `Histories` or any sequence of item-index sequences, so `recommend` takes plain lists too."""
    if isinstance(histories, Histories):
        return histories
    return Histories.from_lists(list(histories))


@dataclass(frozen=True)
class Interactions:
    """Training events as integer codes, sorted by (user, time, tie-break); each user's events contiguous.

    Fields:
        user, item: (n,) int64 indices into ``user_ids`` / ``item_ids``.
        timestamp:  (n,) int64 unix seconds.
        market, kind: (n,) object arrays or None; value: (n,) float64 or None.
        indptr:     (n_users + 1,) int64; user u's events are rows ``indptr[u]:indptr[u+1]``.
        user_ids, item_ids: the split's vocabularies (shared objects, not copies).
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    indptr: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    market: np.ndarray | None = None
    kind: np.ndarray | None = None
    value: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.item)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def sequences(self, users: np.ndarray | None = None) -> Histories:
        """Each user's training events as one history row (all users, or those listed)."""
        full = Histories(
            indptr=self.indptr,
            items=self.item,
            timestamps=self.timestamp,
            markets=self.market,
            kinds=self.kind,
            users=np.arange(self.n_users, dtype=np.int64),
        )
        return full if users is None else full.subset(users)

    def item_counts(self) -> np.ndarray:
        """(n_items,) number of training events per item."""
        return np.bincount(self.item, minlength=self.n_items)

    def item_user_counts(self) -> np.ndarray:
        """(n_items,) number of distinct training users per item (novelty, popularity segments)."""
        pairs = np.unique(self.user * np.int64(self.n_items) + self.item)
        return np.bincount(pairs % self.n_items, minlength=self.n_items)


@dataclass(frozen=True)
class EvalSet:
    """Requests to score: one history per case plus the items that count as relevant for it.

    Fields:
        histories:    `Histories`, one row per case (``histories.users`` says whose).
        target_indptr, target_items: CSR of the relevant item indices of each case (leave-one-out: one).
        target_time:  (n,) int64 time of the (first) target event.
        target_market:(n,) object market of the (first) target item, or None.
        candidates:   None = rank every item; else a tuple of int arrays (candidate item sets) and
        candidate_group: (n,) int64 index into ``candidates`` for each case.
    """

    histories: Histories
    target_indptr: np.ndarray
    target_items: np.ndarray
    target_time: np.ndarray
    target_market: np.ndarray | None = None
    candidates: tuple[np.ndarray, ...] | None = None
    candidate_group: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.histories)

    @property
    def users(self) -> np.ndarray:
        assert self.histories.users is not None
        return self.histories.users

    def targets(self, i: int) -> np.ndarray:
        """Relevant item indices of case ``i``."""
        return self.target_items[self.target_indptr[i] : self.target_indptr[i + 1]]

    def relevant_sets(self) -> list[np.ndarray]:
        """Relevant item indices of every case (the metrics' input when cases have several targets)."""
        return [self.targets(i) for i in range(len(self))]

    def single_targets(self) -> np.ndarray | None:
        """(n,) target item per case when every case has exactly one target, else None."""
        if np.all(np.diff(self.target_indptr) == 1):
            return self.target_items.copy()
        return None

    def first_targets(self) -> np.ndarray:
        """(n,) the first (earliest) target item of each case (segments: warm/cold, market, language)."""
        return self.target_items[self.target_indptr[:-1]]

    def subset(self, rows: np.ndarray | Sequence[int]) -> "EvalSet":
        """The listed cases, in the given order (the candidate sets are shared, not copied)."""
        rows = np.asarray(rows, dtype=np.int64)
        pos, tindptr = _ragged_take(self.target_indptr, rows)
        return EvalSet(
            histories=self.histories.subset(rows),
            target_indptr=tindptr,
            target_items=self.target_items[pos],
            target_time=self.target_time[rows],
            target_market=None if self.target_market is None else self.target_market[rows],
            candidates=self.candidates,
            candidate_group=None if self.candidate_group is None else self.candidate_group[rows],
        )


@dataclass(frozen=True)
class Split:
    """One evaluation protocol applied to one event log: the object every compared model receives.

    Fields:
        protocol:  "loo" | "temporal" | "cold_start" | "cross_market".
        item_ids:  (n_items,) object array; item index i <-> ``item_ids[i]`` (the ranking universe).
        user_ids:  (n_users,) object array; user index u <-> ``user_ids[u]``.
        train:     `Interactions` a model may fit on (nothing at or after a test target's time for that
                   user; for temporal protocols nothing at or after the global cut).
        valid:     `EvalSet` for early stopping / tuning, or None.
        test:      `EvalSet` to report.
        item_market: (n_items,) object market of each item, or None.
        params:    the protocol's arguments (seed, cut times, ...), written into reports.
    """

    protocol: str
    item_ids: np.ndarray
    user_ids: np.ndarray
    train: Interactions
    valid: EvalSet | None
    test: EvalSet
    item_market: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def describe(self) -> dict[str, Any]:
        """Sizes and protocol parameters, as written into reports (a result is meaningless without them)."""
        out = {
            "protocol": self.protocol,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_train_events": len(self.train),
            "n_valid_cases": 0 if self.valid is None else len(self.valid),
            "n_test_cases": len(self.test),
            "mean_test_history": round(float(self.test.histories.lengths.mean()), 2) if len(self.test) else 0.0,
            "mean_test_targets": round(float(np.diff(self.test.target_indptr).mean()), 3) if len(self.test) else 0.0,
        }
        out.update({f"param.{k}": v for k, v in self.params.items()})
        return out


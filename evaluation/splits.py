"""Split protocols: turn an event log into ONE integer-coded `Split` that every compared model receives.

Published recsys numbers differ several-fold with the protocol, so the protocol is part of the result:

* ``leave_one_out``   - per user, last event = test target, second to last = validation target, rest train.
* ``temporal_split``  - one global cut t: train strictly before t, test targets at or after t, histories
                        only from before t (no leakage; ``tests/test_evaluation_splits.py`` proves it).
* ``cold_start_split``- items first seen at or after t are cold; targets are cold items only; the model
                        never sees an event on them in training.
* ``cross_market_split`` - history in the user's home market A, target an item listed in another market B.

All protocols rank every candidate item (no sampled negatives; candidates default to the whole
vocabulary). Every random choice (user sampling, tie-breaking) takes a ``seed``.

Inputs are columns of the events table (``user_id``, ``item_id``, ``timestamp``, optional ``market``,
``kind``, ``value``) as a ``datasets.Dataset``, a pandas DataFrame or a dict of arrays. ``items`` fixes the
item vocabulary (e.g. the catalog's ``item_id`` column, so that a content-vector matrix in catalog order
lines up with item indices, and items without events are still rankable); without it the vocabulary is
the sorted distinct item ids of the events.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "Histories",
    "Interactions",
    "EvalSet",
    "Split",
    "leave_one_out",
    "temporal_split",
    "cold_start_split",
    "cross_market_split",
    "event_columns",
]


# --------------------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------------------


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

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def row_of_event(self) -> np.ndarray:
        """(nnz,) row index of each event (for vectorised scatter into a (n, n_items) matrix)."""
        return np.repeat(np.arange(len(self)), self.lengths)

    def position_from_end(self) -> np.ndarray:
        """(nnz,) how many events of its row follow each event: 0 = the most recent (history windows, decay)."""
        return np.repeat(self.indptr[1:] - 1, self.lengths) - np.arange(len(self.items))

    def subset(self, rows: np.ndarray | Sequence[int]) -> "Histories":
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


def as_histories(histories: "Histories | Sequence[Sequence[int]]") -> Histories:
    """Accept a `Histories` or any sequence of item-index sequences."""
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
        return self.target_items[self.target_indptr[i] : self.target_indptr[i + 1]]

    def relevant_sets(self) -> list[np.ndarray]:
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

    def item_index(self) -> dict[str, int]:
        return {str(x): i for i, x in enumerate(self.item_ids)}

    def describe(self) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------------------
# Reading and coding events
# --------------------------------------------------------------------------------------------------------

_REQUIRED = ("user_id", "item_id", "timestamp")
_OPTIONAL = ("market", "kind", "value")


def event_columns(events: Any, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Columns of an events table as numpy arrays (strings as object arrays).

    Accepts a ``datasets.Dataset`` (read through Arrow, respecting any selection), a pandas DataFrame or a
    mapping of column name -> array-like. Missing optional columns are simply absent from the result.
    """
    wanted = list(columns) if columns is not None else [*_REQUIRED, *_OPTIONAL]
    if hasattr(events, "with_format") and hasattr(events, "column_names"):  # datasets.Dataset
        table = events.with_format("arrow")[:]
        names = set(table.column_names)
        return {c: table.column(c).to_numpy(zero_copy_only=False) for c in wanted if c in names}
    if hasattr(events, "columns") and hasattr(events, "to_numpy"):  # pandas DataFrame
        return {c: events[c].to_numpy() for c in wanted if c in events.columns}
    if isinstance(events, Mapping):
        return {c: np.asarray(events[c]) for c in wanted if c in events}
    raise TypeError(
        f"events must be a datasets.Dataset, a pandas DataFrame or a dict of arrays, got {type(events).__name__}"
    )


def _factorize_sorted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, sorted distinct values): codes index the sorted vocabulary (deterministic, order-free)."""
    import pandas as pd

    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def _all_null(col: np.ndarray) -> bool:
    import pandas as pd

    return col.dtype == object and bool(pd.isna(col).all())


@dataclass
class _Coded:
    """Events coded and sorted by (user, time, tie-break); an internal stage shared by the protocols."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    market: np.ndarray | None
    kind: np.ndarray | None
    value: np.ndarray | None
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_market: np.ndarray | None
    indptr: np.ndarray  # per user

    def interactions(self, rows: np.ndarray) -> Interactions:
        """Interactions from a subset of (already sorted) rows."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        user = self.user[rows]
        indptr = np.zeros(len(self.user_ids) + 1, dtype=np.int64)
        np.cumsum(np.bincount(user, minlength=len(self.user_ids)), out=indptr[1:])
        return Interactions(
            user=user,
            item=self.item[rows],
            timestamp=self.ts[rows],
            indptr=indptr,
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            market=None if self.market is None else self.market[rows],
            kind=None if self.kind is None else self.kind[rows],
            value=None if self.value is None else self.value[rows],
        )

    def histories(self, row_lists: list[np.ndarray], users: np.ndarray, context_market=None) -> Histories:
        """Histories whose row i holds the sorted event rows ``row_lists[i]`` of user ``users[i]``."""
        lengths = np.array([len(r) for r in row_lists], dtype=np.int64)
        indptr = np.zeros(len(row_lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        rows = np.concatenate(row_lists).astype(np.int64) if row_lists else np.zeros(0, np.int64)
        return Histories(
            indptr=indptr,
            items=self.item[rows],
            timestamps=self.ts[rows],
            markets=None if self.market is None else self.market[rows],
            kinds=None if self.kind is None else self.kind[rows],
            users=np.asarray(users, dtype=np.int64),
            context_market=context_market,
        )


def _item_vocabulary(items: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(item ids, item markets or None) from a list of ids or an items table with item_id [+ market]."""
    if hasattr(items, "column_names") or hasattr(items, "columns") or isinstance(items, Mapping):
        cols = event_columns(items, ["item_id", "market"])
        if "item_id" not in cols:
            raise ValueError("the items table has no item_id column")
        ids = np.asarray(cols["item_id"], dtype=object)
        market = cols.get("market")
        market = None if market is None or _all_null(np.asarray(market, dtype=object)) else np.asarray(market, dtype=object)
    else:
        ids = np.asarray(list(items), dtype=object)
        market = None
    import pandas as pd

    if pd.Index(ids).has_duplicates:
        dup = pd.Index(ids)[pd.Index(ids).duplicated()][:3].tolist()
        raise ValueError(f"the item vocabulary has duplicate ids, e.g. {dup}")
    return ids, market


def _code_events(
    events: Any,
    *,
    items: Any = None,
    item_market: Mapping[str, str] | None = None,
    tie_break: Literal["stable", "random"] = "stable",
    seed: int = 0,
    max_users: int | None = None,
) -> _Coded:
    import pandas as pd

    cols = event_columns(events)
    missing = [c for c in _REQUIRED if c not in cols]
    if missing:
        raise ValueError(f"events lack required column(s) {missing}; need {list(_REQUIRED)}")
    n = len(cols["user_id"])
    if n == 0:
        raise ValueError("no events")
    users_raw = np.asarray(cols["user_id"], dtype=object)
    items_raw = np.asarray(cols["item_id"], dtype=object)
    ts = np.asarray(cols["timestamp"])
    if pd.isna(users_raw).any() or pd.isna(items_raw).any():
        raise ValueError("user_id and item_id must not be null")
    if ts.dtype == object or not np.issubdtype(ts.dtype, np.number) or pd.isna(ts).any():
        raise ValueError("timestamp must be a non-null numeric column (unix seconds)")
    ts = ts.astype(np.int64)
    keep = np.ones(n, dtype=bool)

    if max_users is not None:
        distinct = np.unique(users_raw.astype(str))
        if max_users < len(distinct):
            rng = np.random.default_rng(seed)
            chosen = set(rng.choice(distinct, size=max_users, replace=False).tolist())
            keep = np.fromiter((u in chosen for u in users_raw.astype(str)), dtype=bool, count=n)

    # Item vocabulary.
    vocab_market = None
    if items is not None:
        item_ids, vocab_market = _item_vocabulary(items)
        item = pd.Index(item_ids).get_indexer(items_raw)
        unknown = item < 0
        if unknown.any():
            examples = pd.unique(items_raw[unknown])[:3].tolist()
            raise ValueError(
                f"{int(unknown.sum())} events reference item ids missing from the item vocabulary, e.g. {examples}"
            )
        item = item.astype(np.int64)
    else:
        item, item_ids = _factorize_sorted(items_raw[keep])
        full = np.full(n, -1, dtype=np.int64)
        full[keep] = item
        item = full
    if item_market is not None:
        vocab_market = np.array([item_market.get(str(x)) for x in item_ids], dtype=object)

    users_kept = users_raw[keep]
    user_code, user_ids = _factorize_sorted(users_kept)
    item = item[keep]
    ts = ts[keep]
    opt = {c: np.asarray(cols[c])[keep] for c in _OPTIONAL if c in cols}

    if tie_break == "stable":
        tie = np.arange(len(item))
    elif tie_break == "random":
        tie = np.random.default_rng(seed).permutation(len(item))
    else:
        raise ValueError(f"tie_break must be 'stable' or 'random', got {tie_break!r}")
    order = np.lexsort((tie, ts, user_code))

    def col(name: str, dtype) -> np.ndarray | None:
        if name not in opt:
            return None
        c = np.asarray(opt[name], dtype=dtype)[order]
        return None if dtype is object and _all_null(c) else c

    market = col("market", object)
    if vocab_market is not None:  # fill events without a market from the item's listing market
        item_mk = vocab_market[item[order]]
        market = item_mk if market is None else np.where(pd.isna(market), item_mk, market)
    value = None
    if "value" in opt:
        value = np.asarray(pd.to_numeric(pd.Series(opt["value"]), errors="coerce"), dtype=np.float64)[order]
    user_sorted = user_code[order]
    indptr = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_sorted, minlength=len(user_ids)), out=indptr[1:])
    return _Coded(
        user=user_sorted,
        item=item[order],
        ts=ts[order],
        market=market,
        kind=col("kind", object),
        value=value,
        user_ids=user_ids,
        item_ids=item_ids,
        item_market=vocab_market,
        indptr=indptr,
    )


def _csr(lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=indptr[1:])
    values = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64)
    return indptr, values


def _eval_set(
    coded: _Coded,
    users: list[int],
    history_rows: list[np.ndarray],
    target_rows: list[np.ndarray],
    *,
    dedupe_targets: bool = True,
    context_market: np.ndarray | None = None,
) -> EvalSet:
    """Build an EvalSet; targets are the items of ``target_rows`` (distinct, first-occurrence order)."""
    target_lists = []
    for rows in target_rows:
        its = coded.item[rows]
        if dedupe_targets:
            _, first = np.unique(its, return_index=True)
            its = its[np.sort(first)]
        target_lists.append(its)
    tindptr, titems = _csr(target_lists)
    first_rows = np.array([r[0] for r in target_rows], dtype=np.int64)
    return EvalSet(
        histories=coded.histories(history_rows, np.asarray(users, dtype=np.int64), context_market),
        target_indptr=tindptr,
        target_items=titems,
        target_time=coded.ts[first_rows] if len(first_rows) else np.zeros(0, np.int64),
        target_market=None if coded.market is None else coded.market[first_rows],
    )


# --------------------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------------------


def leave_one_out(
    events: Any,
    *,
    items: Any = None,
    item_market: Mapping[str, str] | None = None,
    min_events: int = 3,
    tie_break: Literal["stable", "random"] = "stable",
    seed: int = 0,
    max_users: int | None = None,
) -> Split:
    """Leave-one-out by time: per user, the last event is the test target, the one before it the
    validation target, the rest is training data (the SASRec / BERT4Rec protocol).

    Test histories are all of the user's events but the last (so they include the validation event);
    validation histories all but the last two. Users with fewer than ``min_events`` (>= 3) events
    contribute training events only. Same-second events keep input order (``tie_break="stable"``) or a
    seeded random order. ``max_users`` keeps a seeded random sample of users (all their events).
    Note: like every leave-one-out protocol, other users' later events stay in training (global time is
    not respected); use ``temporal_split`` when that matters.
    """
    if min_events < 3:
        raise ValueError("min_events must be >= 3 (train, validation and test events)")
    coded = _code_events(events, items=items, item_market=item_market, tie_break=tie_break, seed=seed,
                         max_users=max_users)
    counts = np.diff(coded.indptr)
    evaluated = np.flatnonzero(counts >= min_events)
    last = coded.indptr[evaluated + 1] - 1
    is_train = np.ones(len(coded.item), dtype=bool)
    is_train[last] = False
    is_train[last - 1] = False
    starts = coded.indptr[evaluated]
    test = _eval_set(
        coded, evaluated.tolist(),
        [np.arange(s, e) for s, e in zip(starts, last)],
        [np.array([e]) for e in last],
    )
    valid = _eval_set(
        coded, evaluated.tolist(),
        [np.arange(s, e - 1) for s, e in zip(starts, last)],
        [np.array([e - 1]) for e in last],
    )
    return Split(
        protocol="loo",
        item_ids=coded.item_ids,
        user_ids=coded.user_ids,
        train=coded.interactions(np.flatnonzero(is_train)),
        valid=valid,
        test=test,
        item_market=coded.item_market,
        params={"min_events": min_events, "tie_break": tie_break, "seed": seed, "max_users": max_users},
    )


def _future_cases(
    coded: _Coded,
    hist_end: int,
    tgt_start: int,
    tgt_end: int | None,
    target_ok: np.ndarray | None,
    target: Literal["all", "first"],
    min_history: int,
    exclude_history_items: bool,
) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """Per user: history = events with ts < hist_end; targets = events with tgt_start <= ts < tgt_end
    whose item passes ``target_ok`` (and, optionally, is not in the history)."""
    users, hists, tgts = [], [], []
    ts = coded.ts
    in_window = ts >= tgt_start
    if tgt_end is not None:
        in_window &= ts < tgt_end
    if target_ok is not None:
        in_window &= target_ok[coded.item]
    for u in range(len(coded.user_ids)):
        s, e = coded.indptr[u], coded.indptr[u + 1]
        if e == s:
            continue
        hist = np.arange(s, e)[ts[s:e] < hist_end]
        if len(hist) < min_history:
            continue
        cand = np.arange(s, e)[in_window[s:e]]
        if exclude_history_items and len(cand):
            cand = cand[~np.isin(coded.item[cand], coded.item[hist])]
        if len(cand) == 0:
            continue
        if target == "first":
            cand = cand[:1]
        users.append(u)
        hists.append(hist)
        tgts.append(cand)
    return users, hists, tgts


def _time_at_quantile(ts: np.ndarray, q: float) -> int:
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    return int(np.quantile(ts, q, method="higher"))


def temporal_split(
    events: Any,
    t: int | None = None,
    *,
    quantile: float = 0.8,
    valid_t: int | None = None,
    valid_quantile: float | None = None,
    t_end: int | None = None,
    target: Literal["all", "first"] = "all",
    min_history: int = 1,
    exclude_history_items: bool = True,
    items: Any = None,
    item_market: Mapping[str, str] | None = None,
    tie_break: Literal["stable", "random"] = "stable",
    seed: int = 0,
    max_users: int | None = None,
) -> Split:
    """Global temporal split at time ``t`` (default: the ``quantile`` of event times).

    Training events have timestamp < t (< ``valid_t`` when a validation cut is given); a test case is a
    user with at least ``min_history`` events before t, the history is exactly those pre-t events, and the
    targets are the distinct items of the user's events in [t, t_end) (``target="first"``: only the
    first), minus items already in the history (re-consumption is not discovery) unless
    ``exclude_history_items=False``. Validation, when ``valid_t``/``valid_quantile`` is given, is the same
    construction with the window [valid_t, t) and histories before valid_t. Nothing at or after t can
    reach a model: no training event, no history event.
    """
    coded = _code_events(events, items=items, item_market=item_market, tie_break=tie_break, seed=seed,
                         max_users=max_users)
    if t is None:
        t = _time_at_quantile(coded.ts, quantile)
    if valid_t is None and valid_quantile is not None:
        valid_t = _time_at_quantile(coded.ts, valid_quantile)
    if valid_t is not None and valid_t >= t:
        raise ValueError(f"valid_t ({valid_t}) must be before t ({t})")
    train_end = t if valid_t is None else valid_t
    test = _eval_set(coded, *_future_cases(coded, t, t, t_end, None, target, min_history, exclude_history_items))
    if len(test) == 0:
        raise ValueError(f"no test cases: no user has events both before and after t={t}")
    valid = None
    if valid_t is not None:
        valid = _eval_set(coded, *_future_cases(coded, valid_t, valid_t, t, None, target, min_history,
                                                exclude_history_items))
    return Split(
        protocol="temporal",
        item_ids=coded.item_ids,
        user_ids=coded.user_ids,
        train=coded.interactions(np.flatnonzero(coded.ts < train_end)),
        valid=valid,
        test=test,
        item_market=coded.item_market,
        params={"t": int(t), "valid_t": valid_t, "t_end": t_end, "target": target, "min_history": min_history,
                "exclude_history_items": exclude_history_items, "tie_break": tie_break, "seed": seed,
                "max_users": max_users},
    )


def cold_start_split(
    events: Any,
    t: int | None = None,
    *,
    cold_fraction: float = 0.1,
    valid_t: int | None = None,
    t_end: int | None = None,
    target: Literal["all", "first"] = "all",
    min_history: int = 1,
    candidates: Literal["all", "cold"] = "all",
    items: Any = None,
    item_market: Mapping[str, str] | None = None,
    tie_break: Literal["stable", "random"] = "stable",
    seed: int = 0,
    max_users: int | None = None,
) -> Split:
    """Cold-start items: an item is cold when its first event is at or after ``t``; targets are cold items.

    ``t`` defaults to the first-seen time that leaves ``cold_fraction`` of the items with events cold.
    Training events are those before t (``valid_t`` < t: before valid_t, with items first seen in
    [valid_t, t) as the validation's cold targets), so no model ever trains on a cold item; a test case
    is a user with ``min_history`` events before t whose events in [t, t_end) include cold items, the
    history is the pre-t events. Items of the vocabulary that never occur in the events count as cold
    candidates but are never targets. ``candidates="cold"`` ranks only the cold items (an easier,
    diagnostic setting); the default ranks the whole vocabulary.
    """
    coded = _code_events(events, items=items, item_market=item_market, tie_break=tie_break, seed=seed,
                         max_users=max_users)
    n_items = len(coded.item_ids)
    first_seen = np.full(n_items, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, coded.item, coded.ts)
    seen = first_seen < np.iinfo(np.int64).max
    if t is None:
        if not 0.0 < cold_fraction < 1.0:
            raise ValueError(f"cold_fraction must be in (0, 1), got {cold_fraction}")
        t = _time_at_quantile(first_seen[seen], 1.0 - cold_fraction)
    if valid_t is not None and valid_t >= t:
        raise ValueError(f"valid_t ({valid_t}) must be before t ({t})")
    cold = first_seen >= t
    test = _eval_set(coded, *_future_cases(coded, t, t, t_end, cold, target, min_history, True))
    if len(test) == 0:
        raise ValueError(f"no test cases: no user with history before t={t} touched a cold item after it")
    valid = None
    if valid_t is not None:
        pseudo_cold = (first_seen >= valid_t) & (first_seen < t)
        valid = _eval_set(coded, *_future_cases(coded, valid_t, valid_t, t, pseudo_cold, target, min_history, True))
    if candidates == "cold":
        cold_items = np.flatnonzero(cold)
        test = _with_candidates(test, (cold_items,), np.zeros(len(test), dtype=np.int64))
        if valid is not None:
            vitems = np.flatnonzero(first_seen >= valid_t)
            valid = _with_candidates(valid, (vitems,), np.zeros(len(valid), dtype=np.int64))
    elif candidates != "all":
        raise ValueError(f"candidates must be 'all' or 'cold', got {candidates!r}")
    train_end = t if valid_t is None else valid_t
    return Split(
        protocol="cold_start",
        item_ids=coded.item_ids,
        user_ids=coded.user_ids,
        train=coded.interactions(np.flatnonzero(coded.ts < train_end)),
        valid=valid,
        test=test,
        item_market=coded.item_market,
        params={"t": int(t), "valid_t": valid_t, "t_end": t_end, "cold_fraction": cold_fraction,
                "n_cold_items": int(cold.sum()), "n_cold_items_with_events": int((cold & seen).sum()),
                "target": target, "min_history": min_history, "candidates": candidates,
                "tie_break": tie_break, "seed": seed, "max_users": max_users},
    )


def _with_candidates(es: EvalSet, candidates: tuple[np.ndarray, ...], group: np.ndarray) -> EvalSet:
    return EvalSet(
        histories=es.histories,
        target_indptr=es.target_indptr,
        target_items=es.target_items,
        target_time=es.target_time,
        target_market=es.target_market,
        candidates=tuple(np.asarray(c, dtype=np.int64) for c in candidates),
        candidate_group=np.asarray(group, dtype=np.int64),
    )


def cross_market_split(
    events: Any,
    *,
    items: Any = None,
    item_market: Mapping[str, str] | None = None,
    history: Literal["home", "all"] = "home",
    candidates: Literal["all", "target_market"] = "all",
    min_history: int = 1,
    tie_break: Literal["stable", "random"] = "stable",
    seed: int = 0,
    max_users: int | None = None,
) -> Split:
    """Cross-market / cross-lingual: history in the user's home market A, target an item listed in B != A.

    An event's market is its item's listing market (``item_market`` or the ``market`` column of
    ``items``), else the event's own ``market`` column. A user's home market is the market of most of
    their events (ties: alphabetical). Test target: the user's last event outside the home market;
    validation target: the last such event before it (when present). The history is the user's earlier
    events, restricted to the home market with ``history="home"`` (the default: the question is whether
    a history in A transfers to B). Training data: each user's events before their earliest held-out
    target. The recommendation's context market (the storefront) is the target's market, which per-market
    models may use; ``candidates="target_market"`` ranks only items listed there (needs item markets).
    """
    coded = _code_events(events, items=items, item_market=item_market, tie_break=tie_break, seed=seed,
                         max_users=max_users)
    import pandas as pd

    if coded.item_market is None and coded.market is None:
        raise ValueError("cross_market_split needs markets: pass items with a market column, item_market, "
                         "or events with a market column")
    mk = np.full(len(coded.item), None, dtype=object)
    if coded.market is not None:
        mk[:] = coded.market
    if coded.item_market is not None:  # the item's listing market wins over the event's market
        listed = coded.item_market[coded.item]
        has = pd.notna(listed)
        mk[has] = listed[has]
    mk[pd.isna(mk)] = None
    if history not in ("home", "all"):
        raise ValueError(f"history must be 'home' or 'all', got {history!r}")

    test_u, test_h, test_t, val_u, val_h, val_t = [], [], [], [], [], []
    is_train = np.ones(len(coded.item), dtype=bool)
    for u in range(len(coded.user_ids)):
        s, e = coded.indptr[u], coded.indptr[u + 1]
        markets = mk[s:e]
        known = [m for m in markets if m is not None]
        if not known:
            continue
        names, counts = np.unique(np.asarray(known, dtype=str), return_counts=True)
        home = names[np.argmax(counts)]  # np.unique sorts: ties go to the alphabetically first
        cross = np.flatnonzero(np.array([m is not None and m != home for m in markets])) + s
        if len(cross) == 0:
            continue

        def hist_rows(j: int) -> np.ndarray:
            rows = np.arange(s, j)
            return rows[mk[rows] == home] if history == "home" else rows

        j_test = cross[-1]
        h = hist_rows(j_test)
        if len(h) < min_history:
            continue
        earliest = j_test
        test_u.append(u)
        test_h.append(h)
        test_t.append(np.array([j_test]))
        if len(cross) >= 2:
            j_val = cross[-2]
            hv = hist_rows(j_val)
            if len(hv) >= min_history:
                val_u.append(u)
                val_h.append(hv)
                val_t.append(np.array([j_val]))
                earliest = j_val
        is_train[earliest:e] = False
    if not test_u:
        raise ValueError("no test cases: no user has events outside their home market")

    def build(users, hs, ts) -> EvalSet:
        ctx = np.array([mk[t[0]] for t in ts], dtype=object)
        es = _eval_set(coded, users, hs, ts, context_market=ctx)
        es = EvalSet(histories=es.histories, target_indptr=es.target_indptr, target_items=es.target_items,
                     target_time=es.target_time, target_market=ctx)
        if candidates == "all":
            return es
        if coded.item_market is None:
            raise ValueError("candidates='target_market' needs item markets (items table or item_market)")
        names = sorted({str(m) for m in ctx})
        sets = tuple(np.flatnonzero(coded.item_market == m) for m in names)
        group = np.array([names.index(str(m)) for m in ctx], dtype=np.int64)
        return _with_candidates(es, sets, group)

    if candidates not in ("all", "target_market"):
        raise ValueError(f"candidates must be 'all' or 'target_market', got {candidates!r}")
    return Split(
        protocol="cross_market",
        item_ids=coded.item_ids,
        user_ids=coded.user_ids,
        train=coded.interactions(np.flatnonzero(is_train)),
        valid=build(val_u, val_h, val_t) if val_u else None,
        test=build(test_u, test_h, test_t),
        item_market=coded.item_market,
        params={"history": history, "candidates": candidates, "min_history": min_history,
                "tie_break": tie_break, "seed": seed, "max_users": max_users},
    )

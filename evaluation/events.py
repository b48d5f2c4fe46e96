"""Reading an events table and coding it as integers: the stage every split protocol starts from.

Inputs are the columns of the events table (``user_id``, ``item_id``, ``timestamp``, optional ``market``,
``kind``, ``value``) as a ``datasets.Dataset``, a pandas DataFrame or a dict of arrays. ``items`` fixes the
item vocabulary (e.g. the catalog's ``item_id`` column, so that a content-vector matrix in catalog order
lines up with item indices, and items without events are still rankable); without it the vocabulary is
the sorted distinct item ids of the events. pandas is imported lazily (factorising, null checks).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .data import EvalSet, Histories, Interactions, Split

__all__ = ["event_columns", "CodedEvents", "code_events"]

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
    """An object column with no value at all (an optional column present but empty counts as absent)."""
    import pandas as pd

    return col.dtype == object and bool(pd.isna(col).all())


@dataclass(frozen=True)
class CodedEvents:
    """Events coded and sorted by (user, time, tie-break), each user's events contiguous: what a protocol
    cuts into training events, histories and targets by choosing row positions."""

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

    def histories(
        self, row_lists: list[np.ndarray], users: np.ndarray, context_market: np.ndarray | None = None
    ) -> Histories:
        """Histories whose row i holds the sorted event rows ``row_lists[i]`` of user ``users[i]``."""
        indptr, rows = _csr(row_lists)
        return Histories(
            indptr=indptr,
            items=self.item[rows],
            timestamps=self.ts[rows],
            markets=None if self.market is None else self.market[rows],
            kinds=None if self.kind is None else self.kind[rows],
            users=np.asarray(users, dtype=np.int64),
            context_market=context_market,
        )

    def eval_set(
        self,
        users: Sequence[int],
        history_rows: list[np.ndarray],
        target_rows: list[np.ndarray],
        *,
        context_market: np.ndarray | None = None,
    ) -> EvalSet:
        """Cases of ``users[i]`` with history ``history_rows[i]`` and, as relevant items, the distinct items of
        ``target_rows[i]`` (first-occurrence order; the first row's time and market describe the case)."""
        target_lists = []
        for rows in target_rows:
            its = self.item[rows]
            _, first = np.unique(its, return_index=True)
            target_lists.append(its[np.sort(first)])
        tindptr, titems = _csr(target_lists)
        first_rows = np.array([r[0] for r in target_rows], dtype=np.int64)
        return EvalSet(
            histories=self.histories(history_rows, np.asarray(users, dtype=np.int64), context_market),
            target_indptr=tindptr,
            target_items=titems,
            target_time=self.ts[first_rows] if len(first_rows) else np.zeros(0, np.int64),
            target_market=None if self.market is None else self.market[first_rows],
        )

    def split(
        self, protocol: str, *, train_rows: np.ndarray, valid: EvalSet | None, test: EvalSet, params: dict[str, Any]
    ) -> Split:
        """The `Split` a protocol returns: its held-out cases, the training events at ``train_rows``, and this
        coding's vocabularies."""
        return Split(
            protocol=protocol,
            item_ids=self.item_ids,
            user_ids=self.user_ids,
            train=self.interactions(train_rows),
            valid=valid,
            test=test,
            item_market=self.item_market,
            params=params,
        )


def _csr(lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, concatenated int64 values) of a list of arrays."""
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=indptr[1:])
    values = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64)
    return indptr, values


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


def code_events(
    events: Any,
    *,
    items: Any = None,
    item_market: Mapping[str, str] | None = None,
    tie_break: Literal["stable", "random"] = "stable",
    seed: int = 0,
    max_users: int | None = None,
) -> CodedEvents:
    """Validate and code an events table (see the module docstring for ``events`` and ``items``).

    ``item_market`` (item id -> market) overrides the items table's market column; events without a market
    take their item's. Same-second events of a user keep input order (``tie_break="stable"``) or a seeded
    random order; ``max_users`` keeps a seeded random sample of users with all their events.
    """
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
    return CodedEvents(
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

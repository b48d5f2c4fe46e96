"""Faithful reasons: the history items that made the model rank a result, measured on the model itself.

Leave-one-out over the history's *items*:

    attribution(i, r) = log p(r | history) - log p(r | history without every event of item i)

with p(r | h) = softmax over the candidates the result was ranked among of the model's scores (the
model is trained with exactly this softmax). A positive value says: without item i, result r would be
exp(value) times less likely, i.e. it would fall against the other candidates. The raw score
score(h, r) = u(h) . item(r) is not used because removing an item can lower *every* candidate's score
alike (the newest event moves the whole user vector): that changes no rank and would name the same item
for every result; the log-probability keeps only what is specific to r (measured in
`bench/explanations.py`: the same deletion fidelity, far fewer results sharing one reason set).

Every reduced history goes through the same features and transformer as a real request for it would (gaps
recomputed from the remaining events, positions counted from the new last event, the newest ``max_len``
events read), so the value is exactly what the shopper would get without that item. A history of U
distinct items costs one batched forward of shape (U, <= max_len). An empty history has the zero user
vector (every candidate equally likely), so the only item of a one-item history gets log(C p(r)).

All events of an item are removed together, not one at a time: a reason names an item, and a
view -> click -> cart funnel on one listing is one piece of evidence. Removing one of its three events
leaves the other two carrying it, so per-event leave-one-out would rate such an item low and split its
credit over its events. Items with no event in the model's window cannot change the score and get no row.

The reasons shown are chosen by *sequential* deletion (`sequential_reasons`): the first is the
leave-one-out top item; the next is the leave-one-out top item of the history already without the first,
valued by the further drop; and so on while removing something still lowers the value. Plain
leave-one-out top-2 undervalues redundant evidence (two similar items that stand in for each other each
lose little alone); sequential deletion costs one more batched forward per reason and is what "without
these items the result would not be here" needs. Cosine similarity between a result's and the history
items' representations (the previous reasons) ignores what the model does with the history.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from evaluation import Histories


def window_items(history: Sequence[Hashable] | np.ndarray, max_len: int) -> list:
    """The distinct items with an event among the newest ``max_len`` of a history, newest first."""
    items = list(history)
    return list(dict.fromkeys(reversed(items[max(0, len(items) - max_len):])))


def take_events(h: Histories, positions: np.ndarray, indptr: np.ndarray, owner: np.ndarray) -> Histories:
    """New history rows made of the events at ``positions`` of ``h`` (CSR by ``indptr``), row r
    belonging to ``h``'s row ``owner[r]`` (its user and storefront carry over)."""
    def take(col: np.ndarray | None) -> np.ndarray | None:
        return None if col is None else col[positions]

    return Histories(indptr=np.asarray(indptr, dtype=np.int64), items=h.items[positions],
                     timestamps=take(h.timestamps), markets=take(h.markets), kinds=take(h.kinds),
                     users=None if h.users is None else h.users[owner],
                     context_market=None if h.context_market is None else h.context_market[owner])


@dataclass(frozen=True)
class ReducedHistories:
    """Histories with some items removed, for many rows at once: ``histories`` row r is row ``owner[r]``
    of the original without any event of the items ``removed[r]``; ``positions`` index the original
    per-event columns (e.g. explicit event values)."""

    histories: Histories
    owner: np.ndarray  # (R,) row of the original each reduced row comes from
    removed: list[np.ndarray]  # (R,) the items removed from each row
    positions: np.ndarray  # (nnz,) event positions into the original's flat columns


def without_items(h: Histories, remove: Sequence[Sequence[int]], owner: Sequence[int]) -> ReducedHistories:
    """Row r = ``h``'s row ``owner[r]`` without any event of the items ``remove[r]`` (deletion tests:
    drop a result's reasons, or random items, and re-rank). Rows are not cut to the model's window: the
    model reads them like any request (e.g. the oldest event it reads keeps its gap to the one before)."""
    owner = np.asarray(owner, dtype=np.int64)
    parts, lengths = [], []
    for row, items in zip(owner, remove):
        start, end = int(h.indptr[row]), int(h.indptr[row + 1])
        keep = start + np.flatnonzero(~np.isin(h.items[start:end], np.asarray(items, dtype=h.items.dtype)))
        parts.append(keep)
        lengths.append(len(keep))
    indptr = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    positions = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    return ReducedHistories(take_events(h, positions, indptr, owner), owner,
                            [np.asarray(x, dtype=np.int64) for x in remove], positions)


def leave_one_out_rows(h: Histories, max_len: int) -> ReducedHistories:
    """Every row's leave-one-out histories, stacked: row r lacks item ``removed[r][0]`` of row
    ``owner[r]``. One forward over these rows gives every attribution of every row. The items are those of
    the newest ``max_len`` + 1 events: the model reads ``max_len``, and the oldest of them has a time gap
    counted from the one before; removing anything older changes nothing."""
    owner, remove = [], []
    for b in range(len(h)):
        for item in window_items(h[b], max_len + 1):
            owner.append(b)
            remove.append([item])
    return without_items(h, remove, owner)


def log_probabilities(users: np.ndarray, candidates: np.ndarray, results: np.ndarray,
                      bias: np.ndarray | None = None) -> np.ndarray:
    """(m, K): log p(result k | user vector) under the softmax over ``candidates`` (C, d) of the scores
    users @ candidates.T + ``bias`` (C,) (e.g. a cold-item offset); ``results`` (K,) index candidates."""
    scores = np.asarray(users, dtype=np.float64) @ np.asarray(candidates, dtype=np.float64).T
    if bias is not None:
        scores = scores + np.asarray(bias, dtype=np.float64)[None, :]
    top = scores.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(scores - top).sum(axis=1))
    return scores[:, np.asarray(results, dtype=np.int64)] - log_z[:, None]


def top_reasons(items: Sequence[Hashable], attributions: np.ndarray, n: int) -> list[tuple[Hashable, float]]:
    """The ``n`` items with the largest *positive* attribution, largest first (ties: ``items`` order).
    An item whose removal would not lower the score is no reason for the result."""
    values = np.asarray(attributions, dtype=np.float64)
    order = np.argsort(-values, kind="stable")
    return [(items[int(j)], float(values[j])) for j in order[:n] if values[j] > 0]


UsersWithout = Callable[[list[int], list[tuple]], np.ndarray]
"""(owner rows, item sets) -> (R, d) user vectors of row owner[r]'s history without every event of set r."""
ValueOf = Callable[[int, np.ndarray], np.ndarray]
"""(row b, (m, d) user vectors) -> (m, K) the value of each of row b's results (e.g. `log_probabilities`)."""


def sequential_reasons(items: Sequence[Sequence[Hashable]], full_values: np.ndarray, value_of: ValueOf,
                       users_without: UsersWithout, n: int) -> list[list[list[tuple[Hashable, float]]]]:
    """Up to ``n`` reasons per row b and result k, by sequential leave-one-out deletion.

    Step 1 is leave-one-out: the item whose removal lowers the result's value most, valued by that drop.
    Each further step removes the reasons found so far and asks the same question of what is left, valued
    by the further drop; it stops at the first step where no removal lowers the value. So the values of a
    result's reasons add up to exactly the drop of removing them all together. Plain leave-one-out
    top-2 undervalues redundant evidence (two similar items that each stand in for the other lose little
    alone); deleting the reasons one after another is what "without these, the result would not be here"
    needs. Cost: one batched forward per step (for step >= 2, one row per remaining item and distinct
    set of earlier reasons: results that share their first reason share rows).

    ``items[b]``: the row's removable items (e.g. `window_items`), ties broken by this order;
    ``full_values`` (B, K): each result's value with the whole history.
    Returns reasons[b][k] = [(item, value), ...], largest value first, every value > 0."""
    full_values = np.asarray(full_values, dtype=np.float64)
    n_rows, n_results = full_values.shape
    found: list[list[list[tuple[Hashable, float]]]] = [[[] for _ in range(n_results)] for _ in range(n_rows)]
    removed = {(b, k): () for b in range(n_rows) for k in range(n_results)}
    current = full_values.copy()
    active = sorted(removed)
    for _ in range(n):
        requests: dict[tuple, list] = {}  # (row, items removed so far) -> items that could go next
        for b, k in active:
            key = (b, removed[b, k])
            if key not in requests:
                requests[key] = [x for x in items[b] if x not in key[1]]
        owner, sets, where = [], [], {}
        for (b, gone), rest in requests.items():
            for x in rest:
                where[b, gone, x] = len(owner)
                owner.append(b)
                sets.append(gone + (x,))
        if not owner:
            break
        users = np.asarray(users_without(owner, sets), dtype=np.float64)
        still = []
        values_of = {key: value_of(key[0], users[[where[key[0], key[1], x] for x in rest]])
                     for key, rest in requests.items() if rest}  # (len(rest), K) per request
        for b, k in active:
            gone = removed[b, k]
            rest = requests[b, gone]
            if not rest:
                continue
            after = values_of[b, gone][:, k]
            drop = current[b, k] - after
            j = int(np.argmax(drop))  # first maximum: ties go to the earlier item
            if drop[j] <= 0:
                continue
            found[b][k].append((rest[j], float(drop[j])))
            removed[b, k] = gone + (rest[j],)
            current[b, k] = after[j]
            still.append((b, k))
        active = still
    return [[sorted(rs, key=lambda r: -r[1]) for rs in row] for row in found]

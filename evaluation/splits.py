"""Split protocols: turn an event log into ONE integer-coded `Split` that every compared model receives.

Published recsys numbers differ several-fold with the protocol, so the protocol is part of the result:

* ``leave_one_out``   - per user, last event = test target, second to last = validation target, rest train.
* ``temporal_split``  - one global cut t: train strictly before t, test targets at or after t, histories
                        only from before t (no leakage; ``tests/test_evaluation_splits.py`` proves it).
* ``cold_start_split``- items first seen at or after t are cold; targets are cold items only; the model
                        never sees an event on them in training.
* ``cross_market_split`` - history in the user's home market A, target an item listed in another market B.

All protocols rank every candidate item (no sampled negatives; candidates default to the whole
vocabulary). Every random choice (user sampling, tie-breaking) takes a ``seed``. Accepted ``events`` and
``items`` are described in `evaluation.events`; the containers returned live in `evaluation.data`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

import numpy as np

from .data import EvalSet, Split
from .events import CodedEvents, code_events

__all__ = ["leave_one_out", "temporal_split", "cold_start_split", "cross_market_split"]


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
    coded = code_events(events, items=items, item_market=item_market, tie_break=tie_break, seed=seed,
                         max_users=max_users)
    counts = np.diff(coded.indptr)
    evaluated = np.flatnonzero(counts >= min_events)
    last = coded.indptr[evaluated + 1] - 1
    is_train = np.ones(len(coded.item), dtype=bool)
    is_train[last] = False
    is_train[last - 1] = False
    starts = coded.indptr[evaluated]
    test = coded.eval_set(
        evaluated.tolist(),
        [np.arange(s, e) for s, e in zip(starts, last)],
        [np.array([e]) for e in last],
    )
    valid = coded.eval_set(
        evaluated.tolist(),
        [np.arange(s, e - 1) for s, e in zip(starts, last)],
        [np.array([e - 1]) for e in last],
    )
    return coded.split(
        "loo",
        train_rows=np.flatnonzero(is_train),
        valid=valid,
        test=test,
        params={"min_events": min_events, "tie_break": tie_break, "seed": seed, "max_users": max_users},
    )


def _future_cases(
    coded: CodedEvents,
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


def temporal_cuts(ts: np.ndarray, t: int | None, quantile: float, valid_t: int | None,
                  valid_quantile: float | None) -> tuple[int, int | None]:
    """The test cut ``t`` (default: the ``quantile`` of event times) and the optional validation cut
    (``valid_t`` or the ``valid_quantile``), which must come first: shared by every split on a global cut."""
    if t is None:
        t = _time_at_quantile(ts, quantile)
    if valid_t is None and valid_quantile is not None:
        valid_t = _time_at_quantile(ts, valid_quantile)
    if valid_t is not None and valid_t >= t:
        raise ValueError(f"valid_t ({valid_t}) must be before t ({t})")
    return t, valid_t


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
    coded = code_events(events, items=items, item_market=item_market, tie_break=tie_break, seed=seed,
                         max_users=max_users)
    t, valid_t = temporal_cuts(coded.ts, t, quantile, valid_t, valid_quantile)
    train_end = t if valid_t is None else valid_t
    test = coded.eval_set(*_future_cases(coded, t, t, t_end, None, target, min_history, exclude_history_items))
    if len(test) == 0:
        raise ValueError(f"no test cases: no user has events both before and after t={t}")
    valid = None
    if valid_t is not None:
        valid = coded.eval_set(*_future_cases(coded, valid_t, valid_t, t, None, target, min_history,
                                              exclude_history_items))
    return coded.split(
        "temporal",
        train_rows=np.flatnonzero(coded.ts < train_end),
        valid=valid,
        test=test,
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
    coded = code_events(events, items=items, item_market=item_market, tie_break=tie_break, seed=seed,
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
    test = coded.eval_set(*_future_cases(coded, t, t, t_end, cold, target, min_history, True))
    if len(test) == 0:
        raise ValueError(f"no test cases: no user with history before t={t} touched a cold item after it")
    valid = None
    if valid_t is not None:
        pseudo_cold = (first_seen >= valid_t) & (first_seen < t)
        valid = coded.eval_set(*_future_cases(coded, valid_t, valid_t, t, pseudo_cold, target, min_history, True))
    if candidates == "cold":
        test = replace(test, candidates=(np.flatnonzero(cold),), candidate_group=np.zeros(len(test), np.int64))
        if valid is not None:
            valid = replace(valid, candidates=(np.flatnonzero(first_seen >= valid_t),),
                            candidate_group=np.zeros(len(valid), np.int64))
    elif candidates != "all":
        raise ValueError(f"candidates must be 'all' or 'cold', got {candidates!r}")
    train_end = t if valid_t is None else valid_t
    return coded.split(
        "cold_start",
        train_rows=np.flatnonzero(coded.ts < train_end),
        valid=valid,
        test=test,
        params={"t": int(t), "valid_t": valid_t, "t_end": t_end, "cold_fraction": cold_fraction,
                "n_cold_items": int(cold.sum()), "n_cold_items_with_events": int((cold & seen).sum()),
                "target": target, "min_history": min_history, "candidates": candidates,
                "tie_break": tie_break, "seed": seed, "max_users": max_users},
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
    coded = code_events(events, items=items, item_market=item_market, tie_break=tie_break, seed=seed,
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

    def build(users: list[int], hs: list[np.ndarray], ts: list[np.ndarray]) -> EvalSet:
        ctx = np.array([mk[t[0]] for t in ts], dtype=object)
        es = replace(coded.eval_set(users, hs, ts, context_market=ctx), target_market=ctx)
        if candidates == "all":
            return es
        if coded.item_market is None:
            raise ValueError("candidates='target_market' needs item markets (items table or item_market)")
        names = sorted({str(m) for m in ctx})
        sets = tuple(np.flatnonzero(coded.item_market == m) for m in names)
        group = np.array([names.index(str(m)) for m in ctx], dtype=np.int64)
        return replace(es, candidates=sets, candidate_group=group)

    if candidates not in ("all", "target_market"):
        raise ValueError(f"candidates must be 'all' or 'target_market', got {candidates!r}")
    return coded.split(
        "cross_market",
        train_rows=np.flatnonzero(is_train),
        valid=build(val_u, val_h, val_t) if val_u else None,
        test=build(test_u, test_h, test_t),
        params={"history": history, "candidates": candidates, "min_history": min_history,
                "tie_break": tie_break, "seed": seed, "max_users": max_users},
    )

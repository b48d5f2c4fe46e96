"""Next-basket evaluation, the way grocery recommendation is measured (Li et al., "A Next Basket
Recommendation Reality Check", ACM TOIS 2023).

* ``next_basket_split`` - a global cut ``t``: each user's history is every event before t, the target is
  the user's NEXT basket at or after t (the distinct items of the user's first purchase time at or after
  t: one basket = one user's events of one timestamp). Repeat purchases stay targets: an item bought
  before is a legitimate, usually the most likely, next purchase. Training events are strictly before the
  cut (before the validation cut when there is one), so nothing at or after t reaches a model.
* ``repeat_explore_metrics`` - the usual metrics of the same top-k lists computed three ways: over the
  whole basket, over its REPEAT items only (bought by that user before) and over its EXPLORE items only
  (new to the user). A model can look strong overall by re-offering what people always buy and still
  never find anything new; the split makes that visible. Cases without repeat (explore) targets are NaN
  in the repeat (explore) columns, so means and intervals are over the cases where the question exists.

Models are asked with ``exclude_seen=False`` (history items may and should be recommended).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .data import EvalSet, Split
from .events import code_events
from .metrics import ACCURACY_METRICS, accuracy_metrics_batch, hit_matrix
from .splits import temporal_cuts

__all__ = ["basket_ids", "next_basket_split", "repeat_explore_metrics", "repeat_explore_sets"]


def basket_ids(ts: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """(n,) basket number of each event within its user's time-ordered events (0, 1, ...): a new basket
    starts at a new user or a new timestamp."""
    n = len(ts)
    new = np.ones(n, dtype=bool)
    if n > 1:
        new[1:] = ts[1:] != ts[:-1]
    new[indptr[:-1][indptr[:-1] < n]] = True
    run = np.cumsum(new) - 1
    first_run_of_user = run[np.minimum(indptr[:-1], max(n - 1, 0))] if n else np.zeros(0, np.int64)
    counts = np.diff(indptr)
    return run - np.repeat(first_run_of_user, counts)


def _cases(coded: Any, basket: np.ndarray, cut: int, min_history: int, before: int | None = None):
    """Per user: history = events before ``cut``; targets = the events of the first basket at/after it
    (and, with ``before``, strictly before that: a validation basket never lies in the test period)."""
    users, hists, tgts = [], [], []
    ts = coded.ts
    for u in range(len(coded.user_ids)):
        s, e = int(coded.indptr[u]), int(coded.indptr[u + 1])
        if e == s:
            continue
        k = s + int(np.searchsorted(ts[s:e], cut, side="left"))  # first event at or after the cut
        if k == e or k - s < min_history or (before is not None and ts[k] >= before):
            continue
        same = np.flatnonzero(basket[k:e] == basket[k])
        users.append(u)
        hists.append(np.arange(s, k))
        tgts.append(k + same)
    return users, hists, tgts


def next_basket_split(
    events: Any,
    t: int | None = None,
    *,
    quantile: float = 0.9,
    valid_t: int | None = None,
    valid_quantile: float | None = None,
    min_history: int = 1,
    items: Any = None,
    item_market: Mapping[str, str] | None = None,
    seed: int = 0,
    max_users: int | None = None,
) -> Split:
    """Temporal next-basket split at ``t`` (default: the ``quantile`` of event times).

    A test case is a user with at least ``min_history`` events before t and a basket at or after t; its
    history is exactly the events before t and its relevant items are the distinct items of that next
    basket, repeats included. Validation (``valid_t`` or ``valid_quantile``) is the same construction at
    the earlier cut; training events are those before the earliest cut. A basket is one user's events of
    one timestamp (Complete Journey: 155,848 baskets, 84 timestamps shared by two baskets of a household).
    """
    coded = code_events(events, items=items, item_market=item_market, tie_break="stable", seed=seed,
                        max_users=max_users)
    basket = basket_ids(coded.ts, coded.indptr)
    t, valid_t = temporal_cuts(coded.ts, t, quantile, valid_t, valid_quantile)
    test = coded.eval_set(*_cases(coded, basket, t, min_history))
    if len(test) == 0:
        raise ValueError(f"no test cases: no user has events both before and at/after t={t}")
    valid = None
    if valid_t is not None:
        vcases = _cases(coded, basket, valid_t, min_history, before=t)
        valid = coded.eval_set(*vcases) if vcases[0] else None
    train_end = t if valid_t is None else valid_t
    return coded.split(
        "next_basket",
        train_rows=np.flatnonzero(coded.ts < train_end),
        valid=valid,
        test=test,
        params={"t": int(t), "valid_t": None if valid_t is None else int(valid_t), "train_end": int(train_end),
                "min_history": min_history, "seed": seed,
                "max_users": max_users, "repeats": "allowed"},
    )


def repeat_explore_sets(eval_set: EvalSet) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per case, (target items the user had in the history, target items new to the user)."""
    rep, exp = [], []
    for i in range(len(eval_set)):
        tg = eval_set.targets(i)
        seen = np.isin(tg, eval_set.histories[i])
        rep.append(tg[seen])
        exp.append(tg[~seen])
    return rep, exp


def repeat_explore_metrics(
    recs: np.ndarray,
    eval_set: EvalSet,
    ks: Sequence[int] = (10,),
    metrics: Sequence[str] = ACCURACY_METRICS,
) -> dict[str, np.ndarray]:
    """Per-case metrics of the top-k lists ``recs`` (n, K) against the whole next basket ("ndcg@10"), its
    repeat items ("repeat_ndcg@10") and its explore items ("explore_ndcg@10"); NaN where a case has no
    such target. Also "repeat_share@k": the share of each list that re-offers history items."""
    recs = np.asarray(recs)
    rep, exp = repeat_explore_sets(eval_set)
    out: dict[str, np.ndarray] = {}
    for prefix, relevant in (("", eval_set.relevant_sets()), ("repeat_", rep), ("explore_", exp)):
        hits, n_rel = hit_matrix(recs, relevant)
        for key, vals in accuracy_metrics_batch(hits, n_rel, ks, metrics).items():
            vals = np.asarray(vals, dtype=np.float64)
            if prefix:
                vals = np.where(n_rel > 0, vals, np.nan)
            out[prefix + key] = vals
    for k in ks:
        share = np.zeros(len(eval_set))
        for i in range(len(eval_set)):
            top = recs[i, :k]
            top = top[top >= 0]
            share[i] = float(np.isin(top, eval_set.histories[i]).mean()) if len(top) else 0.0
        out[f"repeat_share@{k}"] = share
    return out

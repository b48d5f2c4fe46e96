"""Offline A/B: compare two recommenders on held-out sessions the way an online test would, before one.

Two simulations over the same held-out cases (each = a history and what the user actually did next):

* ``interleave`` - team-draft interleaving (Radlinski, Kurup & Joachims, CIKM 2008): per session the two
  top-k lists are merged by alternating draft picks (a seeded coin decides who picks first each round);
  the simulated user clicks shown items that are in the held-out targets (optionally only if they
  examine that position); the ranker whose team gets more clicks wins the session. Interleaving needs
  far fewer sessions than a split test because every session compares both rankers.
* ``ab_split`` - a classic split test replayed offline: sessions are randomly assigned to A or B, each
  session is shown its arm's top-k, CTR = share of sessions with at least one click.

Clicks are simulated from logged behaviour, so this measures agreement with what users did, not how
they would react to a changed page (no counterfactual correction): call the result a simulation.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .data import EvalSet
from .protocol import Recommender, evaluate_cases

__all__ = ["InterleavingResult", "ABResult", "team_draft", "interleave", "ab_split", "wilson_interval"]


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (well-behaved near 0 and 1 and for small n); NaN when n = 0."""
    if n == 0:
        return math.nan, math.nan
    from scipy import stats

    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def team_draft(list_a: np.ndarray, list_b: np.ndarray, k: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Team-draft interleave two rankings into ``k`` slots: returns (items shown, team per slot: 0 = A,
    1 = B). Each round a coin says who picks first; each picks its best item not yet shown."""
    shown: list[int] = []
    team: list[int] = []
    used: set[int] = set()
    ia = ib = 0
    a = [int(x) for x in list_a if x >= 0]
    b = [int(x) for x in list_b if x >= 0]
    while len(shown) < k and (ia < len(a) or ib < len(b)):
        order = (0, 1) if rng.random() < 0.5 else (1, 0)
        for who in order:
            if len(shown) >= k:
                break
            lst, pos = (a, ia) if who == 0 else (b, ib)
            while pos < len(lst) and lst[pos] in used:
                pos += 1
            if pos < len(lst):
                shown.append(lst[pos])
                team.append(who)
                used.add(lst[pos])
                pos += 1
            if who == 0:
                ia = pos
            else:
                ib = pos
    return shown, team


@dataclass(frozen=True)
class InterleavingResult:
    """Sessions won by A, by B, tied (including no click); ``win_rate_a`` = wins_a / (wins_a + wins_b)
    with a Wilson interval; ``delta`` = (wins_a - wins_b) / sessions (the interleaving preference)."""

    model_a: str
    model_b: str
    sessions: int
    wins_a: int
    wins_b: int
    ties: int
    win_rate_a: float
    low: float
    high: float
    delta: float
    level: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ABResult:
    """Split-test replay: CTR per arm with Wilson intervals and the CTR difference with a normal interval."""

    model_a: str
    model_b: str
    sessions_a: int
    sessions_b: int
    ctr_a: float
    ctr_a_low: float
    ctr_a_high: float
    ctr_b: float
    ctr_b_low: float
    ctr_b_high: float
    diff: float
    diff_low: float
    diff_high: float
    level: float

    def to_dict(self) -> dict:
        return asdict(self)


def _clicks(shown: list[int], targets: set[int], examine: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    hit = np.array([x in targets for x in shown], dtype=bool)
    if examine is not None:
        hit &= rng.random(len(shown)) < examine[: len(shown)]
    return hit


def _examination(position_bias: bool, k: int) -> np.ndarray | None:
    """P(user looks at position p) = 1 / log2(p + 1) (the DCG discount as an examination model)."""
    return 1.0 / np.log2(np.arange(2, k + 2)) if position_bias else None


def _lists(model: Recommender, cases: EvalSet, n_items: int, k: int, exclude_seen: bool) -> np.ndarray:
    _, recs, _ = evaluate_cases(model, cases, n_items, ks=(k,), exclude_seen=exclude_seen, metrics=("hit_rate",))
    return recs


def interleave(
    model_a: Recommender,
    model_b: Recommender,
    cases: EvalSet,
    n_items: int,
    *,
    k: int = 10,
    position_bias: bool = False,
    exclude_seen: bool = True,
    level: float = 0.95,
    seed: int = 0,
) -> InterleavingResult:
    """Team-draft interleaving of two fitted models over held-out ``cases`` (e.g. ``split.test``)."""
    rng = np.random.default_rng(seed)
    ra = _lists(model_a, cases, n_items, k, exclude_seen)
    rb = _lists(model_b, cases, n_items, k, exclude_seen)
    examine = _examination(position_bias, k)
    wins_a = wins_b = 0
    for i in range(len(cases)):
        shown, team = team_draft(ra[i], rb[i], k, rng)
        clicks = _clicks(shown, set(cases.targets(i).tolist()), examine, rng)
        ca = int(np.sum(clicks & (np.array(team) == 0)))
        cb = int(np.sum(clicks & (np.array(team) == 1)))
        wins_a += ca > cb
        wins_b += cb > ca
    n = len(cases)
    decided = wins_a + wins_b
    low, high = wilson_interval(wins_a, decided, level)
    return InterleavingResult(
        model_a=getattr(model_a, "name", "a"), model_b=getattr(model_b, "name", "b"), sessions=n,
        wins_a=wins_a, wins_b=wins_b, ties=n - decided,
        win_rate_a=wins_a / decided if decided else math.nan, low=low, high=high,
        delta=(wins_a - wins_b) / n if n else math.nan, level=level,
    )


def ab_split(
    model_a: Recommender,
    model_b: Recommender,
    cases: EvalSet,
    n_items: int,
    *,
    k: int = 10,
    position_bias: bool = False,
    exclude_seen: bool = True,
    level: float = 0.95,
    seed: int = 0,
) -> ABResult:
    """Replay a 50/50 split test: seeded assignment of sessions to arms, CTR@k per arm."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    arm = rng.random(len(cases)) < 0.5  # True -> A
    idx_a, idx_b = np.flatnonzero(arm), np.flatnonzero(~arm)
    examine = _examination(position_bias, k)

    def ctr(model: Recommender, rows: np.ndarray) -> tuple[int, int]:
        if len(rows) == 0:
            return 0, 0
        sub = cases.subset(rows)
        recs = _lists(model, sub, n_items, k, exclude_seen)
        clicked = 0
        for i in range(len(sub)):
            shown = [int(x) for x in recs[i] if x >= 0]
            clicked += bool(_clicks(shown, set(sub.targets(i).tolist()), examine, rng).any())
        return clicked, len(rows)

    ca, na = ctr(model_a, idx_a)
    cb, nb = ctr(model_b, idx_b)
    pa, pb = (ca / na if na else math.nan), (cb / nb if nb else math.nan)
    la, ha = wilson_interval(ca, na, level)
    lb, hb = wilson_interval(cb, nb, level)
    z = float(stats.norm.ppf(0.5 + level / 2))
    se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb) if na and nb else math.nan
    return ABResult(
        model_a=getattr(model_a, "name", "a"), model_b=getattr(model_b, "name", "b"),
        sessions_a=na, sessions_b=nb, ctr_a=pa, ctr_a_low=la, ctr_a_high=ha, ctr_b=pb, ctr_b_low=lb,
        ctr_b_high=hb, diff=pa - pb, diff_low=pa - pb - z * se, diff_high=pa - pb + z * se, level=level,
    )

"""Most-popular items, globally or per market: the floor every personalised model must clear."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..data import EvalSet, Histories, Interactions, as_histories
from ..protocol import Recommendations, top_k


@dataclass
class Popularity:
    """Rank items by number of training events (``count="events"``) or distinct users (``"users"``).

    With ``by_market`` the ranking is that of the request's market (``Histories.context_market``, else the
    market of the row's last event), global popularity breaking ties, so items never sold in that
    market still come after those that were. ``window_seconds`` counts only the last stretch of training
    time (recent popularity is a strong baseline on temporal splits).
    """

    by_market: bool = False
    count: str = "events"
    window_seconds: int | None = None
    name: str = ""
    global_scores_: np.ndarray | None = field(default=None, repr=False)
    market_scores_: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.count not in ("events", "users"):
            raise ValueError(f"count must be 'events' or 'users', got {self.count!r}")
        if not self.name:
            self.name = "popularity-market" if self.by_market else "popularity"

    def _counts(self, item: np.ndarray, user: np.ndarray, n_items: int) -> np.ndarray:
        if self.count == "users":
            item = np.unique(user * np.int64(n_items) + item) % n_items
        return np.bincount(item, minlength=n_items).astype(np.float64)

    def fit(self, train: Interactions, valid: EvalSet | None = None) -> "Popularity":
        keep = np.ones(len(train), dtype=bool)
        if self.window_seconds is not None and len(train):
            keep = train.timestamp >= train.timestamp.max() - self.window_seconds
        item, user = train.item[keep], train.user[keep]
        self.global_scores_ = self._counts(item, user, train.n_items)
        self.market_scores_ = {}
        if self.by_market:
            if train.market is None:
                raise ValueError("by_market popularity needs a market per training event")
            markets = train.market[keep]
            for m in sorted({str(x) for x in markets if x is not None}):
                sel = markets == m
                self.market_scores_[m] = self._counts(item[sel], user[sel], train.n_items)
        return self

    def _row_markets(self, h: Histories) -> list[str | None]:
        out: list[str | None] = []
        for i in range(len(h)):
            m = h.context_market[i] if h.context_market is not None else None
            if m is None and h.markets is not None and h.indptr[i + 1] > h.indptr[i]:
                m = h.markets[h.indptr[i + 1] - 1]
            out.append(None if m is None else str(m))
        return out

    def recommend(
        self,
        histories: Histories | Sequence[Sequence[int]],
        k: int,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
    ) -> Recommendations:
        if self.global_scores_ is None:
            raise RuntimeError("call fit() first")
        h = as_histories(histories)
        g = self.global_scores_
        scores = np.tile(g, (len(h), 1))
        if self.by_market:
            tiebreak = g / (g.max() + 1.0)  # < 1: never outranks a single in-market event
            for i, m in enumerate(self._row_markets(h)):
                if m in self.market_scores_:
                    scores[i] = self.market_scores_[m] + tiebreak
        return top_k(scores, k, histories=h if exclude_seen else None, candidates=candidates)

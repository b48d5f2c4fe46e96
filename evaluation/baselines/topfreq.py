"""Personal top-frequency: a user's most-bought items, ties by recency, padded by popularity.

The simple baseline that many deep next-basket models fail to beat once repeat and explore items are
measured apart (Li et al., "A Next Basket Recommendation Reality Check", ACM TOIS 2023, "P-TopFreq"):
grocery shoppers re-buy, so "what you buy most" is a strong next basket. Pure numpy.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..data import EvalSet, Histories, Interactions, as_histories
from ..protocol import Recommendations, top_k


@dataclass
class PersonalTopFreq:
    """Score = times the item is in the user's history, plus < 0.5 for recency (the most recent of two
    equally frequent items first); items never bought get their training popularity scaled below any
    history item, so the list is filled with the bestsellers after the user's own items.

    ``count="baskets"`` counts an item once per basket (one timestamp), as the reference implementation
    does; ``"events"`` counts purchase lines.
    """

    count: str = "baskets"
    name: str = "personal_topfreq"
    popularity_: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.count not in ("baskets", "events"):
            raise ValueError(f"count must be 'baskets' or 'events', got {self.count!r}")

    def fit(self, train: Interactions, valid: EvalSet | None = None) -> PersonalTopFreq:
        pop = np.bincount(train.item, minlength=train.n_items).astype(np.float64)
        self.popularity_ = pop / (pop.max() + 1.0)  # in [0, 1): below any history item's score (>= 1)
        return self

    def recommend(
        self,
        histories: Histories | Sequence[Sequence[int]],
        k: int,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
    ) -> Recommendations:
        if self.popularity_ is None:
            raise RuntimeError("call fit() first")
        h = as_histories(histories)
        n_items = len(self.popularity_)
        scores = np.tile(self.popularity_, (len(h), 1))
        if len(h.items):
            row = h.row_of_event().astype(np.int64)
            key = row * n_items + h.items  # one entry per (row, item) pair, flat index into `scores`
            pairs, inv = np.unique(key, return_inverse=True)
            if self.count == "baskets" and h.timestamps is not None:
                per_basket = np.unique(np.stack([inv, h.timestamps]), axis=1)[0]  # (pair, timestamp) once
                counts = np.bincount(per_basket, minlength=len(pairs)).astype(np.float64)
            else:
                counts = np.bincount(inv, minlength=len(pairs)).astype(np.float64)
            # recency in (0, 0.5]: position of the pair's last event within its row, relative to the row length
            lengths = h.lengths
            pos = np.arange(len(key)) - np.repeat(h.indptr[:-1], lengths)
            recency = (pos + 1) / (np.repeat(lengths, lengths) + 1.0) * 0.5
            last = np.zeros(len(pairs))
            np.maximum.at(last, inv, recency)
            scores.flat[pairs] = counts + last
        return top_k(scores, k, histories=h if exclude_seen else None, candidates=candidates)

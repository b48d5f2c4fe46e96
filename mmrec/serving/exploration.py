"""Exploration for new items: how much exposure an item with few impressions gets. Thompson sampling on
each item's click-through rate, with a prior from the model's score, in a bounded share of a page's slots.

A pure component over what the caller already has: the model's scores of the candidates and each
candidate's impression and click counts (the service's impression log, or a closed-loop simulator's).
Seeded; no state but its random stream.

The rule, for one page of k slots:

1. The model's top k is the page (the "exploited" slots).
2. Every candidate among the model's top ``pool`` gets a Beta posterior on its CTR:

       prior mean  mu_j = sigmoid(logit(c0) + score_scale * (s_j - s_ref))
       posterior   Beta(kappa * mu_j + clicks_j,  kappa * (1 - mu_j) + impressions_j - clicks_j)

   s_ref is the score of the page's last slot; c0 the pooled CTR of the pool's established items,
   smoothed towards ``base_ctr`` with the same kappa = ``prior_strength`` pseudo-impressions. The model is
   trained with a softmax, so s_j - s_ref is its log-odds that the shopper's next interaction is j rather
   than the item in the last slot: the prior says "as good as the model expects, relative to the slot it
   would take". A new product has no ID yet, so its score, and therefore its prior, comes from its content.
3. One CTR is drawn from every posterior. The new items (fewer than ``new_below`` impressions) that are not
   on the page, best draw first, replace the page's exploited slots from the bottom up, each only if its
   draw beats the draw of the item it would replace, and at most floor(max_share * k) of them.

So a new item is shown about as often as the posterior probability that it is better than what it
displaces: often while little is known and its content fits, less after impressions without clicks, and
no longer by this rule once it has ``new_below`` impressions (the model then has its clicks to learn
from). Established items keep the model's order. This replaces a fixed ``cold_offset``, which lifts every
new item by the same amount forever, whatever its clicks say. Off by default; offline evaluation never
uses it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass
class ExplorationConfig:
    """enabled: off by default (offline evaluation and the service without an impression log never explore).
    max_share: at most floor(max_share * k) slots of a page are explored. new_below: items with fewer
    impressions may be explored. prior_strength: pseudo-impressions the score-based prior is worth.
    base_ctr: CTR assumed for the page's last slot until the log has clicks. score_scale: how score
    differences map to log-odds (1 = the softmax's own). pool: how far down the model's ranking new items
    are considered. seed: the policy's random stream (a request may pass its own generator)."""

    enabled: bool = False
    max_share: float = 0.2
    new_below: int = 200
    prior_strength: float = 20.0
    base_ctr: float = 0.05
    score_scale: float = 1.0
    pool: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_share <= 1.0:
            raise ValueError(f"max_share must be in [0, 1], got {self.max_share}")
        if not 0.0 < self.base_ctr < 1.0:
            raise ValueError(f"base_ctr must be in (0, 1), got {self.base_ctr}")
        if self.prior_strength <= 0 or self.new_below < 1 or self.pool < 1 or self.score_scale < 0:
            raise ValueError("prior_strength must be > 0, new_below and pool >= 1, score_scale >= 0")


@dataclass(frozen=True)
class Page:
    """The chosen slots: ``slots`` are candidate indices in page order; ``explored[i]`` says slot i went
    to exploration (log it with the impression: those shows are the experiment, not the model's choice)."""

    slots: np.ndarray  # (<= k,) int64
    explored: np.ndarray  # (<= k,) bool


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


class ExplorationPolicy:
    """Thompson sampling for new items over the model's ranking (see the module docstring)."""

    def __init__(self, config: ExplorationConfig | None = None) -> None:
        self.config = config or ExplorationConfig(enabled=True)
        self._rng = np.random.default_rng(self.config.seed)
        self._lock = threading.Lock()  # numpy generators are not thread-safe; the service is

    def prior_means(self, scores: np.ndarray, impressions: np.ndarray, clicks: np.ndarray, s_ref: float
                    ) -> np.ndarray:
        """(n,) prior CTR mean of each candidate from its score relative to the page's last slot."""
        cfg = self.config
        established = impressions >= cfg.new_below
        c0 = (float(clicks[established].sum()) + cfg.prior_strength * cfg.base_ctr) / \
             (float(impressions[established].sum()) + cfg.prior_strength)
        c0 = min(max(c0, 1e-4), 1 - 1e-4)
        z = _logit(c0) + cfg.score_scale * (np.asarray(scores, dtype=np.float64) - s_ref)
        return np.clip(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))), 1e-6, 1 - 1e-6)

    def select(self, scores: np.ndarray, impressions: np.ndarray, clicks: np.ndarray, k: int,
               rng: np.random.Generator | None = None) -> Page:
        """Choose k slots among candidates with model ``scores`` (n,) and logged ``impressions`` / ``clicks``
        (n,). Without exploration (disabled, k too small for one slot, no new item) this is the model's top k."""
        cfg = self.config
        scores = np.asarray(scores, dtype=np.float64)
        impressions = np.maximum(np.asarray(impressions, dtype=np.float64), 0.0)
        clicks = np.clip(np.asarray(clicks, dtype=np.float64), 0.0, impressions)
        if not (len(scores) == len(impressions) == len(clicks)):
            raise ValueError("scores, impressions and clicks must have one value per candidate")
        order = np.argsort(-scores, kind="stable")
        page = order[:k].copy()
        explored = np.zeros(len(page), dtype=bool)
        budget = int(np.floor(cfg.max_share * len(page) + 1e-9))
        pool = order[: max(cfg.pool, k)]
        new = [int(j) for j in pool[len(page):] if impressions[j] < cfg.new_below]
        if not cfg.enabled or budget == 0 or not new:
            return Page(page, explored)
        mu = self.prior_means(scores[pool], impressions[pool], clicks[pool], float(scores[page[-1]]))
        a = cfg.prior_strength * mu + clicks[pool]
        b = cfg.prior_strength * (1.0 - mu) + impressions[pool] - clicks[pool]
        if rng is None:
            with self._lock:
                draws = self._rng.beta(a, b)
        else:
            draws = rng.beta(a, b)
        draw = dict(zip(pool.tolist(), draws.tolist()))
        challengers = sorted(new, key=lambda j: -draw[j])  # stable: equal draws keep the model's order
        slot = len(page) - 1
        for j in challengers[:budget]:
            if draw[j] <= draw[int(page[slot])]:
                break
            page[slot], explored[slot] = j, True
            slot -= 1
        return Page(page, explored)

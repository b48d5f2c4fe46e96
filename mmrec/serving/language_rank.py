"""Language-fair ranking for searches over a catalog listed in many languages (an unfiltered `/search`).

Why: in a multilingual text space part of every similarity says "same language" rather than "same thing",
so a Hindi query's nearest listings are other products in Hindi (केला, banana, finds अंगूर, grapes) before the
product's own listing in English. Each hit is scored against the other hits in ITS language instead: its
similarity minus `strength` x the mean of the `top` best similarities among the query's candidates in that
language (a CSLS-style local correction, per language). A listing that stands out within its language wins
over one that is merely in the query's language; a language whose listings are all far from the query keeps
a low reference. Within one language the order is unchanged, so a single-language catalog or a search
filtered to one language ranks exactly as before. Results are still grouped by product (best hit per
product after re-scoring).

Measured on emoji-market's held-out products (bench/encoders_languages.py, "mixed_gallery_top1_search"):
`top` and `strength` were chosen on hash fold 1, never on the reported fold 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from index import Group, Hit, SearchRequest, VectorStore
from index.store import MAX_K


FETCH_CAP = 4096  # listings re-scored per query at most, however many listings its products have


@dataclass
class LanguageRankConfig:
    """How /search corrects for the query's language (see the module docstring)."""

    enabled: bool = False  # opt-in: `mmrec serve --language-fair-search` (see the README for why)
    pool: int = 200  # candidates (listings) re-scored per query; at least the groups asked for
    top: int = 2  # a language's reference: the mean of its `top` best candidate similarities
    strength: float = 0.8  # 0: plain similarity (with top=1, 1.0 would tie every language's best hit)
    language_field: str = "language"
    group_by: str = "product_id"

    def __post_init__(self) -> None:
        if self.pool < 1 or self.top < 1:
            raise ValueError("language rank needs pool >= 1 and top >= 1")
        if not 0.0 <= self.strength <= 2.0:
            raise ValueError("language rank strength must be in [0, 2]")


def language_fair_scores(scores: Sequence[float], languages: Sequence[Any], top: int = 2,
                         strength: float = 0.8) -> np.ndarray:
    """Each candidate's similarity minus `strength` x the mean of the `top` best similarities of the
    candidates in its language; a language with fewer than `top` candidates fills its reference with the
    lowest candidate similarity (it is far from the query: its few listings stand out). `scores` are one
    query's candidates; `languages` any hashable labels (None is a language of its own)."""
    s = np.asarray(scores, np.float64)
    if s.ndim != 1 or len(s) != len(languages):
        raise ValueError("language_fair_scores needs one score and one language per candidate")
    if len(s) == 0 or strength == 0:
        return s.copy()
    floor = float(s.min())
    labels = np.array([str(l) if l is not None else "\0none" for l in languages], dtype=object)
    out = s.copy()
    for lang in set(labels.tolist()):
        mask = labels == lang
        best = np.sort(s[mask])[::-1][:top]
        if len(best) < top:
            best = np.concatenate([best, np.full(top - len(best), floor)])
        out[mask] = s[mask] - strength * float(best.mean())
    return out


def rank_groups(hits: Sequence[Hit], k: int, config: LanguageRankConfig) -> list[Group]:
    """The top-`k` groups (`config.group_by`) of `hits` by language-fair score, one hit each (its best);
    each hit's `score` stays the index's similarity, the order is the language-fair one."""
    if not hits:
        return []
    fair = language_fair_scores([h.score for h in hits], [h.payload.get(config.language_field) for h in hits],
                                config.top, config.strength)
    best: dict[Any, tuple[float, Hit]] = {}
    for score, hit in zip(fair, hits):
        key = hit.payload.get(config.group_by, hit.item_id)
        if key not in best or score > best[key][0]:
            best[key] = (float(score), hit)
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
    return [Group(key, [hit]) for key, (_, hit) in ranked]


def search_groups(store: VectorStore, requests: Sequence[SearchRequest],
                  config: LanguageRankConfig | None = None) -> list[list[Group]]:
    """`store.search_groups_batch(requests)` (by product, one hit each) with language-fair ordering: one
    batched search for `max(pool, 4k)` listings per query, re-scored by `rank_groups` (4x more, up to
    FETCH_CAP, for a query whose listings cover fewer than k products). Disabled: exactly
    `search_groups_batch`."""
    config = config or LanguageRankConfig()
    if not config.enabled or not requests:
        return store.search_groups_batch(requests, group_by=config.group_by)
    out: list[list[Group]] = [[] for _ in requests]
    limits = [min(max(config.pool, 4 * r.k), MAX_K) for r in requests]  # MAX_K: the most a search returns
    todo = list(range(len(requests)))
    while todo:  # a query whose listings fill fewer than k products (many listings each) fetches more
        wide = [SearchRequest(requests[i].vector, using=requests[i].using, k=limits[i], filter=requests[i].filter,
                              exact=requests[i].exact, hnsw_ef=requests[i].hnsw_ef) for i in todo]
        again = []
        for i, hits in zip(todo, store.search_batch(wide)):
            out[i] = rank_groups(hits, requests[i].k, config)
            if len(out[i]) < requests[i].k and len(hits) >= limits[i] and limits[i] < FETCH_CAP:
                limits[i] = min(4 * limits[i], FETCH_CAP)
                again.append(i)
        todo = again
    return out

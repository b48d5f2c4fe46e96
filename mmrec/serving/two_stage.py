"""Two-stage serving: retrieve candidates from the vector index with the user's content-space vector and
the request's filters, rank them with the fusion transformer, return the top K with reasons.

    history ──► fusion transformer ──► user vector u ──► W_cᵀu (content space) ──► index top-N (+ filters)
                                           │                                            │
                                           └──────────── score(u, item) = u·item ◄──────┘ ──► top-K + reasons

Everything the model needs about an item comes from the index (its fused content vector and listing
market), plus the learned ID embedding when the checkpoint knows the item: a product upserted a second
ago is retrievable and rankable through its content alone, and a listing in another language is near
its siblings because the content space is cross-lingual.

Reasons come from the model (`mmrec.model.attribution`): the history items whose removal makes the
result least likely among the retrieved candidates, with that drop in log-probability, by sequential
leave-one-out deletion (one batched forward per reason over the reduced histories).
New items can get a bounded share of exploration slots (`mmrec.serving.exploration`) when the service
passes per-item impression counts.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index import Filter, HitArrays, Point, SearchRequest, VectorStore, VersionedRows
from mmrec.store.catalog_store import Recommendation, merge_filter
from mmrec.model.transformer import FusionTransformer
from mmrec.data.schema import Event
from mmrec.model.attribution import log_probabilities, sequential_reasons, top_reasons, window_items
from mmrec.model.checkpoint import load_checkpoint
from mmrec.model.features import EventCodes, gather, market_codes
from mmrec.serving.exploration import ExplorationConfig, ExplorationPolicy

log = logging.getLogger(__name__)


@dataclass
class ServingConfig:
    """n_retrieve: candidates fetched from the index before ranking (recall of the first stage vs cost).
    using: the named vector the model was trained on. one_per_product: a product listed in several
    languages takes one slot. exclude_seen_products: never recommend a product already in the history
    (in any language). reasons: "sequential" (the history items whose removal lowers the result's
    log-probability among the retrieved candidates most, one after another, each with the further drop;
    positive only), "leave_one_out" (each item's drop when removed alone; one forward fewer, weaker on
    redundant items) or "cosine" (the history items whose representation is closest to the result's:
    the previous rule, which names the same hub items for every result).
    exploration: new items' share of slots (`mmrec.serving.exploration`; off by default, and only
    active when the recommender is given impression counts)."""

    n_retrieve: int = 200
    using: str = "fused"
    n_reasons: int = 2
    reasons: str = "sequential"
    reason_items: int | None = None  # consider only the newest N distinct history items as reasons (the
    # others stay in the history, just never named): bounds the cost, U + (distinct first reasons) x U
    # rows of forward for U items (a 100-event history of 50 items, hidden 64: ~+215 ms over "cosine" on
    # the loaded 2-core box, ~+70 ms with 20); None = every item the model reads
    one_per_product: bool = True
    exclude_seen_products: bool = True
    cold_offset: float = 0.0  # added to the score of items the model has no ID for (new products): 0 ranks
    # them on content alone, below equally fitting items whose IDs carry their track record; > 0 is the
    # shop's "new arrivals" boost (FusionRecommender.tune_cold_offset measures one on a cold-start split);
    # `exploration` is the principled replacement: exposure that follows new items' clicks
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)


REASONS = ("sequential", "leave_one_out", "cosine")
TABLE_CACHE_ROWS = 1 << 18  # candidates' item_table rows kept (64-d: 64 MB); the oldest are replaced first
ItemCounts = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]
"""item ids -> (impressions (n,), clicks (n,)) from the service's impression log (0 for unknown items)."""


def _as_events(history: Sequence[Event | str | dict]) -> list[Event]:
    """Accept Events, plain item ids (ad-hoc history, oldest first) or event dicts."""
    out: list[Event] = []
    for i, h in enumerate(history):
        if isinstance(h, Event):
            out.append(h)
        elif isinstance(h, str):
            out.append(Event(user_id="", item_id=h, timestamp=0, kind="view"))
        elif isinstance(h, dict):
            out.append(Event(user_id=str(h.get("user_id", "")), item_id=str(h["item_id"]),
                             timestamp=int(h.get("timestamp") or 0), kind=h.get("kind", "view"),
                             value=h.get("value"), market=h.get("market")))
        else:
            raise TypeError(f"history entry {i} is {type(h).__name__}; expected an Event, item id or dict")
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


class TwoStageRecommender:
    """The fusion transformer over a live `index.VectorStore`. ``item_counts`` (impressions, clicks per
    item) turns on exploration for new items when ``config.exploration.enabled``."""

    def __init__(self, model: FusionTransformer, id_items: Sequence[str], store: VectorStore,
                 config: ServingConfig | None = None, *, id_key: str = "item", vectors_version: str = "",
                 item_counts: ItemCounts | None = None) -> None:
        self.model = model.eval()
        self.store = store
        self.config = config or ServingConfig()
        if self.config.reasons not in REASONS:
            raise ValueError(f"reasons must be one of {', '.join(REASONS)}; got {self.config.reasons!r}")
        self.item_counts = item_counts
        self.exploration = ExplorationPolicy(self.config.exploration)
        self.ids_of = {str(x): k + 1 for k, x in enumerate(id_items)}
        self.id_key = id_key  # "product": all listings of a product share its ID row
        self.vectors_version = vectors_version
        self._rows = VersionedRows(model.cfg.hidden, TABLE_CACHE_ROWS)  # candidates' item_table rows by item + version
        self._rows_lock = threading.Lock()
        if store.schema.vectors.get(self.config.using) != model.cfg.content_dim:
            raise ValueError(
                f"the model reads {model.cfg.content_dim}-d content vectors but the store's "
                f"{self.config.using!r} vectors are {store.schema.vectors.get(self.config.using)}-d"
            )

    @classmethod
    def from_checkpoint(cls, path: str | Path, store: VectorStore, *, expect_vectors_version: str | None = None,
                        config: ServingConfig | None = None, item_counts: ItemCounts | None = None,
                        ) -> "TwoStageRecommender":
        ck = load_checkpoint(path, expect_vectors_version=expect_vectors_version)
        return cls(ck.model, ck.id_items, store, config, id_key=ck.id_key, vectors_version=ck.vectors_version,
                   item_counts=item_counts)

    # ---------------------------------------------------------------- pieces

    def _items(self, points: Sequence[Point]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(content (n, C), id codes (n,), market codes (n,)) of stored points."""
        using = self.config.using
        return self._item_codes([p.item_id for p in points], [p.payload for p in points],
                                np.stack([np.asarray(p.vectors[using], dtype=np.float32) for p in points]))

    def _item_codes(self, item_ids: Sequence[str], payloads: Sequence[dict[str, Any]], vectors: np.ndarray
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`_items` for items given as parallel lists and a (n, C) matrix of their content vectors."""
        content = _unit(np.asarray(vectors, dtype=np.float32))
        keys = [p.get("product_id") or i for i, p in zip(item_ids, payloads)] if self.id_key == "product" else item_ids
        get = self.ids_of.get
        ids = np.array([get(str(k), 0) for k in keys], dtype=np.int64)
        markets = market_codes([p.get("market") for p in payloads], self.model.cfg.markets, len(item_ids))
        return torch.from_numpy(content), torch.from_numpy(ids), torch.from_numpy(markets)

    def _codes(self, histories: Sequence[Sequence[Event]], points: dict[str, Point], row: dict[str, int]
               ) -> EventCodes:
        """Histories' events as model codes, one CSR row each; ``row`` maps item ids to rows of the item
        table. Timestamps are used only if some event has one (ad-hoc histories of item ids have none);
        the caller passes histories that agree on that."""
        events = [e for h in histories for e in h]
        ts = np.array([e.timestamp for e in events], dtype=np.int64)
        return EventCodes.build(
            np.array([row[e.item_id] for e in events], dtype=np.int64),
            np.concatenate([[0], np.cumsum([len(h) for h in histories])]), self.model.cfg,
            timestamps=ts if ts.any() else None, kinds=np.array([e.kind for e in events], dtype=object),
            values=np.array([np.nan if e.value is None else e.value for e in events], dtype=np.float64),
            markets=np.array([e.market or points[e.item_id].payload.get("market") for e in events], dtype=object),
        )

    @staticmethod
    def _context(events: Sequence[Event], points: dict[str, Point], context_market: str | None) -> str | None:
        """The storefront: the request's, else the market of the newest event."""
        if context_market is not None:
            return context_market
        return events[-1].market or points[events[-1].item_id].payload.get("market")

    @property
    def _window(self) -> int:
        """Events a request's history is cut to: the model's `max_len`, plus the one before them that codes
        the first one's gap (see `_forward`)."""
        return self.model.cfg.max_len + 1

    @torch.no_grad()
    def user_vector(self, events: Sequence[Event], points: dict[str, Point], context_market: str | None
                    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(u (d,), history item table (h, d), history item ids) for the events whose items are stored (one
        history; `_forward` does the work, as for a batch)."""
        events = [e for e in events if e.item_id in points]
        order = list(dict.fromkeys(e.item_id for e in events[-self.model.cfg.max_len :]))
        table = self.model.item_table(*self._items([points[i] for i in order]))
        u = self._forward([events[-self._window :]], [self._context(events, points, context_market)], points)[0]
        return u, table, order

    # ---------------------------------------------------------------- the request

    @torch.no_grad()
    def recommend(
        self,
        history: Sequence[Event | str | dict],
        k: int = 10,
        filter: Filter | None = None,
        *,
        market: str | None = None,
        negatives: Sequence[str] = (),
        rng: np.random.Generator | None = None,
    ) -> tuple[list[Recommendation], list[str]]:
        """Top-k items for a history (oldest first), within ``filter`` (and ``market``: the storefront,
        which also becomes the model's context market). Returns (recommendations, history item ids
        used, newest first). Items not in the store (deleted) drop out of the history. ``rng`` seeds this
        request's exploration draws (else the policy's own stream)."""
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        t0 = time.perf_counter()
        try:  # torch's thread count is the process's (set once at start), never changed per request
            return self._recommend(_as_events(history), k, filter, market, set(negatives), rng)
        finally:
            log.debug("recommend: %.1f ms", 1000 * (time.perf_counter() - t0))

    @torch.no_grad()
    def recommend_many(self, requests: Sequence[RecommendRequest], *, points: Mapping[str, Point] | None = None
                       ) -> list[tuple[list[Recommendation], list[str]]]:
        """`recommend` for several requests at once (the service's micro-batches, `mmrec.serving.batching`):
        one store lookup for all histories, one transformer forward for all user vectors, one batched
        index query (`VectorStore.search_batch_arrays`: candidates as one matrix, no object per hit), one
        item-table pass for the candidates not cached yet, one forward per reason step for all requests. Each answer
        is the one `recommend` gives that request alone (same items; scores equal up to float rounding);
        per-request filters, k, market, negatives and exploration draws apply as there. Every request is
        checked before any runs (ValueError / TypeError naming the request). ``points``: stored points (with
        their vectors) the caller has just read for some of the histories' items, so they are not read twice."""
        jobs = []
        for i, r in enumerate(requests):
            if r.k < 1:
                raise ValueError(f"request {i}: k must be positive, got {r.k}")
            try:
                events = _as_events(r.history)
            except TypeError as exc:
                raise TypeError(f"request {i}: {exc}") from None
            jobs.append(_Job(events, r.k, r.filter, r.market, set(r.negatives), r.rng))
        t0 = time.perf_counter()
        self._run(jobs, points or {})
        log.debug("recommend_many: %d requests in %.1f ms", len(jobs), 1000 * (time.perf_counter() - t0))
        return [job.answer or ([], []) for job in jobs]

    def _recommend(self, events: list[Event], k: int, flt: Filter | None, market: str | None,
                   negatives: set[str], rng: np.random.Generator | None = None
                   ) -> tuple[list[Recommendation], list[str]]:
        job = _Job(events, k, flt, market, negatives, rng)
        self._run([job])
        return job.answer or ([], [])

    def _run(self, jobs: list[_Job], known: Mapping[str, Point] | None = None) -> None:
        """Answer every job (``job.answer``): the stages below, each per request except the model forwards
        and the index query, which run once for all jobs. ``known``: points already read (`recommend_many`)."""
        cfg = self.config
        for job in jobs:
            job.events = [e for e in job.events if e.item_id not in job.negatives]
        known = known or {}
        wanted = list(dict.fromkeys(e.item_id for job in jobs for e in job.events))
        unread = [i for i in wanted if i not in known]
        read = self.store.get(unread, with_vectors=[cfg.using]) if unread else []
        points = {p.item_id: p for p in (*(known[i] for i in wanted if i in known), *read) if cfg.using in p.vectors}
        live = []
        for job in jobs:
            job.points = {e.item_id: points[e.item_id] for e in job.events if e.item_id in points}
            if not job.points:
                job.answer = ([], [])
                continue
            if job.market is None and job.flt is not None and job.flt.markets and len(job.flt.markets) == 1:
                job.market = job.flt.markets[0]
            job.used = list(dict.fromkeys(e.item_id for e in reversed(job.events) if e.item_id in job.points))
            live.append(job)
        if not live:
            return
        windows = [[e for e in job.events if e.item_id in job.points][-self._window :] for job in live]
        users = self._forward(windows, [self._context(w, points, job.market) for w, job in zip(windows, live)], points)
        # Stage 1: retrieve with the content part of the score, inside each request's filters.
        queries = self.model.content_query(users).numpy()
        found = self.store.search_batch_arrays([
            SearchRequest(q, using=cfg.using, k=max(cfg.n_retrieve, job.k), filter=self._retrieval_filter(job))
            for job, q in zip(live, queries)])
        # Stage 2: rank with the full model score, per request (one item-table pass for every candidate of
        # the batch); then the reasons, batched.
        cands = [self._candidates(job, hits) for job, hits in zip(live, found)]
        for job, cand in zip(live, cands):
            if not len(cand):
                job.answer = ([], job.used)
        scored = [(job, u, cand) for job, u, cand in zip(live, users, cands) if len(cand)]
        if not scored:
            return
        sizes = [len(c) for _, _, c in scored]
        table, ids = self._candidate_table([i for _, _, c in scored for i in c.item_ids],
                                           [p for _, _, c in scored for p in c.payloads],
                                           np.concatenate([c.vectors for _, _, c in scored]),
                                           np.concatenate([c.versions if c.versions is not None else np.full(len(c), -1)
                                                           for _, _, c in scored]))
        tables = torch.split(table, sizes)
        ranked = [r for r in (self._rank(job, u, cand, table, cand_ids) for (job, u, cand), table, cand_ids
                              in zip(scored, tables, torch.split(ids, sizes))) if r is not None]
        if ranked:
            for r, reasons_of in zip(ranked, self._reasons_many(ranked, points)):
                recs = [Recommendation(r.cand.item_ids[j], float(r.scores[j]), dict(r.cand.payloads[j]), reasons_of[i],
                                       r.explored[i]) for i, j in enumerate(r.picked)]
                r.job.answer = (recs, r.job.used)

    @torch.no_grad()
    def _forward(self, rows: Sequence[Sequence[Event]], contexts: Sequence[str | None], points: dict[str, Point]
                 ) -> torch.Tensor:
        """(R, d): the user vector of each row of events in storefront ``contexts[r]``, all rows in one batched
        forward (rows with and without timestamps are coded apart, exactly as each alone would be). A row is
        cut by the caller to `_window` events: the last `max_len` are fed, the one before them only codes the
        first fed event's gap, as training codes it from the whole history. An empty row gets the zero vector."""
        cfg = self.model.cfg
        users = torch.zeros(len(rows), cfg.hidden)
        if not any(rows):
            return users
        order = list(dict.fromkeys(e.item_id for r in rows for e in r))
        row = {iid: i for i, iid in enumerate(order)}
        table = self.model.item_table(*self._items([points[i] for i in order]))
        timed = [any(e.timestamp for e in r) for r in rows]
        for group in ([r for r in range(len(rows)) if rows[r] and timed[r]],
                      [r for r in range(len(rows)) if rows[r] and not timed[r]]):
            if not group:
                continue
            codes = self._codes([rows[r] for r in group], points, row)
            fed = np.minimum(np.diff(codes.indptr), cfg.max_len)
            batch = gather(codes, codes.indptr[1:] - fed, fed)
            hidden = self.model(table, batch["item"], batch["lengths"], batch["kind"], batch["gap"], batch["value"])
            last = hidden[torch.arange(len(group)), batch["lengths"] - 1]
            ctx = market_codes([contexts[r] for r in group], cfg.markets, len(group))
            users[group] = self.model.user_vectors(last, torch.from_numpy(ctx))
        return users

    def _retrieval_filter(self, job: _Job) -> Filter | None:
        """Stage 1's filter for one request: its own, the history (and negatives) excluded, the history's
        products too with `exclude_seen_products`, and the storefront's market."""
        cfg = self.config
        flt, market = job.flt, job.market
        if self.model.cfg.repeat_purchases:  # re-offering is the model's decision: history items compete
            seen_items, seen_products = list(job.negatives), []
        else:
            seen_items = list(job.points) + [n for n in job.negatives]
            seen_products = sorted({str(p.payload.get("product_id") or p.item_id) for p in job.points.values()})
        return merge_filter(flt, seen_items, seen_products if cfg.exclude_seen_products else (),
                            markets=(market,) if market is not None and not (flt and flt.markets) else None)

    def _candidate_table(self, item_ids: list[str], payloads: list[dict[str, Any]], vectors: np.ndarray,
                         versions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(item_table rows (n, d), ID codes (n,)) of candidates: from the cache where it holds the item at
        the version the store reported (-1: unknown, not cached), the rest computed in one pass. Most
        candidates recur across requests, and their rows cost a (n x C) x (C x d) product per request."""
        n = len(item_ids)
        table = np.empty((n, self.model.cfg.hidden), dtype=np.float32)
        ids = np.empty(n, dtype=np.int64)
        found = np.zeros(n, dtype=bool)
        with self._rows_lock:
            at, rows = self._rows.find(item_ids, versions)
            table[at] = self._rows.matrix[rows]
            tags = self._rows.tags
            ids[at] = [tags[r] for r in rows.tolist()]
            found[at] = True
        missing = np.flatnonzero(~found)
        if len(missing):
            content, miss_ids, markets = self._item_codes([item_ids[i] for i in missing],
                                                          [payloads[i] for i in missing], vectors[missing])
            rows = self.model.item_table(content, miss_ids, markets).numpy()
            table[missing], ids[missing] = rows, miss_ids.numpy()
            with self._rows_lock:
                for j, i in enumerate(missing.tolist()):
                    if versions[i] >= 0:
                        self._rows.put(item_ids[i], int(versions[i]), rows[j], int(ids[i]))
        return torch.from_numpy(table), torch.from_numpy(ids)

    def _candidates(self, job: _Job, hits: HitArrays) -> HitArrays:
        """Stage 2's candidates for one request: the retrieved hits, and with a repeat_purchases model the
        history's items that pass the request's filter, retrieved or not (none when nothing was retrieved)."""
        if not self.model.cfg.repeat_purchases or not len(hits):
            return hits
        retrieved = set(hits.item_ids)
        extra = [p for p in job.points.values() if p.item_id not in retrieved and _passes(job.flt, job.market, p)]
        if not extra:
            return hits
        using = self.config.using
        return HitArrays(hits.item_ids + [p.item_id for p in extra],
                         np.concatenate([hits.scores, np.full(len(extra), np.nan)]),
                         hits.payloads + [p.payload for p in extra],
                         np.concatenate([hits.vectors, np.stack([np.asarray(p.vectors[using], dtype=np.float32)
                                                                 for p in extra])]),
                         None if hits.versions is None else np.concatenate([hits.versions, np.full(len(extra), -1)]))

    def _rank(self, job: _Job, u: torch.Tensor, cand: HitArrays, table: torch.Tensor, ids: torch.Tensor
              ) -> _Ranked | None:
        """Stage 2 for one request: the candidates (`_candidates`, with their `item_table` rows and ID codes)
        scored with the full model (content + ID when warm + market), one listing per product,
        exploration slots; None (and ``job.answer`` set) when nothing is left to show."""
        cfg = self.config
        k, rng = job.k, job.rng
        scores = (table @ u).numpy()
        if self.model.cfg.repeat_purchases:
            self._add_repeat_bonus(job, u, [Point(i, {}, p) for i, p in zip(cand.item_ids, cand.payloads)], table,
                                   scores)
        if cfg.cold_offset:
            scores[ids.numpy() == 0] += cfg.cold_offset
        order = np.argsort(-scores, kind="stable")
        explore = cfg.exploration.enabled and self.item_counts is not None
        limit = max(k, cfg.exploration.pool) if explore else k
        picked, products = [], set()
        for j in order:
            product = str(cand.payloads[j].get("product_id") or cand.item_ids[j])
            if cfg.one_per_product and product in products:
                continue
            products.add(product)
            picked.append(int(j))
            if len(picked) == limit:
                break
        explored = [False] * min(len(picked), k)
        if explore and picked:
            impressions, clicks = self.item_counts([cand.item_ids[j] for j in picked])
            page = self.exploration.select(scores[picked], impressions, clicks, k, rng)
            picked = [picked[int(i)] for i in page.slots]
            explored = [bool(x) for x in page.explored]
        if not picked:
            job.answer = ([], job.used)
            return None
        return _Ranked(job, u, cand, table, ids, scores, picked, explored)

    def _add_repeat_bonus(self, job: _Job, u: torch.Tensor, cand: Sequence[Point], table: torch.Tensor,
                          scores: np.ndarray) -> None:
        """A repeat_purchases model's bonus on the candidates the shopper bought before."""
        from mmrec.model.features import history_repeat_pairs

        # in time order (stable): a basket is one timestamp's events, as `evaluation.basket_ids` and training
        # define it, even when the log received a basket's lines out of order
        history = sorted((e for e in job.events if e.item_id in job.points), key=lambda e: e.timestamp)
        order = list(dict.fromkeys(e.item_id for e in history))
        codes = self._codes([history], job.points, {iid: i for i, iid in enumerate(order)})
        row, item, ago, nb, share, decayed, span = history_repeat_pairs(codes, decay=self.model.cfg.repeat_decay)
        where = {p.item_id: j for j, p in enumerate(cand)}
        js = np.array([where.get(order[int(i)], -1) for i in item], dtype=np.int64)
        keep = js >= 0
        if not keep.any():
            return
        bonus = self.model.repeat_bonus(u[None, :], torch.from_numpy(row[keep]), torch.from_numpy(ago[keep]),
                                        torch.from_numpy(nb[keep]), torch.from_numpy(share[keep]),
                                        table[torch.from_numpy(js[keep])], torch.from_numpy(decayed[keep]),
                                        torch.from_numpy(span[keep])).numpy()
        np.add.at(scores, js[keep], bonus)

    def _reasons_many(self, ranked: Sequence[_Ranked], points: dict[str, Point]) -> list[list[list[tuple[str, float]]]]:
        """Reasons for every result of every request (``ServingConfig.reasons``): up to ``n_reasons``
        (history item id, drop in the result's log-probability among the candidates without that item),
        largest first; each deletion step one forward over the reduced histories of all requests."""
        cfg = self.config
        max_len = self.model.cfg.max_len
        histories = [[e for e in r.job.events if e.item_id in r.job.points] for r in ranked]
        if cfg.reasons == "cosine":  # the history items whose model representation is closest to each result's
            out = []
            for r, events in zip(ranked, histories):
                hist_ids = list(dict.fromkeys(e.item_id for e in events[-max_len:]))
                hist_table = self.model.item_table(*self._items([points[i] for i in hist_ids]))
                sims = _unit(r.table[r.picked].numpy()) @ _unit(hist_table.numpy()).T
                out.append([[(hist_ids[int(t)], float(sims[i, t]))
                             for t in np.argsort(-sims[i], kind="stable")[: cfg.n_reasons]] for i in range(len(r.picked))])
            return out
        windows = [window_items([e.item_id for e in h], max_len) for h in histories]
        windows = [w[: cfg.reason_items] if cfg.reason_items else w for w in windows]
        width = max(len(r.picked) for r in ranked)  # results padded (repeating the last) to one width
        results = [np.asarray(r.picked + [r.picked[-1]] * (width - len(r.picked))) for r in ranked]
        tables = [r.table.numpy() for r in ranked]
        biases = [np.where(r.ids.numpy() == 0, cfg.cold_offset, 0.0) for r in ranked]

        def value_of(b: int, users: np.ndarray) -> np.ndarray:
            return log_probabilities(users, tables[b], results[b], biases[b])

        def users_without(owner: list[int], sets: list[tuple]) -> np.ndarray:
            rows = [[e for e in histories[b] if e.item_id not in gone][-self._window :] for b, gone in zip(owner, sets)]
            contexts = [self._context(row, points, ranked[b].job.market) if row else None
                        for b, row in zip(owner, rows)]
            return self._forward(rows, contexts, points).numpy()

        full = np.concatenate([value_of(b, r.u.numpy()[None, :]) for b, r in enumerate(ranked)])
        if cfg.reasons == "leave_one_out":
            without = users_without([b for b, w in enumerate(windows) for _ in w], [(x,) for w in windows for x in w])
            out, at = [], 0
            for b, (r, w) in enumerate(zip(ranked, windows)):
                attr = full[b : b + 1] - value_of(b, without[at : at + len(w)])  # (U, K)
                at += len(w)
                out.append([top_reasons(w, attr[:, i], cfg.n_reasons) for i in range(len(r.picked))])
            return out
        found = sequential_reasons(windows, full, value_of, users_without, cfg.n_reasons)
        return [found[b][: len(r.picked)] for b, r in enumerate(ranked)]


@dataclass
class RecommendRequest:
    """One request of a batch (`TwoStageRecommender.recommend_many`): the arguments of `recommend`."""

    history: Sequence[Event | str | dict]
    k: int = 10
    filter: Filter | None = None
    market: str | None = None
    negatives: Sequence[str] = ()
    rng: np.random.Generator | None = None


@dataclass
class _Job:
    """A request on its way through `TwoStageRecommender._run`; ``answer`` is set when it is done."""

    events: list[Event]
    k: int
    flt: Filter | None
    market: str | None
    negatives: set[str]
    rng: np.random.Generator | None = None
    points: dict[str, Point] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)
    answer: tuple[list[Recommendation], list[str]] | None = None


@dataclass
class _Ranked:
    """A request after stage 2: its candidates, their item table, ID codes and scores, the picked results
    (candidate indices in page order) and which were explored."""

    job: _Job
    u: torch.Tensor
    cand: HitArrays
    table: torch.Tensor
    ids: torch.Tensor
    scores: np.ndarray
    picked: list[int]
    explored: list[bool]


def _passes(flt: Filter | None, market: str | None, point: Point) -> bool:
    """Whether a history item may be re-offered under a request's storefront and filter (the index applies
    both to retrieved items; `Filter.matches` gives a held point the same semantics)."""
    payload = point.payload or {}
    if market is not None and not (flt and flt.markets) and payload.get("market") not in (None, market):
        return False
    return flt is None or flt.matches(point.item_id, payload)


def load_ranker(path: str | Path, catalog: Any, config: ServingConfig | None = None,
                item_counts: ItemCounts | None = None) -> TwoStageRecommender:
    """The fusion transformer behind the service: a checkpoint over a `CatalogStore`'s vector store,
    refused if it was trained on vectors from another encoder setup than the catalog's."""
    return TwoStageRecommender.from_checkpoint(path, catalog.store, config=config, item_counts=item_counts,
                                               expect_vectors_version=catalog.encoder.space)

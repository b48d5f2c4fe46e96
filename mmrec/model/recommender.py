"""`FusionRecommender`: the fusion transformer behind the `evaluation.Recommender` protocol over a split's
item vocabulary, so every benchmark trains and scores it exactly like the baselines."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation import EvalSet, Histories, Interactions, Recommendations, as_histories, evaluate_cases, top_k
from mmrec.errors import UserError
from mmrec.model.attribution import (leave_one_out_rows, log_probabilities, sequential_reasons, window_items,
                                     without_items)
from mmrec.model.checkpoint import load_checkpoint, save_checkpoint
from mmrec.model.features import EventCodes, ItemSide, gather, history_repeat_pairs, market_codes
from encoders.threads import torch_threads
from mmrec.model.training import TrainConfig, train_model
from mmrec.model.transformer import FusionConfig, FusionTransformer
from mmrec.model.vectors import vectors_version as matrix_version


@dataclass
class FusionRecommender:
    """The fusion transformer as an `evaluation.Recommender` over a split's item vocabulary.

    ``item_vectors`` (n_items, C) is aligned with ``split.item_ids``; ``item_market`` (n_items,) gives
    each item's listing market (or None); ``item_products`` (n_items,) each item's product id: with it,
    the listings of one product share one ID embedding (a purchase in one market teaches the model about
    that product's listings in every other). Items (products) with training events get an ID embedding;
    the others (cold) get the learned "unknown item" row and are ranked through their content. ``fit``
    trains from scratch, or fine-tunes the model already held (``resume=True``), keeping the ID rows it
    knew and adding new ones.
    """

    item_vectors: np.ndarray
    config: FusionConfig | None = None
    train_config: TrainConfig = field(default_factory=TrainConfig)
    item_ids: np.ndarray | None = None
    item_market: np.ndarray | None = None
    item_products: np.ndarray | None = None
    vectors_version: str = ""
    name: str = "mmrec"
    value_lookup: Any = None  # optional callable(Histories) -> (nnz,) event values (ratings) or None
    cold_offset: float = 0.0  # added to the scores of items without an ID (see tune_cold_offset)
    model_: FusionTransformer | None = field(default=None, repr=False)
    id_items_: list[str] = field(default_factory=list, repr=False)
    report_: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        vecs = np.asarray(self.item_vectors, dtype=np.float32)
        if vecs.ndim != 2:
            raise ValueError(f"item_vectors must be (n_items, C), got shape {vecs.shape}")
        if not self.vectors_version:
            self.vectors_version = matrix_version(vecs)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = vecs / np.where(norms > 0, norms, 1.0)  # the model expects unit vectors, like the index
        self.item_vectors = vecs

    # ---------------------------------------------------------------- setup

    def _markets(self) -> tuple[str, ...]:
        if self.item_market is None:
            return ()
        return tuple(sorted({str(m) for m in self.item_market if isinstance(m, str)}))

    @property
    def id_key(self) -> str:
        return "product" if self.item_products is not None else "item"

    def _id_keys(self) -> np.ndarray:
        """What each item's ID row is keyed by: its product id, or its own id."""
        if self.item_products is not None:
            if len(self.item_products) != len(self.item_vectors):
                raise ValueError(f"item_products has {len(self.item_products)} rows, item_vectors {len(self.item_vectors)}")
            return np.asarray(self.item_products, dtype=object)
        return np.asarray(self.item_ids, dtype=object)

    def _item_side(self) -> ItemSide:
        cfg = self.model_.cfg
        n = len(self.item_vectors)
        ids_of = {iid: k + 1 for k, iid in enumerate(self.id_items_)}
        ids = np.fromiter((ids_of.get(str(x), 0) for x in self._id_keys()), dtype=np.int64, count=n)
        market = market_codes(self.item_market, cfg.markets, n)
        return ItemSide(torch.from_numpy(self.item_vectors), torch.from_numpy(ids), torch.from_numpy(market))

    def fit(self, train: Interactions, valid: EvalSet | None = None, *, resume: bool = False) -> "FusionRecommender":
        if train.n_items != len(self.item_vectors):
            raise ValueError(f"item_vectors has {len(self.item_vectors)} rows but the split has {train.n_items} "
                             "items; align the vectors with split.item_ids")
        if self.item_ids is None:
            self.item_ids = np.asarray(train.item_ids, dtype=object)
        if self.train_config.id_init not in ("random", "cooccurrence"):
            raise ValueError(f"id_init must be 'random' or 'cooccurrence', got {self.train_config.id_init!r}")
        counts = train.item_counts()
        warm_names = list(dict.fromkeys(str(k) for k in self._id_keys()[counts > 0]))
        tc = self.train_config
        base_cfg = self.model_.cfg if (resume and self.model_ is not None) else self.config
        repeats = bool(base_cfg is not None and base_cfg.repeat_purchases)
        if repeats:  # repeat targets are the point; the repeat bonus is trained with the sampled softmax
            tc = replace(tc, skip_repeat_targets=False, loss="sampled" if tc.loss == "auto" else tc.loss,
                         validate_initial=True)  # its init ranks history items by the decayed count
        decay_search: list[dict] = []
        if resume and self.model_ is not None:
            known = set(self.id_items_)
            new = [x for x in warm_names if x not in known]
            self._grow_ids(len(new))
            self.id_items_ = self.id_items_ + new
        else:
            base = self.config or FusionConfig(content_dim=self.item_vectors.shape[1])
            cfg = replace(base, content_dim=self.item_vectors.shape[1], n_ids=len(warm_names), markets=self._markets())
            if repeats and cfg.repeat_decay > 0 and valid is not None and len(valid):
                decay_search = choose_repeat_decay(valid, cfg)
                cfg = replace(cfg, repeat_decay=decay_search[0]["decay"])
            torch.manual_seed(tc.seed)
            self.model_ = FusionTransformer(cfg)
            self.id_items_ = warm_names
        with torch_threads(tc.num_threads):
            items = self._item_side()
            codes = EventCodes.from_interactions(train, self.model_.cfg)
            if not resume and tc.id_init == "cooccurrence":
                self._init_ids(items, codes)
            validate = None
            if valid is not None and len(valid):
                vset = valid
                if tc.eval_max_cases and len(valid) > tc.eval_max_cases:
                    pick = np.random.default_rng(tc.seed).choice(len(valid), tc.eval_max_cases, replace=False)
                    vset = valid.subset(np.sort(pick))

                def validate() -> float:
                    per_case, _, _ = evaluate_cases(self, vset, train.n_items, ks=(10,), metrics=("ndcg",),
                                                    exclude_seen=not repeats)
                    return float(np.nanmean(per_case["ndcg@10"]))

            self.report_ = train_model(self.model_, items, codes, tc, catalog=np.flatnonzero(counts > 0),
                                       validate=validate, log_prefix=self.name)
        self.report_["n_parameters"] = self.model_.n_parameters()
        if decay_search:
            self.report_["repeat_decay_search"] = decay_search
        if repeats and valid is not None and len(valid):
            self.tune_repeat_weight(vset)
        return self

    def tune_repeat_weight(self, valid: EvalSet, grid: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
                           max_cases: int = 1000) -> float:
        """Pick the weight of the repeat bonus against the model's content/ID score that maximises NDCG@10
        on ``valid`` (history items allowed; a seeded sample of ``max_cases``): how far to trust "what you
        buy most" over what the sequence model predicts is measured on the validation baskets, never on the
        test. Kept in the config, so the checkpoint and the service use it."""
        if len(valid) > max_cases:
            pick = np.random.default_rng(self.train_config.seed).choice(len(valid), max_cases, replace=False)
            valid = valid.subset(np.sort(pick))
        best, best_w = -1.0, self.model_.cfg.repeat_weight
        for w in grid:
            self.model_.cfg.repeat_weight = float(w)
            per_case, _, _ = evaluate_cases(self, valid, len(self.item_vectors), ks=(10,), metrics=("ndcg",),
                                            exclude_seen=False)
            score = float(np.nanmean(per_case["ndcg@10"]))
            self.report_.setdefault("repeat_weight_search", []).append({"weight": float(w), "valid_ndcg@10": score})
            if score > best:
                best, best_w = score, float(w)
        self.model_.cfg.repeat_weight = best_w
        self.report_["repeat_weight"] = best_w
        return best_w

    def _init_ids(self, items: ItemSide, codes: EventCodes) -> None:
        """Overwrite the warm ID rows with co-occurrence embeddings (row 0, "unknown item", keeps its init)."""
        tc, model = self.train_config, self.model_
        if not (model.cfg.use_ids and model.cfg.n_ids):
            return
        from mmrec.model.cooccurrence import cooccurrence_matrix, ppmi_embeddings

        event_ids = items.ids.numpy()[codes.item] - 1  # (events,) ID row - 1, -1 = no ID
        counts = cooccurrence_matrix(event_ids, codes.indptr, model.cfg.n_ids, tc.id_init_window)
        emb = ppmi_embeddings(counts, model.cfg.hidden, seed=tc.seed)
        with torch.no_grad():
            model.id_emb.weight[1:] = torch.from_numpy(emb)

    def _grow_ids(self, n_new: int) -> None:
        """Add ``n_new`` ID rows, initialised as the "unknown item" row: a new item starts exactly where
        serving it cold left it."""
        if n_new <= 0:
            return
        model = self.model_
        old = model.id_emb.weight.data
        cfg = replace(model.cfg, n_ids=model.cfg.n_ids + n_new)
        grown = FusionTransformer(cfg)
        state = model.state_dict()
        state["id_emb.weight"] = torch.cat([old, old[0:1].repeat(n_new, 1)])
        grown.load_state_dict(state)
        self.model_ = grown

    # ---------------------------------------------------------------- inference

    @torch.no_grad()
    def user_vectors(self, histories: Histories | Sequence[Sequence[int]], batch_size: int = 256,
                     values: np.ndarray | None = None, table: torch.Tensor | None = None) -> np.ndarray:
        """(n, d) user vector of each history (its last event's hidden state + storefront market).
        ``table``: the item table when the caller already has it (many calls with one model)."""
        if self.model_ is None:
            raise RuntimeError("call fit() first")
        h = as_histories(histories)
        model = self.model_
        cfg = model.cfg
        model.eval()
        if values is None and self.value_lookup is not None:
            values = self.value_lookup(h)
        codes = EventCodes.from_histories(h, cfg, values=values)
        items = self._item_side()
        ctx = market_codes(h.context_market, cfg.markets, len(h)) if h.context_market is not None else None
        if ctx is None:  # no storefront given: the market of the last event
            last = np.maximum(h.indptr[1:] - 1, 0)
            ctx = codes.market[last] if len(codes.market) else np.zeros(len(h), np.int64)
        out = np.zeros((len(h), cfg.hidden), dtype=np.float32)
        lengths_all = h.lengths
        nonempty = np.flatnonzero(lengths_all > 0)
        with torch_threads(self.train_config.num_threads):
            if table is None:
                table = model.item_table(items.content, items.ids, items.market)
            for s in range(0, len(nonempty), batch_size):
                rows = nonempty[s : s + batch_size]
                lengths = np.minimum(lengths_all[rows], cfg.max_len)
                starts = h.indptr[rows + 1] - lengths
                batch = gather(codes, starts, lengths)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.train_config.bf16):
                    hid = model(table, batch["item"], batch["lengths"], batch["kind"], batch["gap"], batch["value"])
                last = hid[torch.arange(len(rows)), batch["lengths"] - 1].float()
                out[rows] = model.user_vectors(last, torch.from_numpy(ctx[rows])).numpy()
        return out

    @torch.no_grad()
    def item_matrix(self) -> np.ndarray:
        """(n_items, d) the ranking head's representation of every item of the vocabulary."""
        items = self._item_side()
        return self.model_.item_table(items.content, items.ids, items.market).numpy()

    def recommend(
        self,
        histories: Histories | Sequence[Sequence[int]],
        k: int,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
    ) -> Recommendations:
        h = as_histories(histories)
        users = self.user_vectors(h)
        table = self.item_matrix()
        scores = users @ table.T
        if self.model_.cfg.repeat_purchases and len(h.items):
            self._add_repeat_bonus(scores, h, users, table)
        if self.cold_offset:
            scores[:, self._item_side().ids.numpy() == 0] += self.cold_offset
        scores[h.lengths == 0] = 0.0
        return top_k(scores, k, histories=h if exclude_seen else None, candidates=candidates)

    @torch.no_grad()
    def _add_repeat_bonus(self, scores: np.ndarray, h: Histories, users: np.ndarray, table: np.ndarray) -> None:
        """Add the model's repeat bonus to the history items of each row: every item of the whole history
        (the transformer reads the last max_len events; the bonus of an item bought before that window
        comes from its recency and frequency buckets alone)."""
        codes = EventCodes.from_histories(h, self.model_.cfg)
        row, item, ago, nb, share, decayed, span = history_repeat_pairs(codes, decay=self.model_.cfg.repeat_decay)
        with torch_threads(self.train_config.num_threads):
            bonus = self.model_.repeat_bonus(torch.from_numpy(users), torch.from_numpy(row), torch.from_numpy(ago),
                                             torch.from_numpy(nb), torch.from_numpy(share),
                                             torch.from_numpy(table[item]), torch.from_numpy(decayed),
                                             torch.from_numpy(span)).numpy()
        np.add.at(scores, (row, item), bonus)

    def _candidates(self, h: Histories, candidates: Sequence[np.ndarray] | np.ndarray | None) -> list[np.ndarray]:
        """Per row, the items its results were ranked among (sorted): ``candidates`` (one array for all
        rows, or one per row; None = every item) minus the row's history, as `recommend` ranks them."""
        n = len(self.item_vectors)
        if candidates is None or (isinstance(candidates, np.ndarray) and candidates.ndim == 1):
            base = np.arange(n) if candidates is None else np.asarray(candidates, dtype=np.int64)
            per_row = [base] * len(h)
        else:
            per_row = [np.asarray(c, dtype=np.int64) for c in candidates]
        return [np.setdiff1d(per_row[b], h[b]) for b in range(len(h))]

    def _value_of(self, table: np.ndarray, cands: list[np.ndarray], targets: np.ndarray):
        """(row b, user vectors) -> log p(row b's targets) among its candidates (`log_probabilities`)."""
        cold = self._item_side().ids.numpy() == 0
        bias = [self.cold_offset * cold[c] if self.cold_offset else None for c in cands]
        where = []
        for b, c in enumerate(cands):
            pos = np.searchsorted(c, targets[b])
            if np.any(pos >= len(c)) or np.any(c[np.minimum(pos, len(c) - 1)] != targets[b]):
                raise ValueError(f"row {b}: a target is not among its candidates (or is in its history)")
            where.append(pos)
        return lambda b, users: log_probabilities(users, table[cands[b]], where[b], bias[b])

    @torch.no_grad()
    def attributions(self, histories: Histories | Sequence[Sequence[int]], targets: np.ndarray,
                     candidates: Sequence[np.ndarray] | np.ndarray | None = None, values: np.ndarray | None = None,
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Leave-one-out attribution (`mmrec.model.attribution`) of each row's history items to its
        targets (n, K): per row, (items (U,), values (U, K)) with values[u, k] = log p(targets[k] | row)
        - log p(targets[k] | row without any event of items[u]), p = the softmax over the row's
        candidates (see `_candidates`); items newest first. One batched forward over all reduced rows."""
        if self.model_ is None:
            raise RuntimeError("call fit() first")
        h = as_histories(histories)
        targets = np.asarray(targets, dtype=np.int64).reshape(len(h), -1)
        table_t, table = self._table()
        value_of = self._value_of(table, self._candidates(h, candidates), targets)
        reduced = leave_one_out_rows(h, self.model_.cfg.max_len)
        full = self.user_vectors(h, values=values, table=table_t)
        without = self.user_vectors(reduced.histories, table=table_t,
                                    values=None if values is None else values[reduced.positions])
        out = []
        for b in range(len(h)):
            rows = np.flatnonzero(reduced.owner == b)
            items = np.asarray([reduced.removed[r][0] for r in rows], dtype=np.int64)
            out.append((items, value_of(b, full[b : b + 1]) - value_of(b, without[rows])))
        return out

    @torch.no_grad()
    def explain(self, histories: Histories | Sequence[Sequence[int]], targets: np.ndarray, n_reasons: int = 2,
                candidates: Sequence[np.ndarray] | np.ndarray | None = None, values: np.ndarray | None = None,
                ) -> list[list[list[tuple[int, float]]]]:
        """Reasons per row and target (n, K): up to ``n_reasons`` (history item, drop in log-probability)
        pairs by sequential leave-one-out deletion (`mmrec.model.attribution.sequential_reasons`), largest
        first. The first reason chosen is the leave-one-out top item (`attributions`); the values of a
        result's reasons add up to its drop without all of them."""
        if self.model_ is None:
            raise RuntimeError("call fit() first")
        h = as_histories(histories)
        targets = np.asarray(targets, dtype=np.int64).reshape(len(h), -1)
        table_t, table = self._table()
        value_of = self._value_of(table, self._candidates(h, candidates), targets)
        full = self.user_vectors(h, values=values, table=table_t)
        full_values = np.concatenate([value_of(b, full[b : b + 1]) for b in range(len(h))])

        def users_without(owner: list[int], sets: list[tuple]) -> np.ndarray:
            reduced = without_items(h, [list(s) for s in sets], owner)
            return self.user_vectors(reduced.histories, table=table_t,
                                     values=None if values is None else values[reduced.positions])

        items = [[int(x) for x in window_items(h[b], self.model_.cfg.max_len + 1)] for b in range(len(h))]
        return sequential_reasons(items, full_values, value_of, users_without, n_reasons)

    def _table(self) -> tuple[torch.Tensor, np.ndarray]:
        """The item table once, as a tensor (for `user_vectors`) and as an array."""
        items = self._item_side()
        with torch_threads(self.train_config.num_threads):
            table = self.model_.item_table(items.content, items.ids, items.market)
        return table, table.numpy()

    def tune_cold_offset(self, valid: EvalSet, grid: Sequence[float] = (0, 0.5, 1, 1.5, 2, 3, 4, 6, 8)) -> float:
        """Pick the score offset for items without an ID (cold items) that maximises NDCG@10 on
        ``valid``: how much a new product should be favoured over known ones is a business knob, and on
        a cold-start protocol it is tuned on that protocol's validation cases, never on the test."""
        best, best_offset = -1.0, 0.0
        for offset in grid:
            self.cold_offset = float(offset)
            per_case, _, _ = evaluate_cases(self, valid, len(self.item_vectors), ks=(10,), metrics=("ndcg",))
            score = float(np.nanmean(per_case["ndcg@10"]))
            self.report_.setdefault("cold_offset_search", []).append({"offset": float(offset), "valid_ndcg@10": score})
            if score > best:
                best, best_offset = score, float(offset)
        self.cold_offset = best_offset
        return best_offset

    # ---------------------------------------------------------------- persistence

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        info = {"train_config": asdict(self.train_config), "report": _jsonable(self.report_)}
        info.update(extra or {})
        return save_checkpoint(path, self.model_, id_items=self.id_items_, vectors_version=self.vectors_version,
                               id_key=self.id_key, extra=info)

    @classmethod
    def load(cls, path: str | Path, item_vectors: np.ndarray, *, item_ids: np.ndarray,
             item_market: np.ndarray | None = None, item_products: np.ndarray | None = None,
             vectors_version: str | None = None, train_config: TrainConfig | None = None) -> "FusionRecommender":
        """A fitted recommender from a checkpoint over a (possibly different) item vocabulary."""
        version = vectors_version or matrix_version(np.asarray(item_vectors, dtype=np.float32))
        ck = load_checkpoint(path, expect_vectors_version=version)
        if ck.id_key == "product" and item_products is None:
            raise UserError(f"checkpoint {path} keys its IDs by product: pass item_products")
        tc = train_config or TrainConfig(**{k: v for k, v in ck.extra.get("train_config", {}).items()
                                             if k in TrainConfig.__dataclass_fields__})
        rec = cls(item_vectors=item_vectors, config=ck.model.cfg, train_config=tc, item_ids=np.asarray(item_ids, dtype=object),
                  item_market=item_market, item_products=item_products if ck.id_key == "product" else None,
                  vectors_version=version)
        rec.model_ = ck.model
        rec.id_items_ = ck.id_items
        rec.report_ = ck.extra.get("report", {})
        return rec


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def choose_repeat_decay(valid: EvalSet, cfg: FusionConfig, grid: Sequence[float] = (0.8, 0.9, 0.95, 0.98, 1.0),
                        k: int = 10) -> list[dict]:
    """The per-basket decay of the repeat bonus's purchase count, chosen on the validation baskets before
    training: each candidate decay ranks every shopper's history items by the decayed count alone (the
    bonus's starting point; ties: more recent first) and the best NDCG@k wins. How fast old purchases stop
    mattering differs between shops (weekly grocery runs vs daily top-ups), so it is measured per catalog;
    1.0 is the plain count of the personal top-frequency baseline. Returns the search, best first."""
    from evaluation.metrics import accuracy_metrics_batch, hit_matrix

    h = valid.histories
    relevant = valid.relevant_sets()
    out = []
    for d in grid:
        codes = EventCodes.from_histories(h, replace(cfg, repeat_decay=float(d)))
        row, item, ago, _, _, decayed, _ = history_repeat_pairs(codes, decay=float(d))
        order = np.lexsort((ago, -decayed, row))  # per row: larger decayed count first, then more recent
        row, item = row[order], item[order]
        rank = np.arange(len(row)) - np.searchsorted(row, row, side="left")
        recs = np.full((len(h), k), -1, dtype=np.int64)
        top = rank < k
        recs[row[top], rank[top]] = item[top]
        hits, n_rel = hit_matrix(recs, relevant)
        score = float(np.mean(accuracy_metrics_batch(hits, n_rel, (k,), ("ndcg",))[f"ndcg@{k}"]))
        out.append({"decay": float(d), f"valid_ndcg@{k}": round(score, 5)})
    return sorted(out, key=lambda r: -r[f"valid_ndcg@{k}"])

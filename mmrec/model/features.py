"""A shopper's events as the small integer codes the fusion transformer reads (numpy; shared by training
and serving), and the item side the model ranks over.

Per event: the item's row in the item table, the gap since the previous event (log-scale bucket), the event
kind, its value (rating / quantity bucket) and the market it happened in. Histories are held CSR-style
(``indptr``), many rows at once; `gather` cuts right-padded (B, W) batches out of them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from evaluation import Histories, Interactions
from mmrec.data.schema import EVENT_KINDS
from mmrec.model.transformer import FusionConfig

PAD_GAP, FIRST_GAP, ZERO_GAP = 0, 1, 2  # gap buckets below the log-scale ones
NO_NEXT = np.iinfo(np.int64).max  # `EventCodes.next_basket` of an item's last event in its row


def gap_buckets(gaps: np.ndarray, first: np.ndarray, n_buckets: int) -> np.ndarray:
    """Seconds since the previous event -> bucket: FIRST_GAP where ``first``, ZERO_GAP for 0 s, then
    3 + floor(log2(gap)) (1 s .. ~years), capped at n_buckets - 1. Negative gaps count as 0 s."""
    gaps = np.maximum(np.asarray(gaps, dtype=np.float64), 0.0)
    out = np.where(gaps < 1, ZERO_GAP, 3 + np.floor(np.log2(np.maximum(gaps, 1.0)))).astype(np.int64)
    out = np.minimum(out, n_buckets - 1)
    out[np.asarray(first, dtype=bool)] = FIRST_GAP
    return out


def kind_codes(kinds: np.ndarray | None, n: int) -> np.ndarray:
    """Event kind -> 1 + index in EVENT_KINDS (0 = unknown)."""
    if kinds is None:
        return np.zeros(n, dtype=np.int64)
    lookup = {k: i + 1 for i, k in enumerate(EVENT_KINDS)}
    return np.fromiter((lookup.get(k, 0) for k in kinds), dtype=np.int64, count=n)


def value_codes(values: np.ndarray | None, n: int, n_buckets: int) -> np.ndarray:
    """Event value (rating 1-5, quantity) -> 1 + round(value) clipped to the table (0 = unknown)."""
    if values is None:
        return np.zeros(n, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    out = 1 + np.clip(np.rint(np.nan_to_num(v, nan=0.0)), 0, n_buckets - 2).astype(np.int64)
    out[np.isnan(v)] = 0
    return out


def market_codes(markets: np.ndarray | list | None, vocabulary: tuple[str, ...], n: int) -> np.ndarray:
    """Market/language string -> 1 + index in the config's vocabulary (0 = unknown or None)."""
    if markets is None:
        return np.zeros(n, dtype=np.int64)
    lookup = {m: i + 1 for i, m in enumerate(vocabulary)}
    return np.fromiter((lookup.get(m, 0) if isinstance(m, str) else 0 for m in markets), dtype=np.int64, count=n)


def decayed_counts(basket: np.ndarray, group_start: np.ndarray, new_basket: np.ndarray, decay: float) -> np.ndarray:
    """Events sorted by (row, item, time): per event, sum over the distinct baskets of its group (one row's
    events of one item) up to its own of ``decay ** (its basket - that basket)``. A household's recent
    purchases of an item say more about its next basket than old ones (TIFU-KNN, Hu et al. SIGIR 2020):
    on Complete Journey's validation baskets, ranking history items by this count with decay 0.95 per
    basket scores NDCG@10 .206 against .200 for the plain count. A loop: the recurrence
    d = 1 + decay ** gap * d_prev never overflows, which powers of the basket index would."""
    n = len(basket)
    out = np.ones(n, dtype=np.float64)
    if n == 0 or decay <= 0:
        return out
    b, gs, nb = basket.tolist(), group_start.tolist(), new_basket.tolist()
    prev_b, d = 0, 0.0
    res = out.tolist()
    for i in range(n):
        if gs[i]:
            d = 1.0
        elif nb[i]:
            d = 1.0 + decay ** (b[i] - prev_b) * d
        prev_b = b[i] if (gs[i] or nb[i]) else prev_b
        res[i] = d
    return np.asarray(res, dtype=np.float64)


@dataclass
class EventCodes:
    """Time-ordered events of many rows (users or ad-hoc histories), coded for the model. CSR by row.

    item: (n,) model item index (row of the content matrix); gap/kind/value: (n,) feature codes;
    market: (n,) market code of each event (the storefront it happened in; predicting event t uses
    event t's market as the context); indptr: (rows + 1,).
    """

    item: np.ndarray
    gap: np.ndarray
    kind: np.ndarray
    value: np.ndarray
    market: np.ndarray
    indptr: np.ndarray
    repeat: np.ndarray | None = None  # (n,) bool: the row already had this item earlier
    tie: np.ndarray | None = None  # (n,) id of the run of same-second events each event belongs to
    basket: np.ndarray | None = None  # (n,) basket number (a run of same-second events; rows never share one)
    n_baskets: np.ndarray | None = None  # (n,) baskets of the row up to this event that hold this item
    next_basket: np.ndarray | None = None  # (n,) basket of the row's next event of this item (NO_NEXT: none)
    basket_rank: np.ndarray | None = None  # (n,) baskets of the row before this event's basket
    decayed: np.ndarray | None = None  # (n,) float: time-decayed count of the row's baskets up to this
    # event's that hold this item, sum of decay ** (baskets between), 1 for this basket (TIFU-KNN style)
    first_basket: np.ndarray | None = None  # (n,) basket of the row's first event of this item

    @classmethod
    def build(
        cls,
        item: np.ndarray,
        indptr: np.ndarray,
        cfg: FusionConfig,
        *,
        timestamps: np.ndarray | None = None,
        kinds: np.ndarray | None = None,
        values: np.ndarray | None = None,
        markets: np.ndarray | None = None,
    ) -> "EventCodes":
        n = len(item)
        row = Histories(indptr=indptr, items=item).row_of_event()
        first = np.ones(n, dtype=bool)
        first[1:] = row[1:] != row[:-1]
        tie = None
        if timestamps is None:
            gap = np.where(first, 1, 0)  # unknown gaps: only "first event" is known
        else:
            ts = np.asarray(timestamps, dtype=np.int64)
            gaps = np.zeros(n)
            gaps[1:] = ts[1:] - ts[:-1]
            gap = gap_buckets(gaps, first, cfg.n_gap_buckets)
            starts_run = first.copy()
            starts_run[1:] |= ts[1:] != ts[:-1]
            tie = np.cumsum(starts_run) - 1
        item = np.asarray(item, dtype=np.int64)
        order = np.lexsort((np.arange(n), item, row))  # by row, item, then time
        repeat = np.zeros(n, dtype=bool)
        same = (row[order][1:] == row[order][:-1]) & (item[order][1:] == item[order][:-1])
        repeat[order[1:]] = same
        # baskets: runs of same-second events (every event its own basket without timestamps)
        basket = tie if tie is not None else np.arange(n, dtype=np.int64)
        b_sorted = basket[order]
        new_basket = np.ones(n, dtype=bool)  # first event of this item in this basket (within its group)
        new_basket[1:] = ~same | (b_sorted[1:] != b_sorted[:-1])
        group_start = np.ones(n, dtype=bool)
        group_start[1:] = ~same
        cum = np.cumsum(new_basket)
        starts = np.flatnonzero(group_start)
        base = np.repeat(cum[starts] - 1, np.diff(np.append(starts, n))) if n else cum
        n_baskets = np.empty(n, dtype=np.int64)
        n_baskets[order] = cum - base
        next_basket = np.full(n, NO_NEXT, dtype=np.int64)
        if n > 1:
            nxt = np.where(same, b_sorted[1:], NO_NEXT)
            next_basket[order[:-1]] = nxt
        first_basket = np.empty(n, dtype=np.int64)
        first_basket[order] = np.repeat(b_sorted[starts], np.diff(np.append(starts, n))) if n else b_sorted
        decayed = None  # only a repeat model reads it (a Python loop over the events: skip it otherwise)
        if cfg.repeat_purchases and cfg.repeat_decay > 0:
            decayed = np.empty(n, dtype=np.float64)
            decayed[order] = decayed_counts(b_sorted, group_start, new_basket, cfg.repeat_decay)
        return cls(
            item=item,
            repeat=repeat,
            tie=tie,
            basket=np.asarray(basket, dtype=np.int64),
            n_baskets=n_baskets,
            next_basket=next_basket,
            decayed=decayed,
            first_basket=first_basket,
            basket_rank=np.asarray(basket, dtype=np.int64) - np.repeat(
                np.asarray(basket, dtype=np.int64)[np.minimum(indptr[:-1], max(n - 1, 0))], np.diff(indptr))
            if n else np.zeros(0, np.int64),
            gap=gap.astype(np.int64),
            kind=kind_codes(kinds, n),
            value=value_codes(values, n, cfg.n_value_buckets),
            market=market_codes(markets, cfg.markets, n),
            indptr=np.asarray(indptr, dtype=np.int64),
        )

    def shuffle_ties(self, rng: np.random.Generator) -> "EventCodes":
        """A copy with the events of every same-second run in a random order (gaps stay by position:
        the run's first event keeps the gap from the previous run, the others 0 s). Ratings entered in
        the same second have no real order, so training should not learn the one the log happens to hold."""
        if self.tie is None:
            return self
        perm = np.lexsort((rng.random(len(self.item)), self.tie))
        return replace(self, item=self.item[perm], kind=self.kind[perm], value=self.value[perm],
                       market=self.market[perm], repeat=None if self.repeat is None else self.repeat[perm],
                       n_baskets=None if self.n_baskets is None else self.n_baskets[perm],
                       basket_rank=None if self.basket_rank is None else self.basket_rank[perm],
                       next_basket=None if self.next_basket is None else self.next_basket[perm],
                       decayed=None if self.decayed is None else self.decayed[perm],
                       first_basket=None if self.first_basket is None else self.first_basket[perm])

    @classmethod
    def from_histories(cls, h: Histories, cfg: FusionConfig, values: np.ndarray | None = None) -> "EventCodes":
        return cls.build(h.items, h.indptr, cfg, timestamps=h.timestamps, kinds=h.kinds,
                         values=values if values is not None else getattr(h, "values", None), markets=h.markets)

    @classmethod
    def from_interactions(cls, t: Interactions, cfg: FusionConfig) -> "EventCodes":
        return cls.build(t.item, t.indptr, cfg, timestamps=t.timestamp, kinds=t.kind, values=t.value,
                         markets=t.market)


def gather(codes: EventCodes, starts: np.ndarray, lengths: np.ndarray) -> dict[str, torch.Tensor]:
    """Right-padded (B, W) tensors of the events [start, start + length) of each row."""
    width = max(1, int(lengths.max()))
    ar = np.arange(width)
    real = ar[None, :] < lengths[:, None]
    pos = np.where(real, starts[:, None] + ar[None, :], starts[:, None])  # padding repeats a real event
    out = {name: torch.from_numpy(getattr(codes, name)[pos]) for name in ("item", "gap", "kind", "value", "market")}
    if codes.repeat is not None:
        out["repeat"] = torch.from_numpy(codes.repeat[pos])
    if codes.basket is not None:
        for name in ("basket", "n_baskets", "next_basket", "basket_rank", "decayed", "first_basket"):
            if getattr(codes, name) is not None:
                out[name] = torch.from_numpy(getattr(codes, name)[pos])
    out["lengths"] = torch.from_numpy(lengths.astype(np.int64))
    out["real"] = torch.from_numpy(real)
    return out


def window_repeat_pairs(batch: dict[str, torch.Tensor], targets: torch.Tensor,
                        decay: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Training: for each target position of a batch of windows (``targets`` (B, W-1) bool, in the order
    ``hidden[targets]`` flattens them), the history items of the window bought in an EARLIER basket, each
    once, at its latest such purchase. Returns (target index m, item row, baskets ago, baskets holding it,
    their share of the row's earlier baskets, their ``decay``-weighted count seen from the target's basket,
    baskets from its first to its latest purchase) per pair. Items of the target's own basket are not
    history: at serving time the next basket is unknown."""
    bk, items, real = batch["basket"], batch["item"], batch["real"]
    tgt_b = bk[:, 1:]  # (B, W-1) basket of each target
    src_b, src_next = bk[:, :-1], batch["next_basket"][:, :-1]  # sources: the inputs
    mask = (targets[:, :, None] & real[:, :-1][:, None, :] & (src_b[:, None, :] < tgt_b[:, :, None])
            & (src_next[:, None, :] >= tgt_b[:, :, None]))  # (B, W-1 targets, W-1 sources)
    b, j, s = mask.nonzero(as_tuple=True)
    m = (torch.cumsum(targets.reshape(-1).long(), 0) - 1).view(targets.shape)[b, j]
    nb = batch["n_baskets"][b, s]
    share = nb.float() / batch["basket_rank"][:, 1:][b, j].clamp(min=1).float()
    ago = tgt_b[b, j] - src_b[b, s]
    decayed, span = _decayed_and_span(batch.get("decayed"), batch.get("first_basket"), (b, s), ago, src_b[b, s],
                                      decay, len(ago))
    return m, items[b, s], ago, nb, share, decayed, span


def _decayed_and_span(decayed, first_basket, where, ago, last_basket, decay: float, n: int):
    """The decayed count seen from the next basket (the source's own count, aged by ``ago - 1`` baskets)
    and the baskets from the item's first purchase to its latest (for its usual re-buy interval)."""
    if decayed is None or first_basket is None:
        return torch.ones(n, dtype=torch.float32), torch.zeros(n, dtype=torch.long)
    d = torch.as_tensor(decayed[where]).to(torch.float32)
    if decay > 0:
        d = d * torch.pow(torch.tensor(decay, dtype=torch.float32), (torch.as_tensor(ago) - 1).clamp(min=0).float())
    return d, torch.as_tensor(last_basket - first_basket[where]).long()


def history_repeat_pairs(codes: EventCodes, starts: np.ndarray | None = None,
                         decay: float = 0.0) -> tuple[np.ndarray, ...]:
    """Serving / evaluation: every distinct item of each row's history (events from ``starts[r]`` to the
    row's end, default all), at its latest purchase. Returns (row, item row, baskets ago counted from the
    next basket, baskets holding it, their share of the history's baskets, their ``decay``-weighted count,
    baskets from its first to its latest purchase) per pair, for `FusionTransformer.repeat_bonus`."""
    n_rows = len(codes.indptr) - 1
    lengths = np.diff(codes.indptr)
    row = np.repeat(np.arange(n_rows), lengths)
    keep = codes.next_basket == NO_NEXT  # the item's last event in its row
    if starts is not None:
        keep &= np.arange(len(codes.item)) >= np.repeat(np.asarray(starts, dtype=np.int64), lengths)
    last_event = np.maximum(codes.indptr[1:] - 1, 0)
    next_basket = codes.basket[last_event] + 1  # (rows,) the basket being recommended
    n_hist = codes.basket_rank[last_event] + 1  # (rows,) baskets in the history
    ev = np.flatnonzero(keep)
    r = row[ev]
    ago = next_basket[r] - codes.basket[ev]
    decayed, span = _decayed_and_span(codes.decayed, codes.first_basket, ev, ago, codes.basket[ev], decay, len(ev))
    return (r, codes.item[ev], ago, codes.n_baskets[ev],
            (codes.n_baskets[ev] / np.maximum(n_hist[r], 1)).astype(np.float32), decayed.numpy(), span.numpy())


def training_windows(codes: EventCodes, max_len: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of training windows of up to max_len + 1 events (inputs = all but the last,
    targets = all but the first). ``mode="all"`` cuts long histories into consecutive windows from the
    end so every event is a target once per epoch; ``"last"`` keeps only the most recent window."""
    if mode not in ("all", "last"):
        raise ValueError(f"windows must be 'all' or 'last', got {mode!r}")
    starts, lengths = [], []
    for s, e in zip(codes.indptr[:-1], codes.indptr[1:]):
        end = int(e)
        while end - s >= 2:
            begin = max(int(s), end - (max_len + 1))
            starts.append(begin)
            lengths.append(end - begin)
            if mode == "last":
                break
            end = begin + 1  # the next window's last input is this window's first
    return np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)



@dataclass
class ItemSide:
    """What the model knows about the items it can rank: content (N, C), ID codes (N,), markets (N,)."""

    content: torch.Tensor
    ids: torch.Tensor
    market: torch.Tensor


"""The fusion transformer: a shopper's history of products in, a user vector in the item space out.

One readable file, nanoGPT-style. Shapes: B = histories in a batch, L = positions (right-padded), N = items
in the item table, d = hidden width, C = content width (the frozen encoders' fused vector, e.g. 512).

An item j is represented from what is known about it, so that a product nobody has touched yet still has
a representation (cold start) and the same product listed in another language lands near it (the
content vectors are cross-lingual):

    item(j) = W_c · content(j)                    content path: frozen encoder vector, projected (always)
            + id_emb[id(j)]                       learned ID embedding of a warm item; id 0 = "unknown item"
            + item_market_emb[market(j)]          where it is listed (language/market)

A history event t adds what happened: token(t) = item(j_t)·sqrt(d) + kind_emb + gap_emb + value_emb + pos_emb
(kind = view/click/cart/purchase/rating, gap = log-scale bucket of the seconds since the previous event,
value = rating/quantity bucket, pos = distance from the most recent event). A causal transformer reads the
tokens; the hidden state of the last event, plus the storefront's market embedding, is the user vector u.

Ranking head: score(u, j) = u · item(j) [+ repeat(u, j) when the catalog's shoppers re-buy]. Its content part u · W_c · content(j) equals
(W_cᵀ u) · content(j), so ``content_query(u) = W_cᵀ u`` is the user vector *in the content space*: the
ANN index retrieves candidates with it and the full score only adds the ID and market terms on top.
ID dropout in training (random events and candidates get id 0) teaches the content path to carry the
score with the learned "unknown item" embedding, which is exactly what cold items get at serving time.

Repeat purchases (``repeat_purchases``, on for grocery): a history item j also gets an explicit copy
bonus, the standard answer of next-basket models (RepeatNet's repeat mode; Li et al. 2023 show that
models without it lose to "what you buy most"):

    repeat(u, j) = w_recency[bucket(baskets since j was last bought)] + w_freq[bucket(baskets with j)]
                 + c · log(baskets with j) + a · (share of the shopper's baskets holding j)
                 + e · log(1 + Σ decay^(baskets since each purchase of j))   recent purchases count more
                 + w_due[bucket(baskets since j / j's usual interval)]       is it due again
                 + r · item(j)                                      how re-buyable the item is
                 + g · u                                            how much THIS shopper re-buys now

three small learned tables, two vectors and three scalars. At init the bonus orders history items by the
time-decayed count (TIFU-KNN's recency-weighted frequency; on Complete Journey's validation baskets it
beats the plain count of the personal top-frequency baseline, .206 vs .200 NDCG@10), a few units above the
content/ID scores, which start near 0, so a time-boxed run starts from that strong baseline and learns from there
how much re-buying is worth against exploring new items, per shopper (g).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmrec.data.schema import EVENT_KINDS

@dataclass
class FusionConfig:
    """Architecture. ``n_ids`` = number of warm items with a learned ID embedding (row 0 = "no ID")."""

    content_dim: int  # C: width of the frozen item content vectors
    n_ids: int = 0  # warm-item ID vocabulary size (0 = content only)
    markets: tuple[str, ...] = ()  # known markets/languages; index 0 = unknown
    hidden: int = 64  # d
    n_layers: int = 2
    n_heads: int = 1
    ffn_mult: int = 2  # feed-forward inner width = ffn_mult * d
    max_len: int = 200  # most recent events the model reads
    dropout: float = 0.2
    id_dropout: float = 0.1  # training: probability an event / candidate loses its ID (content only)
    n_gap_buckets: int = 32  # 0 pad, 1 first event, 2 same second, 3 + floor(log2(seconds)) capped
    n_value_buckets: int = 12  # 0 unknown, 1 + round(value) clipped (ratings 1-5, small quantities)
    use_ids: bool = True
    use_gaps: bool = True
    use_kinds: bool = True
    use_values: bool = True
    use_markets: bool = True
    repeat_purchases: bool = False  # the catalog's shoppers re-buy (grocery): items of the history stay
    # candidates (training keeps repeat targets, serving and evaluation may re-offer them) and the score
    # of a history item gets the learned repeat bonus below
    n_repeat_buckets: int = 32  # log-scale buckets of "baskets ago" and "bought in N baskets"
    repeat_weight: float = 1.0  # the bonus's weight against the content/ID score, chosen on validation
    # after training (`FusionRecommender.tune_repeat_weight`); kept in the checkpoint, used by serving
    repeat_decay: float = 0.95  # per-basket decay of the repeat bonus's recency-weighted purchase count
    # (0 = no such term: checkpoints saved before it existed load with 0); `FusionRecommender.fit` with
    # validation cases replaces a value > 0 by the best of `choose_repeat_decay`'s grid

    def __post_init__(self) -> None:
        if not 0.0 <= self.repeat_decay <= 1.0:  # > 1 would make old purchases weigh more (and overflow)
            raise ValueError(f"repeat_decay must be in [0, 1], got {self.repeat_decay}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["markets"] = list(self.markets)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "FusionConfig":
        data = dict(data)
        data["markets"] = tuple(data.get("markets", ()))
        data.setdefault("repeat_decay", 0.0)  # a checkpoint from before the decayed count: its own head
        return cls(**data)


# --------------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------------


class PoolDropout(nn.Module):
    """Dropout whose masks are slices of one pre-drawn random pool.

    On this CPU, drawing fresh random numbers is the slowest part of a training step (~50 ms for one
    (128, 200, 64) tensor, a third of the step); a slice of a 16M-entry pool at a random offset costs
    ~1 ms. Masks of different calls overlap only by chance offsets, which does not matter for dropout.
    """

    POOL = 1 << 24

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self._pool: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        n = x.numel()
        if n > self.POOL // 2:
            return F.dropout(x, self.p, True)
        if self._pool is None:
            self._pool = (torch.rand(self.POOL) >= self.p).to(x.dtype) / (1.0 - self.p)
        start = int(torch.randint(0, self.POOL - n, (1,)))
        return x * self._pool[start : start + n].view_as(x).to(x.dtype)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a feed-forward."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        d = cfg.hidden
        if d % cfg.n_heads:
            raise ValueError(f"hidden ({d}) must be divisible by n_heads ({cfg.n_heads})")
        self.n_heads = cfg.n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1 = nn.Linear(d, cfg.ffn_mult * d)
        self.fc2 = nn.Linear(cfg.ffn_mult * d, d)
        self.drop = PoolDropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, d)
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)  # 3 x (B, L, d)
        q, k, v = (t.view(b, length, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, d/H)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


# --------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------


def repeat_buckets(x: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Counts >= 1 (baskets ago, baskets holding an item) -> 1 + floor(3 log2 x), capped at n_buckets - 1:
    1, 2 and 3 in their own buckets, then about three buckets per doubling (1000 -> 30)."""
    x = torch.clamp(x, min=1).to(torch.float32)
    return torch.clamp(1 + torch.floor(3 * torch.log2(x)), 1, n_buckets - 1).to(torch.long)


def due_buckets(baskets_ago: torch.Tensor, n_baskets: torch.Tensor, span: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Is the item due? Baskets since its last purchase over its usual interval between purchases
    (span / (n_baskets - 1)): 0 for an item bought once (no interval yet), else 1 + half-octaves of the
    ratio centred on n_buckets // 2 (ratio 1 = bought about as often as it is now due), clipped."""
    nb = n_baskets.to(torch.float32)
    interval = span.to(torch.float32).clamp(min=1) / (nb - 1).clamp(min=1)
    ratio = baskets_ago.to(torch.float32).clamp(min=1) / interval
    b = torch.clamp(torch.floor(2 * torch.log2(ratio)) + n_buckets // 2, 1, n_buckets - 1).to(torch.long)
    return torch.where(n_baskets >= 2, b, torch.zeros_like(b))


class FusionTransformer(nn.Module):
    REPEAT_SCALE = 10.0
    DUE_BUCKETS = 18

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.cfg = cfg
        n_markets = len(cfg.markets) + 1
        self.content_proj = nn.Linear(cfg.content_dim, d, bias=False)  # W_c: (d, C)
        self.id_emb = nn.Embedding(cfg.n_ids + 1, d)  # row 0 = "unknown item" (cold), learned via ID dropout
        self.item_market_emb = nn.Embedding(n_markets, d)
        self.kind_emb = nn.Embedding(len(EVENT_KINDS) + 1, d)
        self.gap_emb = nn.Embedding(cfg.n_gap_buckets, d)
        self.value_emb = nn.Embedding(cfg.n_value_buckets, d)
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        self.context_market_emb = nn.Embedding(n_markets, d)
        self.emb_drop = PoolDropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        if cfg.repeat_purchases:
            self.repeat_recency = nn.Embedding(cfg.n_repeat_buckets, 1)
            self.repeat_freq = nn.Embedding(cfg.n_repeat_buckets, 1)
            self.repeat_gate = nn.Linear(d, 1)
            self.repeat_item = nn.Linear(d, 1, bias=False)  # how re-buyable the item is (milk, not a cake)
            self.repeat_share = nn.Parameter(torch.zeros(1))  # x share of the shopper's baskets holding it
            decayed = cfg.repeat_decay > 0
            # x log(baskets with it); with the decayed count the ranking starts from that one instead
            self.repeat_count = nn.Parameter(torch.full((1,), 0.0 if decayed else 1.0 / self.REPEAT_SCALE))
            if decayed:
                self.repeat_decayed = nn.Parameter(torch.full((1,), 1.0 / self.REPEAT_SCALE))  # x log(1 + decayed)
                self.repeat_due = nn.Embedding(self.DUE_BUCKETS, 1)  # baskets since / usual interval
        self.apply(self._init)
        for emb in (self.item_market_emb, self.context_market_emb):
            nn.init.zeros_(emb.weight)
        if cfg.repeat_purchases:  # start as "what you buy most, most recent first" (P-TopFreq), then learn
            with torch.no_grad():
                b = torch.arange(cfg.n_repeat_buckets, dtype=torch.float32)
                self.repeat_freq.weight.fill_(2.0 / self.REPEAT_SCALE)
                self.repeat_recency.weight.copy_((-0.005 * b / self.REPEAT_SCALE)[:, None])  # a tie-break
                nn.init.zeros_(self.repeat_gate.weight)
                nn.init.zeros_(self.repeat_gate.bias)
                nn.init.zeros_(self.repeat_item.weight)
                if decayed:
                    nn.init.zeros_(self.repeat_due.weight)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------- items

    def item_table(
        self,
        content: torch.Tensor,  # (N, C) float, frozen content vectors
        ids: torch.Tensor,  # (N,) long, 1..n_ids for warm items, 0 = no ID
        market: torch.Tensor,  # (N,) long market codes (0 = unknown)
    ) -> torch.Tensor:  # (N, d)
        """Each item's representation: projected content + ID (warm) + listing market."""
        cfg = self.cfg
        table = self.content_proj(content)
        if cfg.use_ids and cfg.n_ids:
            table = table + self.id_emb(ids)
        if cfg.use_markets:
            table = table + self.item_market_emb(market)
        return table

    def drop_ids(
        self,
        rows: torch.Tensor,  # (..., d) item representations from `item_table`
        ids: torch.Tensor,  # (...,) the ID codes they were built with
        drop: torch.Tensor,  # (...,) bool: which rows lose their ID
    ) -> torch.Tensor:  # (..., d)
        """ID dropout: the chosen rows get the learned "unknown item" ID instead of their own, which is
        exactly how a cold item is represented at serving time, so training teaches the content path."""
        unknown = self.id_emb(torch.zeros((), dtype=torch.long, device=ids.device))  # a lookup, not weight[0]:
        # the gradient stays sparse when training gives the table sparse gradients (`make_optimizer`)
        return rows + (unknown - self.id_emb(ids)) * drop.unsqueeze(-1).to(rows.dtype)

    # ---------------------------------------------------------------- histories

    def forward(
        self,
        table: torch.Tensor,  # (N, d) item representations (`item_table`)
        items: torch.Tensor,  # (B, L) long rows of `table`, right-padded (padding: any row, masked)
        lengths: torch.Tensor,  # (B,) long real events per row (>= 1)
        kind: torch.Tensor,  # (B, L) long event-kind codes
        gap: torch.Tensor,  # (B, L) long gap buckets
        value: torch.Tensor,  # (B, L) long value buckets
        id_drop: torch.Tensor | None = None,  # (B, L) bool: training-time ID dropout per event
        ids: torch.Tensor | None = None,  # (N,) the ID codes `table` was built with (for id_drop)
    ) -> torch.Tensor:  # (B, L, d) hidden state after each event
        cfg = self.cfg
        b, length = items.shape
        ar = torch.arange(length, device=items.device)
        real = ar[None, :] < lengths[:, None]  # (B, L)
        x = table[items]  # (B, L, d)
        if id_drop is not None and ids is not None:  # the dropped events' items read as "unknown item"
            x = self.drop_ids(x, ids[items], id_drop)
        x = x * math.sqrt(cfg.hidden)
        pos = (lengths[:, None] - 1 - ar[None, :]).clamp(0, cfg.max_len - 1)  # 0 = most recent event
        x = x + self.pos_emb(pos)
        if cfg.use_kinds:
            x = x + self.kind_emb(kind)
        if cfg.use_gaps:
            x = x + self.gap_emb(gap)
        if cfg.use_values:
            x = x + self.value_emb(value)
        x = self.emb_drop(x) * real.unsqueeze(-1).to(x.dtype)
        for block in self.blocks:
            x = block(x)  # causal: position t sees events <= t, never the right padding
        return self.ln_f(x)

    def user_vectors(
        self,
        hidden: torch.Tensor,  # (B, L, d) or (M, d) already gathered
        context_market: torch.Tensor,  # (B,) / (M,) long market code of the storefront (0 = unknown)
    ) -> torch.Tensor:  # (., d)
        """The user vector: a hidden state plus the storefront's market embedding."""
        if self.cfg.use_markets:
            hidden = hidden + self.context_market_emb(context_market)
        return hidden

    def content_query(self, users: torch.Tensor) -> torch.Tensor:
        """(B, d) user vectors -> (B, C) the same preference in the content space: W_cᵀ u, so that
        content_query(u) · content(j) is exactly the content part of score(u, j)."""
        return users @ self.content_proj.weight

    def repeat_bonus(
        self,
        users: torch.Tensor,  # (M, d) user vectors
        row: torch.Tensor,  # (P,) long: which user each (user, history item) pair belongs to
        baskets_ago: torch.Tensor,  # (P,) long >= 1: baskets since the item was last bought
        n_baskets: torch.Tensor,  # (P,) long >= 1: baskets of the history that hold the item
        share: torch.Tensor,  # (P,) float: n_baskets / baskets in the history
        item_repr: torch.Tensor,  # (P, d) the item's representation (`item_table` row)
        decayed: torch.Tensor | None = None,  # (P,) float: recency-weighted count of baskets with the item
        span: torch.Tensor | None = None,  # (P,) long: baskets from its first purchase to its latest
    ) -> torch.Tensor:  # (P,)
        """The score added to a history item (see the module docstring); 0 without repeat_purchases."""
        if not self.cfg.repeat_purchases:
            return torch.zeros(len(row), dtype=users.dtype)
        n = self.cfg.n_repeat_buckets
        gate = self.repeat_gate(users).squeeze(-1)  # (M,)
        bonus = (self.repeat_recency(repeat_buckets(baskets_ago, n)).squeeze(-1)
                 + self.repeat_freq(repeat_buckets(n_baskets, n)).squeeze(-1) + gate[row]
                 + self.repeat_count * torch.log(n_baskets.clamp(min=1).to(users.dtype))
                 + self.repeat_share * share.to(users.dtype) + self.repeat_item(item_repr.to(users.dtype)).squeeze(-1))
        if self.cfg.repeat_decay > 0:
            if decayed is None or span is None:
                raise ValueError("this model's repeat bonus needs the decayed counts and spans of its pairs")
            bonus = (bonus + self.repeat_decayed * torch.log1p(decayed.to(users.dtype))
                     + self.repeat_due(due_buckets(baskets_ago, n_baskets, span, self.DUE_BUCKETS)).squeeze(-1))
        # x REPEAT_SCALE: the bonus must reach the scale of the logits (several units) in the few hundred
        # steps a time-boxed run makes at the model's learning rate (Adam moves a parameter ~lr a step)
        return self.REPEAT_SCALE * self.cfg.repeat_weight * bonus

    @staticmethod
    def scores(users: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """(B, d) x (N, d) -> (B, N) ranking scores."""
        return users @ table.T

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())



"""The emoji-market shopper SIMULATION: synthetic shoppers over the real emoji-market catalog.

No public data ties multilingual products to real users, so the events of `emoji-market` come from
this documented generative model, and every number measured on them must be called a simulation.

Generative model (all draws from one seeded numpy Generator):
1. Each shopper gets a home market (language) with `market_weights` (default: uniform) and
   `n_interests` category interests (Unicode subgroups) with Dirichlet(`interest_alpha`) weights.
2. Shoppers have Poisson(`sessions_mean`)+1 sessions; gaps between sessions are exponential with mean
   `session_gap_days`. Before each session after the first, with probability `drift` one interest is
   replaced by another subgroup of the same Unicode group (tastes drift to neighbouring products).
3. A session starts in an interest drawn by weight; each next event stays in the current subgroup with
   probability `stay`, otherwise moves to another interest. Within a subgroup a product is drawn by a
   fixed log-normal popularity (a few best-sellers, a long tail), among products already launched.
4. The listing is the home market's with probability 1 - `cross_market_share`, otherwise another market
   chosen uniformly (cross-border shopping). The event's `market` is the storefront of that listing.
5. Event kinds follow a funnel per product viewed: view, then click (p_click), cart (p_cart), purchase
   (p_purchase); gaps inside a session are exponential with mean `event_gap_s`.
Events are returned sorted by time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import datasets
import numpy as np
import pandas as pd

from mmrec.data.schema import EVENT_FEATURES


@dataclass
class ShopperSimConfig:
    n_shoppers: int = 3000
    sessions_mean: float = 5.0
    events_per_session_mean: float = 4.0
    n_interests: int = 3
    interest_alpha: float = 0.5
    drift: float = 0.2
    stay: float = 0.7
    cross_market_share: float = 0.15
    session_gap_days: float = 10.0
    event_gap_s: float = 45.0
    p_click: float = 0.6
    p_cart: float = 0.35
    p_purchase: float = 0.6
    new_product_share: float = 0.2
    start: str = "2026-01-01"
    span_days: int = 180
    seed: int = 0

    @property
    def start_ts(self) -> int:
        return int(datetime.fromisoformat(self.start).replace(tzinfo=timezone.utc).timestamp())

    def to_dict(self) -> dict:
        return asdict(self)


def simulate(items: datasets.Dataset, config: ShopperSimConfig) -> datasets.Dataset:
    """Events of simulated shoppers over `items` (an emoji-market catalog with `created_at` launch times)."""
    rng = np.random.default_rng(config.seed)
    frame = items.select_columns(["item_id", "product_id", "category", "market", "created_at"]).to_pandas()
    markets = sorted(frame["market"].unique())
    per_product = frame.drop_duplicates("product_id").reset_index(drop=True)
    product_ids = per_product["product_id"].to_numpy()
    launch = per_product["created_at"].fillna(config.start_ts).to_numpy(dtype=np.int64)
    subgroups = sorted(per_product["category"].unique())
    sub_of = per_product["category"].map({s: i for i, s in enumerate(subgroups)}).to_numpy()
    group_of_sub = np.array([s.split("/")[0] for s in subgroups])
    members = [np.flatnonzero(sub_of == s) for s in range(len(subgroups))]
    popularity = rng.lognormal(0.0, 1.0, size=len(product_ids))
    listing = {(p, m): i for p, m, i in zip(frame["product_id"], frame["market"], frame["item_id"])}

    end_ts = config.start_ts + config.span_days * 86400
    rows: dict[str, list] = {k: [] for k in ("user_id", "item_id", "timestamp", "kind", "market", "session_id")}
    for u in range(config.n_shoppers):
        user = f"shopper:{u:05d}"
        home = markets[rng.integers(len(markets))]
        interests = list(rng.choice(len(subgroups), size=config.n_interests, replace=False))
        weights = rng.dirichlet([config.interest_alpha] * config.n_interests)
        t = config.start_ts + int(rng.random() * 0.5 * (end_ts - config.start_ts))
        for s in range(1 + rng.poisson(config.sessions_mean)):
            if t >= end_ts:
                break
            if s and rng.random() < config.drift:
                slot = rng.integers(config.n_interests)
                same_group = np.flatnonzero(group_of_sub == group_of_sub[interests[slot]])
                interests[slot] = int(rng.choice(same_group))
            session = f"{user}/s{s}"
            current = interests[rng.choice(config.n_interests, p=weights)]
            for _ in range(1 + rng.poisson(config.events_per_session_mean - 1)):
                if rng.random() > config.stay:
                    current = interests[rng.choice(config.n_interests, p=weights)]
                pool = members[current][launch[members[current]] <= t]
                if len(pool) == 0:
                    continue
                p = popularity[pool] / popularity[pool].sum()
                product = product_ids[rng.choice(pool, p=p)]
                market = home if rng.random() >= config.cross_market_share else markets[rng.integers(len(markets))]
                item = listing[(product, market)]
                kinds = ["view"]
                if rng.random() < config.p_click:
                    kinds.append("click")
                    if rng.random() < config.p_cart:
                        kinds.append("cart")
                        if rng.random() < config.p_purchase:
                            kinds.append("purchase")
                for kind in kinds:
                    t += 1 + int(rng.exponential(config.event_gap_s))
                    for key, value in (("user_id", user), ("item_id", item), ("timestamp", t), ("kind", kind),
                                       ("market", market), ("session_id", session)):
                        rows[key].append(value)
            t += int(rng.exponential(config.session_gap_days * 86400))
    events = pd.DataFrame(rows).assign(value=None)
    events = events.sort_values(["timestamp", "user_id"], kind="stable", ignore_index=True)
    return datasets.Dataset.from_pandas(events, features=EVENT_FEATURES, preserve_index=False)

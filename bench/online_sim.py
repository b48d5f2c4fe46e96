"""The online loop, closed: simulated shoppers served by the running service, in SIMULATION.

    .venv/bin/python bench/online_sim.py [--quick] [--shoppers 1000] [--days 28] [--out ...]

Everything measured here is a SIMULATION. The shoppers follow the emoji-market shopper model
(`mmrec.data.datasets.shoppers`: a home market, three category interests with Dirichlet weights, a fixed
log-normal popularity inside each category, the view -> click -> cart -> purchase funnel with its
probabilities), re-drawn here so that each shopper's latent preferences are known to the oracle:

    pref(u, p)    = sum over u's interests i of  w_ui * pop_p / (sum of pop over launched products of i)
    attract(u, p) = floor + (1 - floor) * (1 - exp(-scale * pref(u, p)))
    P(click at position r) = examine(r) * attract(u, p),   examine(r) = 1 / log2(r + 1)   (position bias)
    after a click: cart with p_cart, then purchase with p_purchase (the shopper model's funnel)

Before the run each shopper has a history drawn as the shopper model draws sessions (an interest by weight,
kept with probability `stay` at each step, a launched product of it by popularity): the log the first model
is trained on. Browsing during the run is drawn the same way. Then,
each simulated day, new products launch (POST /items: cold, no events, no ID in the model), and each
shopper visits with `visit_prob`: browses a few products on their own (POST /events), asks the service
for k recommendations in their home storefront (POST /recommend, the real app in-process through
FastAPI's TestClient over the real embedded Qdrant store and the real file interaction log), and reacts
per the model above (POST /events with the request id and position, so the service attributes them).

One service, four A/B arms by its deterministic user-hash assignment (`mmrec.serving.variants`):
  model      the fusion transformer trained before the run (frozen)
  content    content-kNN (the service's content-based recommending: near the mean of the history's vectors)
  explore    the frozen model + exploration for new items (`mmrec.serving.exploration`, Thompson sampling on
             per-item CTR from the log's impression and click counts)
  retrained  the model fine-tuned every `retrain_every` days on the events logged since its last fine-tune
             (`mmrec train --resume CKPT --events-since T --data-dir DATA_DIR`, run in-process)
Comparisons (CTR and CVR per impression with Wilson intervals; differences with normal intervals and
p-values, from `mmrec.serving.online_report` over the service's own log): (a) model vs content,
(b) explore vs model, (c) retrained vs model, the last also week by week. New products: share that ever
sell through each arm's recommendations, time from launch to first such purchase. Regret: per impression,
the expected clicks of the oracle's page (the k launched, unseen products with the highest attract, in
examine order) minus the expected clicks of the page shown.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ("model", "content", "explore", "retrained")
COMPARISONS = {  # name: (treatment, control)
    "model_vs_contentknn": ("model", "content"),
    "exploration": ("explore", "model"),
    "retrained_vs_frozen": ("retrained", "model"),
}
DAY = 86400


@dataclass
class SimConfig:
    markets: tuple[str, ...] = ("DE", "JP", "US", "FR")
    shoppers: int = 1000
    days: int = 28
    visit_prob: float = 0.35
    k: int = 10
    new_share: float = 0.12  # of the products launch during the run (the rest before it)
    history_events_mean: float = 20.0  # products a shopper interacted with before the run
    history_days: int = 60
    organic_mean: float = 1.0  # products a shopper finds on their own per visit
    attract_scale: float = 6.0
    attract_floor: float = 0.01
    retrain_every: int = 7  # days
    train_minutes: float = 2.5  # the first model's training budget
    train_epochs: int = 30
    finetune_epochs: int = 2
    finetune_context: int = 20
    explore_share: float = 0.2
    explore_new_below: int = 20  # impressions (all arms count: one log)
    n_retrieve: int = 100
    seed: int = 0


# ------------------------------------------------------------------------------------------ the world

class World:
    """The simulated market: products, launch days, shoppers' latent preferences (the oracle's knowledge)."""

    def __init__(self, items, cfg: SimConfig, rng: np.random.Generator) -> None:
        from mmrec.data.datasets.shoppers import ShopperSimConfig

        self.cfg, self.rng = cfg, rng
        self.shop = ShopperSimConfig()  # the shopper model's funnel and interest parameters
        frame = items.to_pandas()
        self.items = frame[frame["market"].isin(cfg.markets)].reset_index(drop=True)
        per_product = self.items.drop_duplicates("product_id").sort_values("product_id").reset_index(drop=True)
        self.products = per_product["product_id"].to_numpy()
        self.p_index = {p: j for j, p in enumerate(self.products)}
        subgroups = sorted(per_product["category"].unique())
        self.sub_of = per_product["category"].map({s: i for i, s in enumerate(subgroups)}).to_numpy()
        self.n_sub = len(subgroups)
        self.popularity = rng.lognormal(0.0, 1.0, size=len(self.products))
        n_new = int(round(cfg.new_share * len(self.products)))
        self.new = np.zeros(len(self.products), dtype=bool)
        self.new[rng.choice(len(self.products), n_new, replace=False)] = True
        last_launch = max(1, cfg.days - max(cfg.retrain_every, 3))  # every new product has days left to sell
        self.launch_day = np.where(self.new, rng.integers(1, last_launch + 1, size=len(self.products)), -1)
        self.listing = {(p, m): i for p, m, i in zip(self.items["product_id"], self.items["market"], self.items["item_id"])}
        self.product_of = dict(zip(self.items["item_id"], self.items["product_id"]))
        n = cfg.shoppers
        self.users = [f"sim:{u:05d}" for u in range(n)]
        self.home = np.array(cfg.markets)[rng.integers(len(cfg.markets), size=n)]
        self.interests = np.stack([rng.choice(self.n_sub, self.shop.n_interests, replace=False) for _ in range(n)])
        self.weights = rng.dirichlet([self.shop.interest_alpha] * self.shop.n_interests, size=n)
        self.seen: list[set[int]] = [set() for _ in range(n)]  # product indices in each shopper's history
        self.set_day(0)

    def set_day(self, day: int) -> None:
        """Preferences among the products launched by `day` (a launch dilutes its category's share)."""
        launched = self.launch_day <= day
        self.launched = launched
        pop = np.where(launched, self.popularity, 0.0)
        sub_total = np.bincount(self.sub_of, weights=pop, minlength=self.n_sub)
        within = pop / np.maximum(sub_total[self.sub_of], 1e-12)  # (P,)
        pref = np.zeros((self.cfg.shoppers, len(self.products)))
        for i in range(self.shop.n_interests):
            member = self.sub_of[None, :] == self.interests[:, i : i + 1]  # (U, P)
            pref += member * self.weights[:, i : i + 1] * within[None, :]
        self.pref = pref
        self.attract = self.cfg.attract_floor + (1 - self.cfg.attract_floor) * (1 - np.exp(-self.cfg.attract_scale * pref))
        self.attract[:, ~launched] = 0.0

    def draw_products(self, u: int, n: int) -> list[int]:
        """n products u browses on their own, as the shopper model draws a session: an interest by weight,
        kept with probability `stay` at each step, a launched product of it by popularity."""
        rng, out = self.rng, []
        current = self.interests[u, rng.choice(self.shop.n_interests, p=self.weights[u])]
        for _ in range(n):
            if rng.random() > self.shop.stay:
                current = self.interests[u, rng.choice(self.shop.n_interests, p=self.weights[u])]
            pool = np.flatnonzero((self.sub_of == current) & self.launched)
            if len(pool):
                out.append(int(rng.choice(pool, p=self.popularity[pool] / self.popularity[pool].sum())))
        return out

    def listing_for(self, u: int, product: int) -> tuple[str, str]:
        market = self.home[u]
        if self.rng.random() < self.shop.cross_market_share:
            market = self.cfg.markets[self.rng.integers(len(self.cfg.markets))]
        return self.listing[(self.products[product], market)], market

    def funnel(self, clicked: bool) -> list[str]:
        """The kinds after a view or a click: the shopper model's funnel."""
        kinds = ["click"] if clicked else ["view"]
        if not clicked:
            if self.rng.random() >= self.shop.p_click:
                return kinds
            kinds.append("click")
        if self.rng.random() < self.shop.p_cart:
            kinds.append("cart")
            if self.rng.random() < self.shop.p_purchase:
                kinds.append("purchase")
        return kinds

    def oracle_value(self, u: int, k: int, examine: np.ndarray) -> float:
        """Expected clicks of the best page: the k launched products u has not seen with the highest attract."""
        a = self.attract[u].copy()
        if self.seen[u]:
            a[list(self.seen[u])] = 0.0
        top = np.sort(a)[::-1][:k]
        return float((examine[: len(top)] * top).sum())


def examine_probs(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


# ------------------------------------------------------------------------------------------ the run

def history_events(world: World, start_ts: int) -> list[dict]:
    """Each shopper's events before the run, drawn from their preferences through the funnel."""
    cfg, rng = world.cfg, world.rng
    world.set_day(0)
    rows = []
    for u, user in enumerate(world.users):
        products: list[int] = []
        while len(products) < 2 + rng.poisson(max(cfg.history_events_mean - 2, 0)):  # sessions of ~4 products
            products += world.draw_products(u, 1 + rng.poisson(3))
        times = np.sort(start_ts - rng.integers(1, cfg.history_days * DAY, size=len(products)))
        for product, t in zip(products, times):
            item, market = world.listing_for(u, int(product))
            world.seen[u].add(int(product))
            for j, kind in enumerate(world.funnel(clicked=False)):
                rows.append({"user_id": user, "item_id": item, "timestamp": int(t) + 30 * j, "kind": kind,
                             "market": market, "value": None, "session_id": None})
    return rows


def train_first_model(items_ds, events: list[dict], vectors, cfg: SimConfig, out: Path) -> dict:
    """The fusion transformer on the history (what the service starts with), saved as a checkpoint."""
    import datasets as hf

    from evaluation.splits import leave_one_out
    from mmrec.data.schema import EVENT_FEATURES
    from mmrec.model import FusionRecommender, TrainConfig
    from mmrec.model.transformer import FusionConfig

    frame = {name: [r[name] for r in events] for name in EVENT_FEATURES}
    split = leave_one_out(hf.Dataset.from_dict(frame, features=EVENT_FEATURES), items=items_ds)
    product_of = dict(zip(items_ds["item_id"], items_ds["product_id"]))
    rec = FusionRecommender(
        vectors.aligned(split.item_ids),
        FusionConfig(content_dim=vectors.dim, hidden=64, n_layers=2, max_len=50, dropout=0.2, id_dropout=0.2),
        TrainConfig(epochs=cfg.train_epochs, lr=3e-3, warmup_steps=50, max_train_seconds=60 * cfg.train_minutes,
                    patience=6, num_threads=1, progress=False),
        item_ids=split.item_ids, item_market=split.item_market, vectors_version=vectors.version,
        item_products=np.asarray([product_of[i] for i in split.item_ids], dtype=object),
    )
    rec.fit(split.train, split.valid)
    rec.save(out, extra={"vectors_spec": vectors.spec, "recipe": ["title"], "data": "online_sim history"})
    return {"train_seconds": round(rec.report_.get("train_seconds", 0.0), 1), "best_epoch": rec.report_.get("best_epoch"),
            "events": len(events), "items": int(split.n_items)}


def fine_tune(checkpoint: Path, since: int, data_dir: Path, catalog_file: Path, out: Path, cfg: SimConfig) -> dict:
    """`mmrec train --resume CHECKPOINT --events-since T --data-dir DATA_DIR` (in-process), as an operator
    would run it beside the service: the events the service logged since T fine-tune the checkpoint."""
    from mmrec.cli import main

    argv = ["train", "--resume", str(checkpoint), "--events-since", str(since), "--data-dir", str(data_dir),
            "--items", str(catalog_file), "--context", str(cfg.finetune_context), "--epochs", str(cfg.finetune_epochs),
            "--no-progress", "--out", str(out)]
    buffer = io.StringIO()
    t0 = time.perf_counter()
    root = logging.getLogger()
    level = root.level
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    root.setLevel(level)  # the CLI turns on INFO logging; the simulation's requests stay quiet
    if code != 0:
        raise RuntimeError(f"mmrec {' '.join(argv)} failed ({code}): {buffer.getvalue()[-2000:]}")
    text = buffer.getvalue()
    report = json.loads(text[text.index("{"):])
    return {"seconds": round(time.perf_counter() - t0, 1), "command": "mmrec " + " ".join(argv[:4]) + " ...",
            "test_leave_one_out": report.get("test_leave_one_out")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run of test size (seconds of simulation)")
    ap.add_argument("--shoppers", type=int, default=None)
    ap.add_argument("--days", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default bench/results/online_sim.json; with --quick a file in the "
                                                 "temp dir (a smoke run never replaces the result)")
    args = ap.parse_args()
    if args.out is None:
        args.out = str(Path(tempfile.gettempdir()) / "online_sim_quick.json" if args.quick
                       else ROOT / "bench" / "results" / "online_sim.json")
    cfg = SimConfig(seed=args.seed)
    if args.quick:
        cfg = replace(cfg, markets=("DE", "JP"), shoppers=120, days=6, visit_prob=0.5, retrain_every=3,
                      train_minutes=0.25, train_epochs=3, finetune_epochs=1, explore_new_below=10)
    cfg = replace(cfg, shoppers=args.shoppers or cfg.shoppers, days=args.days or cfg.days)

    import datasets as hf
    import torch

    torch.set_num_threads(1)
    from fastapi.testclient import TestClient

    from mmrec import datasets
    from mmrec.embedding.recipe import ItemRecipe
    from mmrec.model.vectors import catalog_vectors
    from mmrec.serving.api.dependencies import Services
    from mmrec.serving.api.settings import ServiceSettings
    from mmrec.serving.app import create_app
    from mmrec.serving.event_log import FileEventLog
    from mmrec.serving.exploration import ExplorationConfig
    from mmrec.serving.markets import Markets
    from mmrec.serving.online_report import online_report
    from mmrec.serving.two_stage import ServingConfig, TwoStageRecommender
    from mmrec.serving.variants import Variant
    from mmrec.store.catalog_store import CatalogConfig, CatalogStore

    t_start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    ds = datasets.load("emoji-market")
    world = World(ds.items, cfg, rng)
    start_ts = 1_780_000_000  # the run's first day (2026-05-28 UTC); the history lies before it
    examine = examine_probs(cfg.k)
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="mmrec_online_sim_", dir=shm if shm.is_dir() else None))
    data_dir = work / "data"
    print(f"online loop SIMULATION: {cfg.shoppers} shoppers, {len(world.products)} products x {len(cfg.markets)} "
          f"markets, {int(world.new.sum())} launched during {cfg.days} days; arms {', '.join(ARMS)}", flush=True)
    try:
        # the catalog (every listing, launched or not, as a file `mmrec train --items` reads)
        columns = ["item_id", "product_id", "title", "language", "market", "category"]
        catalog_file = work / "catalog.jsonl"
        rows = world.items[columns].to_dict("records")
        catalog_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        items_ds = hf.Dataset.from_list(rows)
        recipe = ItemRecipe(("title",))
        vectors = catalog_vectors(items_ds, "text:use-m3", recipe=recipe, progress=False)

        # history and the first model
        history = history_events(world, start_ts)
        t0 = time.perf_counter()
        ck0 = work / "model-0.pt"
        first = train_first_model(items_ds, history, vectors, cfg, ck0)
        print(f"first model: {first['events']} history events, trained {time.perf_counter() - t0:.0f}s", flush=True)

        # the service: store (text-only USE-m3 vectors, the recipe the model reads), file log, four arms
        store_config = CatalogConfig(text_encoder="use-m3", image_encoder=None, adapter=None, recipe=recipe.fields)
        catalog = CatalogStore.open(data_dir, store_config)
        if catalog.encoder.space != vectors.version:
            raise RuntimeError(f"store space {catalog.encoder.space} != model space {vectors.version}")
        log = FileEventLog(data_dir / "events.jsonl")
        from mmrec.data.schema import Event

        log.append([Event(**r) for r in history])
        serving = ServingConfig(n_retrieve=cfg.n_retrieve, reasons="cosine", n_reasons=0)
        exploring = replace(serving, exploration=ExplorationConfig(
            enabled=True, max_share=cfg.explore_share, new_below=cfg.explore_new_below, seed=cfg.seed))

        def ranker(path: Path, config: ServingConfig) -> TwoStageRecommender:
            return TwoStageRecommender.from_checkpoint(path, catalog.store, config=config, item_counts=log.item_counts,
                                                       expect_vectors_version=catalog.encoder.space)

        share = 1.0 / len(ARMS)
        variants = (Variant("model", share, str(ck0), ranker(ck0, serving)), Variant("content", share),
                    Variant("explore", share, str(ck0), ranker(ck0, exploring)),
                    Variant("retrained", share, str(ck0), ranker(ck0, serving)))
        services = Services(catalog=catalog, events=log, markets=Markets(catalog.store, data_dir / "markets.json"),
                            variants=variants, experiment="online-sim")
        app = create_app(services, ServiceSettings())
        client = TestClient(app, base_url="http://127.0.0.1")

        def launch(day: int) -> int:
            idx = np.flatnonzero(world.launch_day == day) if day > 0 else np.flatnonzero(world.launch_day <= 0)
            chosen = set(world.products[idx])
            batch = [dict(r, created_at=start_ts + max(day, 0) * DAY) for r in rows if r["product_id"] in chosen]
            for s in range(0, len(batch), 256):
                answer = client.post("/items", json={"items": batch[s : s + 256]})
                if answer.status_code != 200:
                    raise RuntimeError(f"POST /items: {answer.status_code} {answer.text[:300]}")
            return len(idx)

        def post_events(events: list[dict]) -> None:
            if events:
                answer = client.post("/events", json={"events": events})
                if answer.status_code != 200:
                    raise RuntimeError(f"POST /events: {answer.status_code} {answer.text[:300]}")

        t0 = time.perf_counter()
        launch(0)
        print(f"indexed {int((world.launch_day <= 0).sum())} products' listings in {time.perf_counter() - t0:.0f}s",
              flush=True)

        # bookkeeping for the report
        regret: dict[str, list[float]] = defaultdict(list)
        oracle_clicks: dict[str, list[float]] = defaultdict(list)
        weekly: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # impressions, clicked, bought
        new_shown: dict[str, defaultdict] = {a: defaultdict(int) for a in ARMS}
        first_sale: dict[str, dict[int, float]] = {a: {} for a in ARMS}
        first_sale_any: dict[int, float] = {}
        explored_slots = {a: [0, 0, 0] for a in ARMS}  # explored, shown, explored slots given to new products
        retrains: list[dict] = []
        current = ck0
        last_retrain = start_ts
        requests = 0
        sim_t0 = time.perf_counter()
        for day in range(cfg.days):
            launched_today = launch(day) if day > 0 else 0
            world.set_day(day)
            visitors = rng.permutation(np.flatnonzero(rng.random(cfg.shoppers) < cfg.visit_prob))
            for u in visitors:
                user, home = world.users[u], str(world.home[u])
                t = start_ts + day * DAY + int(rng.integers(0, DAY - 3600))
                organic = []
                for product in world.draw_products(u, rng.poisson(cfg.organic_mean)):
                    item, market = world.listing_for(u, int(product))
                    world.seen[u].add(int(product))
                    for kind in world.funnel(clicked=False):
                        t += 20
                        organic.append({"user_id": user, "item_id": item, "kind": kind, "timestamp": t, "market": market})
                        if kind == "purchase" and world.new[product]:
                            first_sale_any.setdefault(int(product), (t - start_ts) / DAY - world.launch_day[product])
                post_events(organic)
                oracle = world.oracle_value(u, cfg.k, examine)
                answer = client.post("/recommend", json={"user_id": user, "k": cfg.k, "market": home})
                if answer.status_code != 200:
                    raise RuntimeError(f"POST /recommend: {answer.status_code} {answer.text[:300]}")
                answer = answer.json()
                requests += 1
                arm, request_id = answer["variant"], answer["request_id"]
                shown = [world.p_index[world.product_of[r["item_id"]]] for r in answer["results"]]
                value = float(sum(examine[r] * world.attract[u, p] for r, p in enumerate(shown)))
                regret[arm].append(oracle - value)
                oracle_clicks[arm].append(oracle)
                explored_slots[arm][0] += sum(bool(r.get("explored")) for r in answer["results"])
                explored_slots[arm][1] += len(shown)
                explored_slots[arm][2] += sum(bool(r.get("explored")) and bool(world.new[p])
                                              for r, p in zip(answer["results"], shown))
                reactions, clicked, bought = [], False, False
                for r, (result, p) in enumerate(zip(answer["results"], shown)):
                    if world.new[p]:
                        new_shown[arm][p] += 1
                    if rng.random() >= examine[r] * world.attract[u, p]:
                        continue
                    clicked = True
                    world.seen[u].add(p)
                    for kind in world.funnel(clicked=True):
                        t += 20
                        reactions.append({"user_id": user, "item_id": result["item_id"], "kind": kind, "timestamp": t,
                                          "market": home, "request_id": request_id, "position": r + 1})
                        if kind == "purchase":
                            bought = True
                            if world.new[p]:
                                since_launch = (t - start_ts) / DAY - world.launch_day[p]
                                first_sale[arm].setdefault(p, since_launch)
                                first_sale_any.setdefault(p, since_launch)
                post_events(reactions)
                cell = weekly[(day // 7, arm)]
                cell[0] += 1
                cell[1] += clicked
                cell[2] += bought
            elapsed = time.perf_counter() - sim_t0
            eta = elapsed / (day + 1) * (cfg.days - day - 1)
            print(f"day {day + 1}/{cfg.days}: {len(visitors)} visits, {launched_today} products launched, "
                  f"{requests} requests so far ({elapsed:.0f}s, ETA {eta:.0f}s)", flush=True)
            if (day + 1) % cfg.retrain_every == 0 and day + 1 < cfg.days:
                until = start_ts + (day + 1) * DAY
                out = work / f"model-{len(retrains) + 1}.pt"
                info = fine_tune(current, last_retrain, data_dir, catalog_file, out, cfg)
                info.update(day=day + 1, since_day=(last_retrain - start_ts) // DAY)
                retrains.append(info)
                current, last_retrain = out, until
                services.variants = tuple(replace(v, source=str(out), ranker=ranker(out, serving))
                                          if v.name == "retrained" else v for v in services.variants)
                print(f"  retrained arm: fine-tuned on the events logged since day {info['since_day']} "
                      f"in {info['seconds']:.0f}s", flush=True)

        # the report, from the service's own log
        impressions, outcomes = list(log.impressions()), list(log.outcomes())
        reports = {control: online_report(impressions, outcomes, control=control, variants=list(ARMS))
                   for control in {c for _, c in COMPARISONS.values()}}
        comparisons = {}
        for name, (treatment, control) in COMPARISONS.items():
            rep = reports[control]
            arms = {}
            for arm in (treatment, control):
                g = rep.by_variant[arm]
                arms[arm] = {"impressions": g.impressions, "users": g.users,
                             "ctr": _rate(g.ctr), "cvr": _rate(g.cvr)}
            diff = {}
            for d in rep.comparisons:
                if d.variant == treatment and d.metric in ("ctr", "cvr"):
                    diff[d.metric] = {"diff": d.diff, "low": d.low, "high": d.high, "p_value": d.p_value,
                                      "underpowered": d.underpowered, "needed_per_variant": d.needed_per_variant}
            comparisons[name] = {"treatment": treatment, "control": control, "arms": arms, "difference": diff,
                                 "label": "SIMULATION"}
        comparisons["retrained_vs_frozen"]["weekly"] = [
            {"week": w + 1, **{arm: _weekly(weekly[(w, arm)]) for arm in ("retrained", "model")}}
            for w in range(math.ceil(cfg.days / 7))]
        new_ids = np.flatnonzero(world.new)
        new_products = {arm: _new_product_metrics(new_ids, new_shown[arm], first_sale[arm], explored_slots[arm])
                        for arm in ARMS}
        new_products["any_route"] = _new_product_metrics(new_ids, {}, first_sale_any, None)
        regrets = {arm: _regret(regret[arm], oracle_clicks[arm]) for arm in ARMS}
        result = {
            "benchmark": "online_sim",
            "label": "SIMULATION",
            "note": "SIMULATION: shoppers drawn from the emoji-market shopper model with known preferences, served by "
                    "the real app in-process (TestClient, embedded Qdrant, file interaction log); text-only USE-m3 "
                    "item vectors (title recipe); reasons off (n_reasons=0) to keep the run short"
                    + ("; --quick smoke run (test-sized, not a result)" if args.quick else ""),
            "config": asdict(cfg),
            "click_model": "P(click at r) = examine(r) * attract(u, p), examine(r) = 1/log2(r+1); "
                           "attract = floor + (1-floor)(1-exp(-scale*pref)); then cart/purchase per the funnel",
            "sizes": {"requests": requests, "impressions": len(impressions), "attributed_events": len(outcomes),
                      "events_logged": len(log), "new_products": int(world.new.sum()),
                      "products": len(world.products), "listings": len(world.items)},
            "first_model": first,
            "retraining": retrains,
            "comparisons": comparisons,
            "new_products": new_products,
            "regret": regrets,
            "seconds": round(time.perf_counter() - t_start, 1),
            "machine": {"cpu_count": os.cpu_count(), "load_avg_end": os.getloadavg()},
        }
        client.close()
        services.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    print_table(result)
    print(f"\nwrote {args.out} ({result['seconds']:.0f}s)")
    return 0


# ------------------------------------------------------------------------------------------ figures

def _rate(rate) -> dict:
    return {"rate": rate.rate, "low": rate.low, "high": rate.high, "successes": rate.successes, "n": rate.n}


def _weekly(cell: list[int]) -> dict:
    from evaluation.ab import wilson_interval

    n, clicked, bought = cell
    out = {"impressions": n}
    for metric, s in (("ctr", clicked), ("cvr", bought)):
        low, high = wilson_interval(s, n) if n else (None, None)
        out[metric] = {"rate": s / n if n else None, "low": low, "high": high}
    return out


def _new_product_metrics(new_ids: np.ndarray, shown: dict, sold: dict, slots: list[int] | None) -> dict:
    """Share of the new products that ever sold (Wilson interval), days from launch to first purchase
    (among those that sold; the rest are censored at the run's end), impressions they got."""
    from evaluation.ab import wilson_interval

    n = len(new_ids)
    k = sum(int(p) in sold for p in new_ids)
    low, high = wilson_interval(k, n) if n else (None, None)
    days = np.array([sold[int(p)] for p in new_ids if int(p) in sold], dtype=float)
    out = {"launched": n, "sold": k, "share_sold": k / n if n else None, "share_sold_ci95": [low, high],
           "time_to_first_purchase_days": {
               "median": float(np.median(days)) if len(days) else None,
               "mean": float(days.mean()) if len(days) else None, "sold": len(days), "censored": n - len(days)}}
    if slots is not None:
        out["share_shown"] = sum(shown.get(int(p), 0) > 0 for p in new_ids) / n if n else None
        out["impressions_of_new_products"] = int(sum(shown.values()))
        out["explored_slot_share"] = slots[0] / slots[1] if slots[1] else None
        out["explored_slots_to_new_products"] = slots[2] / slots[0] if slots[0] else None
    return out


def _regret(values: list[float], oracle: list[float]) -> dict:
    x = np.asarray(values, dtype=float)
    if not len(x):
        return {"per_impression": None, "ci95": [None, None], "cumulative": 0.0, "impressions": 0}
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else 0.0
    return {"per_impression": float(x.mean()), "ci95": [float(x.mean() - half), float(x.mean() + half)],
            "cumulative": float(x.sum()), "impressions": len(x),
            "oracle_expected_clicks_per_impression": float(np.mean(oracle)),
            "relative": float(x.sum() / max(np.sum(oracle), 1e-12))}


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def print_table(result: dict) -> None:
    pct = lambda r: "-" if r["rate"] is None else f"{100 * r['rate']:5.2f}% [{100 * r['low']:.2f}, {100 * r['high']:.2f}]"
    print("\nonline loop, SIMULATION figures (per impression of a k-item list; 95% intervals)")
    print(f"{'comparison':<22} {'arm':<10} {'shown':>6}  {'CTR':<24} {'CVR':<24}")
    for name, c in result["comparisons"].items():
        for arm, a in c["arms"].items():
            print(f"{name:<22} {arm:<10} {a['impressions']:>6}  {pct(a['ctr']):<24} {pct(a['cvr']):<24}")
        for metric, d in c["difference"].items():
            if d["diff"] is None:
                continue
            print(f"{'':<22} {c['treatment']} - {c['control']} {metric}: {100 * d['diff']:+.2f} points "
                  f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] p={d['p_value']:.3g}"
                  + ("  (underpowered)" if d["underpowered"] else ""))
    print("\nnew products (SIMULATION): share that ever sold through the arm's recommendations, days to first sale")
    for arm, m in result["new_products"].items():
        t = m["time_to_first_purchase_days"]
        median = "-" if t["median"] is None else f"{t['median']:.1f}"
        shown = "" if m.get("share_shown") is None else f"  shown at least once: {100 * m['share_shown']:.0f}%"
        print(f"  {arm:<10} sold {m['sold']:>3}/{m['launched']:<3} ({100 * (m['share_sold'] or 0):.0f}%)  "
              f"median {median} days to first sale{shown}")
    print("\nregret vs the oracle (SIMULATION): expected clicks per impression lost")
    for arm, r in result["regret"].items():
        if r["per_impression"] is None:
            continue
        print(f"  {arm:<10} {r['per_impression']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] of "
              f"{r['oracle_expected_clicks_per_impression']:.3f} ({100 * r['relative']:.0f}%)")
    weekly = result["comparisons"]["retrained_vs_frozen"].get("weekly", [])
    if weekly:
        print("\nretrained vs frozen by week (SIMULATION CTR)")
        for w in weekly:
            cells = "  ".join(f"{arm} {pct(w[arm]['ctr'])}" for arm in ("retrained", "model"))
            print(f"  week {w['week']}: {cells}")


if __name__ == "__main__":
    sys.exit(main())

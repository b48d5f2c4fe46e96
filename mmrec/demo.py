"""The main job end to end on the embedded default (`make demo` / `mmrec demo`).

    emoji-market (479 products x 14 languages, images) ──► encoders (titles + images, one space)
        ──► Qdrant Edge in DATA_DIR ──► fusion transformer trained on the shopper SIMULATION
        ──► cross-market evaluation vs baselines ──► example recommendations across languages
        ──► `mmrec serve --data-dir DATA_DIR --model DATA_DIR/model.pt`

Every step reuses what a previous run left: listings already in the store are not embedded again (and the
encoders cache what they compute), a checkpoint trained on the same data and vector space is loaded instead
of retrained. The events are a simulation (`mmrec.data.datasets.shoppers`), and every figure says so.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmrec.errors import UserError
from mmrec.store.indexing import index_catalog, stored_vectors  # noqa: F401 - moved in 0.2, kept here for one release

DATASET = "emoji-market"
METRICS = ("ndcg@10", "recall@10", "mrr@10")


@dataclass
class DemoConfig:
    """data_dir: the service data dir the demo fills (store, checkpoint, report). train_minutes: the
    training budget (the best validation epoch is kept). history_market / target_market: the example
    shoppers' home storefront and the storefront they are recommended for."""

    data_dir: Path = Path("demo-data")
    train_minutes: float = 4.0
    epochs: int = 40
    retrain: bool = False
    history_market: str = "DE"
    target_market: str = "JP"
    n_examples: int = 3
    k: int = 5
    threads: int = 1
    seed: int = 0
    progress: bool = True


class _Steps:
    """Numbered step headers with the time each took, so a slow step is visible."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.n, self.t0, self.last = say, 0, time.perf_counter(), time.perf_counter()

    def __call__(self, title: str) -> None:
        now = time.perf_counter()
        if self.n:
            self.say(f"   done in {now - self.last:.0f} s")
        self.n, self.last = self.n + 1, now
        self.say(f"\n[{self.n}] {title}")

    def total(self) -> float:
        return time.perf_counter() - self.t0


def _fingerprint(split: Any) -> str:
    import hashlib

    d = split.describe()
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_demo(config: DemoConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step; returns the report (also written to data_dir/demo_report.json)."""
    import torch

    from evaluation.baselines import ContentKNN, Popularity
    from evaluation.protocol import evaluate
    from evaluation.report import build_report
    from evaluation.splits import cross_market_split
    from mmrec import datasets
    from mmrec.store.catalog_store import CatalogConfig, CatalogStore
    from mmrec.model.transformer import FusionConfig
    from mmrec.serving.two_stage import load_ranker
    from mmrec.model import FusionRecommender, TrainConfig

    torch.set_num_threads(config.threads)
    data_dir = Path(config.data_dir)
    step = _Steps(say)

    step(f"dataset: {DATASET}")
    ds = datasets.load(DATASET)
    say("   " + ds.describe().replace("\n", "\n   "))

    step(f"encoders + index: titles in 14 languages and images into one space, Qdrant Edge in {data_dir}")
    catalog = CatalogStore.open(data_dir, CatalogConfig())
    try:
        embedded = index_catalog(catalog, ds.items, progress=config.progress)
        say(f"   encoder {catalog.encoder.name}, {catalog.encoder.dim}-d; {embedded} listings embedded now, "
            f"{catalog.count() - embedded} already in the store")

        step("fusion transformer: train on the shopper SIMULATION (cross-market split)")
        split = cross_market_split(ds.events, items=ds.items, candidates="target_market", seed=config.seed)
        version = catalog.encoder.space
        vectors = stored_vectors(catalog, split.item_ids)
        product_of = dict(zip(ds.items["item_id"], ds.items["product_id"]))
        products = np.asarray([product_of[i] for i in split.item_ids], dtype=object)
        model_path = data_dir / "model.pt"
        fingerprint = _fingerprint(split)
        rec = None
        if model_path.exists() and not config.retrain:
            try:
                rec = FusionRecommender.load(model_path, vectors, item_ids=split.item_ids,
                                             item_market=split.item_market, item_products=products,
                                             vectors_version=version)
            except UserError as exc:
                say(f"   not reusing {model_path}: {exc}")
            if rec is not None and rec.report_.get("data_fingerprint") != fingerprint:
                say(f"   not reusing {model_path}: trained on other data")
                rec = None
            if rec is not None:
                say(f"   reusing {model_path} (trained on the same data and vector space; --retrain to redo)")
        if rec is None:
            rec = FusionRecommender(
                vectors,
                FusionConfig(content_dim=vectors.shape[1], hidden=64, n_layers=2, max_len=100, dropout=0.2,
                             id_dropout=0.2),
                TrainConfig(epochs=config.epochs, lr=3e-3, warmup_steps=50, max_train_seconds=60 * config.train_minutes,
                            num_threads=config.threads, seed=config.seed, progress=config.progress),
                item_ids=split.item_ids, item_market=split.item_market, item_products=products,
                vectors_version=version)
            rec.fit(split.train, split.valid)
            rec.report_["data_fingerprint"] = fingerprint
            rec.save(model_path, extra={"data": DATASET, "split": "cross_market"})
            r = rec.report_
            say(f"   {len(r['epochs'])} epochs in {r['train_seconds'] / 60:.1f} min, best validation NDCG@10 "
                f"{r.get('best_valid_ndcg@10', float('nan')):.3f} (epoch {r.get('best_epoch')}); saved {model_path}")

        step("evaluate: cross-market, full ranking over the target storefront's listings (SIMULATION)")
        models = {"mmrec": rec, "content-kNN": ContentKNN(vectors).fit(split.train),
                  "popularity (per market)": Popularity(by_market=True).fit(split.train)}
        results = {name: evaluate(m, split, ks=(10,), fit=False, metrics=("recall", "ndcg", "mrr"), progress=False)
                   for name, m in models.items()}
        report = build_report(results, split, title="emoji-market SIMULATION, cross-market",
                              metrics=("recall", "ndcg", "mrr"), reference="content-kNN", n_boot=1000)
        table = {name: {m: report.models[name]["metrics"][m] for m in METRICS} for name in results}
        say(f"   {len(split.test)} shoppers: history in their home market, target bought in another market")
        say(f"   {'model':<26}" + "".join(f"{m:>24}" for m in METRICS))
        for name, row in table.items():
            say(f"   {name:<26}" + "".join(f"{row[m]['mean']:>8.3f} [{row[m]['low']:.3f}, {row[m]['high']:.3f}]"
                                          for m in METRICS))

        step(f"recommend: {config.history_market} shoppers' histories -> listings of the "
             f"{config.target_market} storefront, with reasons (how much each result's log-probability "
             "drops without that history item)")
        ranker = load_ranker(model_path, catalog)
        examples = example_recommendations(ranker, ds, config)
        for ex in examples:
            say(f"\n   shopper {ex['user']} (history in {config.history_market}, newest last): "
                + ", ".join(ex["history"]))
            for r in ex["recommendations"]:
                because = ", ".join(f"{b['title']} ({b['attribution']:+.2f})" for b in r["because"]) or "-"
                say(f"     -> {r['title']}  [{r['item_id']}, {r['language']}]  ({r['english']})  "
                    f"because of: {because}")
    finally:
        catalog.close()

    step("serve it")
    say(f"   mmrec serve --data-dir {data_dir} --model {model_path}")
    say("   then: curl -s localhost:8000/recommend -H 'content-type: application/json' "
        f"-d '{{\"history\": [\"emoji:1f347:de\"], \"market\": \"{config.target_market}\", \"k\": 5}}'")
    total = step.total()
    say(f"\ndemo finished in {total / 60:.1f} min (figures above are from the shopper SIMULATION)")
    out = {"dataset": DATASET, "note": "SIMULATION: events from mmrec.data.datasets.shoppers",
           "evaluation": {n: {m: {k: round(float(v), 5) for k, v in row[m].items()} for m in METRICS}
                          for n, row in table.items()},
           "n_test": len(split.test), "examples": examples, "seconds": round(total, 1),
           "model": str(model_path), "train": {k: rec.report_.get(k) for k in ("best_epoch", "best_valid_ndcg@10",
                                                                                 "train_seconds", "stopped")}}
    (data_dir / "demo_report.json").write_text(json.dumps(out, indent=2, ensure_ascii=False, default=str) + "\n")
    return out


def example_recommendations(ranker: Any, ds: Any, config: DemoConfig) -> list[dict[str, Any]]:
    """Recommendations for a few shoppers whose whole recent history is in ``history_market``, asked
    for the ``target_market`` storefront (another language): each with the history items whose removal
    makes it least likely, and by how much (the drop in log-probability, `mmrec.model.attribution`)."""
    items = ds.items.select_columns(["item_id", "product_id", "title", "language", "market"]).to_pandas()
    title = dict(zip(items.item_id, items.title))
    english = dict(zip(items.product_id[items.language == "en"], items.title[items.language == "en"]))
    product = dict(zip(items.item_id, items.product_id))
    ev = ds.events.select_columns(["user_id", "item_id", "timestamp", "market"]).to_pandas()
    ev = ev.sort_values(["user_id", "timestamp"], kind="stable")
    home = ev.groupby("user_id").market.agg(lambda m: m.value_counts().index[0])
    users = [u for u in home.index[home == config.history_market]]
    rng = np.random.default_rng(config.seed)
    out = []
    for user in rng.permutation(users):
        hist = ev[(ev.user_id == user) & (ev.market == config.history_market)].item_id.tolist()[-10:]
        if len(set(hist)) < 3:
            continue
        recs, _ = ranker.recommend(hist, k=config.k, market=config.target_market)
        if not recs:
            continue
        out.append({
            "user": str(user), "history": _collapse([title[i] for i in hist]),
            "recommendations": [{"item_id": r.item_id, "title": r.payload.get("title"),
                                 "language": r.payload.get("language"), "market": r.payload.get("market"),
                                 "english": english.get(product.get(r.item_id), ""), "score": round(r.score, 3),
                                 "because": [{"item_id": i, "title": title.get(i, i), "attribution": round(a, 4)}
                                             for i, a in r.reasons]} for r in recs]})
        if len(out) == config.n_examples:
            break
    if not out:
        raise UserError(f"no shopper with a history in {config.history_market} got recommendations")
    return out


def _collapse(titles: list[str]) -> list[str]:
    """["clutch", "clutch", "bag"] -> ["clutch x2", "bag"]: a view, click and purchase of one listing
    are one line to a reader."""
    out: list[list] = []
    for t in titles:
        if out and out[-1][0] == t:
            out[-1][1] += 1
        else:
            out.append([t, 1])
    return [t if n == 1 else f"{t} x{n}" for t, n in out]

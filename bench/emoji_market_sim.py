"""Cross-market recommendation on the emoji-market shopper SIMULATION: mmrec vs content-kNN and popularity.

    .venv/bin/python bench/emoji_market_sim.py [--minutes 5] [--vectors text:use-m3] [--threads 1] [--bf16 on|off]

The events are a SIMULATION (mmrec.data.datasets.shoppers: seeded synthetic shoppers over the real
emoji-market catalog of 479 products x 14 languages/markets); every number here is a simulation figure.
Protocol (`evaluation.cross_market_split`): a shopper's history is their events in their home market;
the target is their last event on a listing of ANOTHER market; the model is told the storefront (the
target's market) as the request's context. Two candidate sets, same split and models:
  storefront: only the 479 listings of the target's market (what that storefront can show);
  all:        all 6,706 listings of every market.
Already-seen listings are excluded for every model. Writes bench/results/emoji_market_sim.json and prints
a table with 95% paired-bootstrap intervals.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("ndcg@10", "recall@10", "mrr@10")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0, help="mmrec training budget")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--vectors", default="text:use-m3", help="item content vectors (see mmrec.model.vectors)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", choices=("on", "off"), default="on",
                    help="bfloat16 autocast for mmrec's training (the committed result used on; off is faster "
                         "on CPUs without AMX, see TrainConfig.bf16)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "emoji_market_sim.json"))
    args = ap.parse_args()

    from evaluation.baselines import ContentKNN, Popularity
    from evaluation.report import build_report
    from evaluation.protocol import evaluate
    from evaluation.splits import cross_market_split
    from mmrec.data.datasets import load
    from mmrec.embedding.recipe import ItemRecipe
    from mmrec.model.vectors import catalog_vectors
    from mmrec.model.transformer import FusionConfig
    from mmrec.model import FusionRecommender, TrainConfig

    ds = load("emoji-market")
    vectors = catalog_vectors(ds.items, args.vectors, recipe=ItemRecipe(("title",)))
    splits = {c: cross_market_split(ds.events, items=ds.items, candidates=c) for c in ("target_market", "all")}
    split = splits["target_market"]
    aligned = vectors.aligned(split.item_ids)
    product_of = dict(zip(ds.items["item_id"], ds.items["product_id"]))  # a product's listings share its ID row
    print(f"emoji-market shopper SIMULATION, cross-market split: {len(split.test)} test cases, "
          f"{len(split.train)} training events, {split.n_items} listings", flush=True)

    mmrec_model = FusionRecommender(
        aligned,
        FusionConfig(content_dim=vectors.dim, hidden=64, n_layers=2, max_len=100, dropout=0.2, id_dropout=0.2),
        TrainConfig(epochs=args.epochs, lr=3e-3, warmup_steps=50, max_train_seconds=60 * args.minutes,
                    bf16=args.bf16 == "on", num_threads=args.threads),
        item_ids=split.item_ids, item_market=split.item_market, vectors_version=vectors.version,
        item_products=np.asarray([product_of[i] for i in split.item_ids], dtype=object),
    )
    models = {
        "mmrec": mmrec_model,
        "contentknn": ContentKNN(aligned),
        "popularity": Popularity(),
        "popularity_by_market": Popularity(by_market=True),
    }
    out: dict = {
        "benchmark": "emoji_market_sim",
        "note": "SIMULATION: events from mmrec.data.datasets.shoppers (synthetic shoppers over the real catalog)",
        "protocol": "cross_market_split: history = home-market events, target = last event in another market, "
                    "storefront (target market) given as context, seen listings excluded",
        "item_vectors": vectors.spec,
        "bf16": args.bf16 == "on",
        "split": split.describe(),
        "candidates": {},
    }
    fitted = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        fitted[name] = model.fit(split.train, split.valid) or model
        print(f"fitted {name} in {time.perf_counter() - t0:.1f}s", flush=True)
    fit_seconds = {name: None for name in models}
    fit_seconds["mmrec"] = mmrec_model.report_.get("train_seconds")
    for label, sp in (("storefront", splits["target_market"]), ("all", splits["all"])):
        results = {name: evaluate(model, sp, ks=(10,), fit=False, metrics=("recall", "ndcg", "mrr"), progress=False)
                   for name, model in fitted.items()}
        report = build_report(results, sp, title=f"emoji-market SIMULATION cross-market ({label})",
                              metrics=("recall", "ndcg", "mrr"), reference="contentknn", n_boot=args.n_boot)
        block = {"models": {}, "comparisons_vs_contentknn": [c.to_dict() for c in report.comparisons]}
        for name in results:
            entry = report.models[name]["metrics"]
            block["models"][name] = {**{m: round(entry[m]["mean"], 5) for m in METRICS},
                                     "ci95": {m: [round(entry[m]["low"], 5), round(entry[m]["high"], 5)] for m in METRICS}}
        block["mmrec_over_contentknn_ndcg@10"] = round(
            block["models"]["mmrec"]["ndcg@10"] / max(block["models"]["contentknn"]["ndcg@10"], 1e-12), 3)
        out["candidates"][label] = block
    out["mmrec"] = {"train_minutes": round(mmrec_model.report_["train_seconds"] / 60, 2),
                    "config": mmrec_model.model_.cfg.to_dict(), "report": mmrec_model.report_}
    out["machine"] = {"cpu_count": os.cpu_count(), "load_avg_end": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=float) + "\n")

    for label, block in out["candidates"].items():
        print(f"\ncandidates: {label} (SIMULATION figures)")
        header = f"{'model':<22}" + "".join(f"{m:>28}" for m in METRICS)
        print(header + "\n" + "-" * len(header))
        for name, m in block["models"].items():
            cells = [f"{m[k]:.4f} [{m['ci95'][k][0]:.4f}, {m['ci95'][k][1]:.4f}]" for k in METRICS]
            print(f"{name:<22}" + "".join(f"{c:>28}" for c in cells))
        print(f"mmrec / content-kNN NDCG@10 (simulation): {block['mmrec_over_contentknn_ndcg@10']:.2f}")
    print(f"\nmmrec trained {out['mmrec']['train_minutes']:.1f} min; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ML-1M cold-start items: the fusion transformer's content path vs content-kNN, SASRec and popularity.

    .venv/bin/python bench/coldstart.py [--epochs 10] [--minutes 10]

Protocol (`evaluation.cold_start_split`, defaults): items whose first rating comes at or after t (the time
that leaves 10% of the movies unseen: 371 movies) are cold; every model trains on the ratings before t
only, so it never sees an event on a cold movie; a test case is a user with ratings before t who rated
cold movies after it, and the relevant items are those cold movies. Two candidate sets, one split each:

  all:  every movie is ranked (the protocol's default): cold movies must beat the warm ones.
  cold: only the 371 cold movies are ranked (the "new arrivals" shelf): pure content-based ranking quality.

mmrec ranks cold movies through their content vectors (use-m3 text of title, year and genres) and the
learned "unknown item" embedding; SASRec has nothing but untrained ID rows for them (about zero by
construction). "mmrec + cold offset" adds a constant to the scores of items without an ID; the constant is
tuned on a pseudo-cold validation replica of the protocol that ends before t (train before t_v, targets
= movies first rated in [t_v, t)), never on the test. Writes bench/results/coldstart.json and prints a
table with 95% paired-bootstrap intervals.
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
GOAL = 1.2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--minutes", type=float, default=8.0, help="budget of each mmrec / SASRec fit")
    ap.add_argument("--valid-quantile", type=float, default=0.85,
                    help="t_v = this quantile of the movies' first-rating times (pseudo-cold validation)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "coldstart.json"))
    args = ap.parse_args()

    import pandas as pd

    from evaluation.baselines import ContentKNN, Popularity
    from evaluation.baselines.sasrec import SASRec, SASRecConfig
    from evaluation.protocol import evaluate
    from evaluation.report import build_report
    from evaluation.splits import cold_start_split
    from mmrec.data.datasets import load
    from mmrec.embedding.recipe import FIELDS, ItemRecipe
    from mmrec.model.vectors import text_vectors
    from mmrec.model.transformer import FusionConfig
    from mmrec.model import FusionRecommender, TrainConfig

    ds = load("ml-1m")
    splits = {c: cold_start_split(ds.events, candidates=c) for c in ("all", "cold")}
    split = splits["all"]
    first_seen = pd.Series(np.asarray(ds.events["timestamp"])).groupby(np.asarray(ds.events["item_id"])).min()
    t_valid = int(np.quantile(first_seen.to_numpy(), args.valid_quantile))
    replica = cold_start_split(ds.events, valid_t=t_valid)  # train < t_v, validation targets in [t_v, t)
    vectors = text_vectors(ds.items, "use-m3", recipe=ItemRecipe(FIELDS))  # genres mean something here
    aligned = vectors.aligned(split.item_ids)
    print(f"ML-1M cold-start items: {split.params['n_cold_items']} cold movies, {len(split.train)} training "
          f"ratings before t, {len(split.test)} test cases; validation replica: {len(replica.train)} ratings "
          f"before t_v, {len(replica.valid)} cases", flush=True)

    def fusion() -> FusionRecommender:
        return FusionRecommender(
            aligned, FusionConfig(content_dim=vectors.dim, hidden=64, n_layers=2, max_len=200, dropout=0.2,
                                  id_dropout=0.3),
            TrainConfig(epochs=args.epochs, batch_size=32, lr=3e-3, warmup_steps=100,
                        max_train_seconds=60 * args.minutes, num_threads=args.threads),
            item_ids=split.item_ids, vectors_version=vectors.version)

    t0 = time.perf_counter()
    tuner = fusion().fit(replica.train)
    offset = tuner.tune_cold_offset(replica.valid)
    tune_seconds = time.perf_counter() - t0
    print(f"cold offset tuned on the validation replica: {offset} ({tuner.report_['cold_offset_search']})", flush=True)

    mmrec_model = fusion()
    models = {
        "mmrec": mmrec_model,
        "contentknn": ContentKNN(aligned),
        "sasrec": SASRec(SASRecConfig(max_train_seconds=60 * args.minutes, max_epochs=args.epochs,
                                      num_threads=args.threads)),
        "popularity": Popularity(),
    }
    fitted, fit_seconds = {}, {}
    for name, model in models.items():
        t0 = time.perf_counter()
        fitted[name] = model.fit(split.train, None) or model
        fit_seconds[name] = time.perf_counter() - t0
        print(f"fitted {name} in {fit_seconds[name] / 60:.1f} min", flush=True)

    class WithOffset:
        """mmrec with the validation-tuned cold offset (same fitted weights)."""

        name = "mmrec+cold_offset"

        def fit(self, train, valid=None):
            return self

        def recommend(self, histories, k, exclude_seen=True, candidates=None):
            mmrec_model.cold_offset = offset
            try:
                return mmrec_model.recommend(histories, k, exclude_seen=exclude_seen, candidates=candidates)
            finally:
                mmrec_model.cold_offset = 0.0

    out: dict = {
        "benchmark": "coldstart",
        "protocol": "cold_start_split (ML-1M): cold = first rating at or after t; train before t; targets = cold "
                    "movies rated after t; seen movies excluded; 95% paired-bootstrap intervals over users",
        "split": split.describe(),
        "validation_replica": {"t_valid": t_valid, **replica.describe()},
        "cold_offset": {"value": offset, "search": tuner.report_["cold_offset_search"],
                        "tune_minutes": round(tune_seconds / 60, 2)},
        "train_minutes": {k: round(v / 60, 2) for k, v in fit_seconds.items()},
        "candidates": {},
    }
    for label, sp in splits.items():
        todo = dict(fitted)
        if label == "all":
            todo = {"mmrec": fitted["mmrec"], "mmrec+cold_offset": WithOffset(), **{k: v for k, v in fitted.items() if k != "mmrec"}}
        results = {name: evaluate(m, sp, ks=(10,), fit=False, metrics=("recall", "ndcg", "mrr"), progress=False)
                   for name, m in todo.items()}
        report = build_report(results, sp, title=f"ML-1M cold-start ({label} candidates)",
                              metrics=("recall", "ndcg", "mrr"), reference="contentknn", n_boot=args.n_boot)
        block = {"models": {}, "comparisons_vs_contentknn": [c.to_dict() for c in report.comparisons]}
        for name in results:
            entry = report.models[name]["metrics"]
            block["models"][name] = {**{m: round(entry[m]["mean"], 5) for m in METRICS},
                                     "ci95": {m: [round(entry[m]["low"], 5), round(entry[m]["high"], 5)] for m in METRICS}}
        ck = max(block["models"]["contentknn"]["ndcg@10"], 1e-12)
        block["ndcg@10_over_contentknn"] = {n: round(m["ndcg@10"] / ck, 3) for n, m in block["models"].items()}
        out["candidates"][label] = block
    out["mmrec"] = {"config": mmrec_model.model_.cfg.to_dict(), "report": mmrec_model.report_}
    out["sasrec"] = models["sasrec"].describe()
    out["machine"] = {"cpu_count": os.cpu_count(), "load_avg_end": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=float) + "\n")

    for label, block in out["candidates"].items():
        print(f"\ncandidates: {label}")
        header = f"{'model':<20}" + "".join(f"{m:>28}" for m in METRICS) + f"{'/ cknn':>8}"
        print(header + "\n" + "-" * len(header))
        for name, m in block["models"].items():
            cells = [f"{m[k]:.4f} [{m['ci95'][k][0]:.4f}, {m['ci95'][k][1]:.4f}]" for k in METRICS]
            print(f"{name:<20}" + "".join(f"{c:>28}" for c in cells) + f"{block['ndcg@10_over_contentknn'][name]:>8.2f}")
    print(f"\ngoal: NDCG@10 >= {GOAL}x content-kNN; cold offset {offset} (tuned on the validation replica); "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

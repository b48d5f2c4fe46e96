"""Faithful reasons: deletion fidelity of leave-one-out reasons vs random history items vs cosine reasons.

    .venv/bin/python bench/explanations.py [--minutes 3] [--cases 300] [--ml1m-users 1500] [--threads 1]

For each dataset a fusion transformer is trained with a small time budget, then for a seeded sample of
test cases (histories with >= 3 distinct items) it recommends its top 10. For every result, three ways to
pick two history items, each removed (every event of them) from the history before the result's rank is
measured again among the same candidates (the case's candidate set minus the full history's items):

  reasons:       the reasons the service shows (`FusionRecommender.explain`, sequential leave-one-out
                 deletion: the item whose removal lowers the result's log-probability among the candidates
                 most, then the same question of the history without it); only positive ones are shown, so
                 a result can have fewer than two (the share is reported) and then only those are removed
  leave_one_out: the two items with the largest single-removal drop (`FusionRecommender.attributions`),
                 whatever their sign: plain leave-one-out, one forward fewer
  random:        two distinct items drawn among the items the model reads (its window), 4 draws averaged
  cosine:        the two window items whose model representation is closest to the result's (the
                 previous rule)

rank_drop = rank after removal - rank before (1..10), averaged over all (case, result) pairs; higher means
the named items really carried the result (score_drop: the same in raw model score). same_reasons_share = share of cases whose 10 results all have
the same set of top-2 reasons (the complaint in issue #18: every result "because of" the same hub items).

Datasets: emoji-market (the shopper SIMULATION: cross-market split, candidates = the target storefront's
listings; every number a simulation figure) and ML-1M (leave-one-out, all movies ranked; trained on a
seeded user sample for time, said so in the JSON). Writes bench/results/explanations.json.
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

K, N_REASONS, N_RANDOM = 10, 2, 4
METHODS = ("reasons", "leave_one_out", "random", "cosine")


def train_emoji(args):
    from evaluation.splits import cross_market_split
    from mmrec.data.datasets import load
    from mmrec.embedding.recipe import ItemRecipe
    from mmrec.model import FusionRecommender, TrainConfig
    from mmrec.model.transformer import FusionConfig
    from mmrec.model.vectors import catalog_vectors

    ds = load("emoji-market")
    vectors = catalog_vectors(ds.items, "text:use-m3", recipe=ItemRecipe(("title",)))
    split = cross_market_split(ds.events, items=ds.items, candidates="target_market")
    product_of = dict(zip(ds.items["item_id"], ds.items["product_id"]))
    rec = FusionRecommender(
        vectors.aligned(split.item_ids),
        FusionConfig(content_dim=vectors.dim, hidden=64, n_layers=2, max_len=100, dropout=0.2, id_dropout=0.2),
        TrainConfig(epochs=40, lr=3e-3, warmup_steps=50, max_train_seconds=60 * args.minutes, eval_max_cases=1000,
                    num_threads=args.threads, progress=False),
        item_ids=split.item_ids, item_market=split.item_market, vectors_version=vectors.version,
        item_products=np.asarray([product_of[i] for i in split.item_ids], dtype=object))
    rec.fit(split.train, split.valid)
    info = {"note": "SIMULATION: events from mmrec.data.datasets.shoppers (synthetic shoppers over the real catalog)",
            "protocol": "cross_market_split, candidates = the target storefront's listings", "split": split.describe()}
    return rec, split, info


def train_ml1m(args):
    from ml1m import history_values  # bench/ml1m.py: each history event's own rating

    from evaluation.splits import leave_one_out
    from mmrec.data.datasets import load
    from mmrec.embedding.recipe import FIELDS, ItemRecipe
    from mmrec.model import FusionRecommender, TrainConfig
    from mmrec.model.transformer import FusionConfig
    from mmrec.model.vectors import text_vectors

    ds = load("ml-1m")
    split = leave_one_out(ds.events, max_users=args.ml1m_users, seed=0)
    vectors = text_vectors(ds.items, "use-m3", recipe=ItemRecipe(FIELDS))
    rec = FusionRecommender(
        vectors.aligned(split.item_ids),
        FusionConfig(content_dim=vectors.dim, hidden=64, n_layers=2, max_len=200, dropout=0.2, id_dropout=0.0),
        TrainConfig(epochs=60, batch_size=32, lr=3e-3, warmup_steps=100, max_train_seconds=60 * args.minutes,
                    eval_max_cases=1000, patience=100, id_init="cooccurrence", num_threads=args.threads,
                    progress=False),
        item_ids=split.item_ids, vectors_version=vectors.version, value_lookup=history_values(ds.events, split))
    rec.fit(split.train, split.valid)
    info = {"protocol": "leave_one_out (last rating = test), all movies ranked",
            "user_sample": f"seeded sample of {args.ml1m_users} of 6,040 users (max_users, seed 0), for time",
            "split": split.describe()}
    return rec, split, info


def cosine_pairs(table_unit: np.ndarray, results: np.ndarray, window: np.ndarray) -> list[np.ndarray]:
    """For each result, the two window items whose model representation is closest (the old reasons)."""
    sims = table_unit[results] @ table_unit[window].T
    return [window[np.argsort(-row, kind="stable")[:N_REASONS]] for row in sims]


def measure(rec, split, n_cases: int, seed: int) -> dict:
    from evaluation import Histories
    from mmrec.model.attribution import top_reasons, window_items, without_items

    rng = np.random.default_rng(seed)
    test = split.test
    max_len = rec.model_.cfg.max_len
    distinct = np.array([len(set(test.histories[i].tolist())) for i in range(len(test))])
    eligible = np.flatnonzero(distinct >= 3)
    cases = np.sort(rng.choice(eligible, min(n_cases, len(eligible)), replace=False))
    table = rec.item_matrix()
    table_unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    drops = {m: [] for m in METHODS}
    score_drops = {m: [] for m in METHODS}
    same = {"reasons": [], "leave_one_out": [], "cosine": []}
    same5 = {"reasons": [], "leave_one_out": [], "cosine": []}
    distinct_sets = {"reasons": [], "leave_one_out": [], "cosine": []}
    fewer_positive, n_reason_items, explain_seconds, loo_seconds, n_loo = 0, [], 0.0, 0.0, 0
    for start in range(0, len(cases), 50):
        chunk = cases[start : start + 50]
        sub = test.subset(chunk)
        h: Histories = sub.histories
        groups = sub.candidate_group if sub.candidates is not None else np.zeros(len(chunk), np.int64)
        recs = np.zeros((len(chunk), K), dtype=np.int64)
        for g in np.unique(groups):
            rows = np.flatnonzero(groups == g)
            cands = None if sub.candidates is None else sub.candidates[g]
            recs[rows] = rec.recommend(h.subset(rows), K, candidates=cands).items
        t0 = time.perf_counter()
        row_cands = None if sub.candidates is None else [sub.candidates[g] for g in groups]
        explained = rec.explain(h, recs, N_REASONS, candidates=row_cands)
        t1 = time.perf_counter()
        attributions = rec.attributions(h, recs, candidates=row_cands)
        explain_seconds += t1 - t0
        loo_seconds += time.perf_counter() - t1
        remove, owner, meta = [], [], []  # meta: (case in chunk, result slot, method)
        for b, (items, values) in enumerate(attributions):
            n_loo += len(items)
            window = np.asarray(window_items(h[b], max_len), dtype=np.int64)
            cos = cosine_pairs(table_unit, recs[b], window)
            shown, loo_sets = [], []
            for r in range(K):
                pair = items[np.argsort(-values[:, r], kind="stable")[:N_REASONS]]
                reasons = np.array([i for i, _ in explained[b][r]], dtype=np.int64)
                fewer_positive += len(reasons) < N_REASONS
                n_reason_items.append(len(reasons))
                shown.append(frozenset(reasons.tolist()))
                loo_sets.append(frozenset(i for i, _ in top_reasons(items.tolist(), values[:, r], N_REASONS)))
                for method, removed in (("reasons", reasons), ("leave_one_out", pair), ("cosine", cos[r])):
                    remove.append(removed), owner.append(b), meta.append((b, r, method))
                for _ in range(N_RANDOM):
                    remove.append(rng.choice(window, N_REASONS, replace=False)), owner.append(b)
                    meta.append((b, r, "random"))
            for method, sets in (("reasons", shown), ("leave_one_out", loo_sets),
                                 ("cosine", [frozenset(c.tolist()) for c in cos])):
                same[method].append(len(set(sets)) == 1)
                same5[method].append(len(set(sets[:5])) == 1)
                distinct_sets[method].append(len(set(sets)))
        reduced = without_items(h, remove, owner)
        users_full = rec.user_vectors(h)
        users_red = rec.user_vectors(reduced.histories)
        per_result: dict = {}
        for b in range(len(chunk)):
            cands = np.arange(split.n_items) if sub.candidates is None else sub.candidates[groups[b]]
            cands = np.setdiff1d(cands, h[b])  # the same candidates before and after: the full history's
            # items stay excluded, so a rank moves only because the result's score moved against the others
            scores = table[cands] @ users_full[b]
            pos = {int(c): i for i, c in enumerate(cands)}
            before = {r: (scores[pos[int(recs[b, r])]], 1 + int((scores > scores[pos[int(recs[b, r])]]).sum()))
                      for r in range(K)}
            per_result[b] = (cands, pos, before)
        for row, (b, r, method) in enumerate(meta):
            cands, pos, before = per_result[b]
            scores = table[cands] @ users_red[row]
            s = scores[pos[int(recs[b, r])]]
            rank = 1 + int((scores > s).sum())
            drops[method].append((b + start, r, rank - before[r][1], rank))
            score_drops[method].append(before[r][0] - s)
        print(f"  {min(start + 50, len(cases))}/{len(cases)} cases", flush=True)

    def per_pair(method: str) -> np.ndarray:
        """Rank drop per (case, result): random's draws averaged first."""
        by: dict = {}
        for case, r, d, _ in drops[method]:
            by.setdefault((case, r), []).append(d)
        return np.array([np.mean(v) for v in by.values()], dtype=np.float64)

    values = {m: per_pair(m) for m in METHODS}
    n_results = len(values["reasons"])
    out = {
        "rank_drop": {m: round(float(values[m].mean()), 3) for m in METHODS},
        "rank_drop_median": {m: round(float(np.median(values[m])), 3) for m in METHODS},
        "left_top10_share": {m: round(float(np.mean([after > K for (*_, after) in drops[m]])), 4) for m in METHODS},
        "score_drop": {m: round(float(np.mean(score_drops[m])), 4) for m in METHODS},
        "same_reasons_share": {m: round(float(np.mean(same[m])), 4) for m in same},
        "same_reasons_share_top5": {m: round(float(np.mean(same5[m])), 4) for m in same5},
        "distinct_reason_sets_per_case": {m: round(float(np.mean(distinct_sets[m])), 2) for m in distinct_sets},
        "n_cases": len(cases),
        "n_results": int(n_results),
        "k": K,
        "results_with_fewer_than_2_positive_reasons": round(fewer_positive / max(n_results, 1), 4),
        "mean_positive_reasons_shown": round(float(np.mean(n_reason_items)), 3),
        "timing": {"explain_seconds_per_case": round(explain_seconds / max(len(cases), 1), 4),
                   "leave_one_out_seconds_per_case": round(loo_seconds / max(len(cases), 1), 4),
                   "mean_window_items_per_case": round(n_loo / max(len(cases), 1), 1),
                   "note": f"{K} results per case, batches of 50 cases; explain = sequential deletion, 2 reasons "
                           "(2 batched forwards), leave_one_out = 1 batched forward (2-core shared box, 1 torch thread)"},
        "mean_history_length": round(float(test.histories.lengths[cases].mean()), 1),
    }
    rd = out["rank_drop"]
    out["reasons_over_random"] = round(rd["reasons"] / max(rd["random"], 1e-9), 2)
    out["bar"] = {"reasons >= 2x random": bool(rd["reasons"] >= 2 * rd["random"]),
                  "reasons >= cosine": bool(rd["reasons"] >= rd["cosine"])}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0, help="training budget per dataset")
    ap.add_argument("--cases", type=int, default=300, help="test cases measured per dataset")
    ap.add_argument("--ml1m-users", type=int, default=1500, help="ML-1M user sample for training")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--datasets", nargs="*", default=("emoji-market", "ml-1m"), choices=("emoji-market", "ml-1m"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "explanations.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    out: dict = {"benchmark": "explanations",
                 "what": "deletion fidelity: remove a result's top-2 reasons (leave-one-out attribution), 2 random "
                         "window items (4 draws averaged) or the 2 cosine-closest items (the previous reasons) from "
                         "the history; rank_drop = mean rank after - rank before over the top-10 results; "
                         "same_reasons_share = share of cases whose 10 results all share one reason set",
                 "datasets": {}}
    previous = Path(args.out)
    if previous.exists() and set(args.datasets) != {"emoji-market", "ml-1m"}:
        out["datasets"] = json.loads(previous.read_text()).get("datasets", {})
    trainers = {"emoji-market": train_emoji, "ml-1m": train_ml1m}
    for name in args.datasets:
        print(f"{name}: training ({args.minutes} min budget) ...", flush=True)
        t0 = time.perf_counter()
        rec, split, info = trainers[name](args)
        train_minutes = (time.perf_counter() - t0) / 60
        print(f"{name}: best valid NDCG@10 {rec.report_.get('best_valid_ndcg@10', float('nan')):.4f}; measuring ...",
              flush=True)
        t1 = time.perf_counter()
        result = measure(rec, split, args.cases, args.seed)
        result.update(info)
        result["model"] = {"train_minutes": round(train_minutes, 2),
                           "best_valid_ndcg@10": rec.report_.get("best_valid_ndcg@10"),
                           "epochs": len(rec.report_.get("epochs", [])), "config": rec.model_.cfg.to_dict()}
        result["measure_seconds"] = round(time.perf_counter() - t1, 1)
        out["datasets"][name] = result
    out["machine"] = {"cpu_count": os.cpu_count(), "load_avg_end": os.getloadavg(), "threads": args.threads}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=float) + "\n")

    print(f"\n{'dataset':<14}{'reasons':>10}{'LOO top2':>10}{'random':>10}{'cosine':>10}{'x random':>10}"
          f"{'same (reasons)':>16}{'same (cosine)':>15}")
    for name, r in out["datasets"].items():
        rd, ss = r["rank_drop"], r["same_reasons_share"]
        print(f"{name:<14}{rd['reasons']:>10.2f}{rd['leave_one_out']:>10.2f}{rd['random']:>10.2f}{rd['cosine']:>10.2f}"
              f"{r['reasons_over_random']:>10.2f}{ss['reasons']:>16.3f}{ss['cosine']:>15.3f}")
    print(f"(mean rank drop of a top-{K} result when two history items are removed; emoji-market is a SIMULATION)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

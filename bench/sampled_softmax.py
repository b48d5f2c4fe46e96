"""Full softmax vs sampled softmax (logQ-corrected, in-batch + uniform negatives) for the fusion transformer:
quality on ML-1M in one run, and the memory of one training step as the catalog grows.

    .venv/bin/python bench/sampled_softmax.py [--minutes 4] [--max-users N]

ML-1M: one leave-one-out split (per user: last rating = test, second to last = validation; full ranking
over all 3,706 rated movies, history excluded) and one content vector set (use-m3 text of "title (alt
title) (year). genres") for both runs; the same model config, seed and wall-clock budget
(`TrainConfig.max_train_seconds`, validation included). Only `TrainConfig.loss` differs ("full" vs
"sampled", `n_negatives` uniform draws + the batch's targets). 95% paired-bootstrap intervals over users.

Step memory: peak resident memory of one training step (batch, features and loss; after two warm-up
steps, so the optimizer state already exists) above the memory held before it, read from the kernel's
high-water mark (`/proc/self/clear_refs` reset). On ML-1M for both losses, and with the sampled loss on
synthetic catalogs of 10k / 100k / 1M items (same batch, same histories' shape; random content vectors
of width --synthetic-dim), each in its own process. Writes bench/results/sampled_softmax.json and prints
a table. Linux only (reads /proc).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("ndcg@10", "recall@10")
SIZES = (10_000, 100_000, 1_000_000)


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _trim() -> None:
    """Give freed heap memory back to the OS (glibc), so the RSS before a step is what is live."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def step_memory_mb(model, items, codes, tcfg, *, full: bool, catalog, log_q=None, steps: int = 3,
                   seed: int = 0, sparse_ids: bool | None = None) -> float:
    """Peak RSS of a training step above the RSS before it (MB), the largest of ``steps`` steps, each
    step = gather a batch, `next_item_loss`, backward, optimizer step (the optimizer `train_model` uses;
    ``sparse_ids=False`` forces the dense AdamW of earlier releases, for comparison)."""
    import torch

    from mmrec.model import gather, next_item_loss, training_windows
    from mmrec.model.training import make_optimizer

    starts, lengths = training_windows(codes, model.cfg.max_len, tcfg.windows)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model, tcfg, sparse_ids=(not full) if sparse_ids is None else sparse_ids)
    catalog_t = torch.as_tensor(catalog, dtype=torch.long)
    model.train()

    def one_step() -> None:
        idx = rng.choice(len(starts), min(tcfg.batch_size, len(starts)), replace=False)
        batch = gather(codes, starts[idx], lengths[idx])
        loss, _ = next_item_loss(model, items, batch, catalog_t, log_q, tcfg, full, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # optimizer state, dropout pool, allocator arenas
        one_step()
    peak = 0.0
    for _ in range(steps):
        _trim()
        before = _status_mb("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the high-water mark to the current RSS
        one_step()
        peak = max(peak, _status_mb("VmHWM") - before)
    model.id_emb.sparse = False
    return round(peak, 1)


def synthetic_step_memory(n_items: int, dim: int, batch_size: int, max_len: int, n_negatives: int,
                          sparse_ids: bool = True) -> dict:
    """One catalog size, in this process: random content vectors, 2,000 histories of max_len + 1 items
    drawn from the catalog's first 5,000 (a popular head, so a batch holds the same number of distinct
    items at every size and only the catalog grows), the sampled loss with uniform negatives over the
    whole catalog and its logQ table (as `train_model` builds it)."""
    import torch

    from mmrec.model import (
        EventCodes,
        FusionConfig,
        FusionTransformer,
        ItemSide,
        TrainConfig,
    )

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n_users, per = 2000, max_len + 1
    item = rng.integers(0, min(n_items, 5000), n_users * per)
    cfg = FusionConfig(content_dim=dim, n_ids=n_items, max_len=max_len, id_dropout=0.1)
    codes = EventCodes.build(item, np.arange(0, n_users * per + 1, per), cfg,
                             timestamps=np.arange(n_users * per, dtype=np.int64) * 600)
    model = FusionTransformer(cfg)
    items = ItemSide(torch.randn(n_items, dim), torch.arange(1, n_items + 1), torch.zeros(n_items, dtype=torch.long))
    tcfg = TrainConfig(loss="sampled", batch_size=batch_size, n_negatives=n_negatives)
    counts = np.bincount(item, minlength=n_items).astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(counts / counts.sum())).float()
    rss_before = _status_mb("VmRSS")
    mb = step_memory_mb(model, items, codes, tcfg, full=False, catalog=np.arange(n_items), log_q=log_q,
                        sparse_ids=sparse_ids)
    return {"n_items": n_items, "peak_step_mem_mb": mb, "rss_before_steps_mb": round(rss_before, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget of EACH model (validation included)")
    ap.add_argument("--epochs", type=int, default=60, help="epochs if the budget does not bind first")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-negatives", type=int, default=1024, help="sampled softmax: uniform negatives per batch")
    ap.add_argument("--max-users", type=int, default=None, help="quick run on a sample of users")
    ap.add_argument("--synthetic-dim", type=int, default=128, help="content width of the synthetic catalogs")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--step-memory-only", type=int, default=None, help=argparse.SUPPRESS)  # child process
    ap.add_argument("--dense-ids", action="store_true", help=argparse.SUPPRESS)  # child: the old optimizer
    ap.add_argument("--note", default=None, help="a note stored in the JSON (e.g. how the run was scheduled)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampled_softmax.json"))
    args = ap.parse_args()

    if args.step_memory_only is not None:
        print(json.dumps(synthetic_step_memory(args.step_memory_only, args.synthetic_dim, args.batch_size, 200,
                                               args.n_negatives, sparse_ids=not args.dense_ids)))
        return 0

    import torch

    from evaluation.protocol import evaluate
    from evaluation.report import build_report
    from evaluation.splits import leave_one_out
    from mmrec.data.datasets import load
    from mmrec.embedding.recipe import FIELDS, ItemRecipe
    from mmrec.model import (
        EventCodes,
        FusionConfig,
        FusionRecommender,
        FusionTransformer,
        TrainConfig,
    )
    from mmrec.model.vectors import text_vectors

    torch.set_num_threads(1)
    load_start = os.getloadavg()
    started = time.time()

    # --- step memory on synthetic catalogs, one process each (so one size's memory cannot hide another's)
    step_memory, step_dense, step_detail = {}, {}, {}
    for n in SIZES:
        for dense in (False, True):
            print(f"step memory, sampled softmax, {n:,} items, {'dense' if dense else 'sparse'} ID gradients ...",
                  flush=True)
            proc = subprocess.run([sys.executable, __file__, "--step-memory-only", str(n), "--batch-size",
                                   str(args.batch_size), "--n-negatives", str(args.n_negatives), "--synthetic-dim",
                                   str(args.synthetic_dim)] + (["--dense-ids"] if dense else []),
                                  capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            (step_dense if dense else step_memory)[str(n)] = row["peak_step_mem_mb"]
            step_detail[f"{n}{'_dense_ids' if dense else ''}"] = row

    # --- ML-1M, one split, one vector set
    ds = load("ml-1m")
    split = leave_one_out(ds.events, max_users=args.max_users)
    print(f"ML-1M leave-one-out: {split.n_users} users, {split.n_items} items (full ranking)", flush=True)
    vectors = text_vectors(ds.items, "use-m3", recipe=ItemRecipe(FIELDS))
    aligned = vectors.aligned(split.item_ids)
    mcfg = FusionConfig(content_dim=vectors.dim, hidden=64, n_layers=2, n_heads=1, ffn_mult=2, max_len=200,
                        dropout=0.2, id_dropout=0.0)
    base = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=3e-3, weight_decay=0.01, warmup_steps=100,
                       max_train_seconds=60 * args.minutes, eval_max_cases=2000, windows="all", patience=100,
                       num_threads=1, id_init="cooccurrence", n_negatives=args.n_negatives, seed=0)
    results, fitted, mem = {}, {}, {}
    for loss in ("full", "sampled"):
        tcfg = replace(base, loss=loss)
        rec = FusionRecommender(aligned, mcfg, tcfg, item_ids=split.item_ids, vectors_version=vectors.version)
        # step memory on ML-1M, with a fresh model of the same config (before the timed fit)
        probe_cfg = replace(mcfg, n_ids=split.n_items)
        rec.model_, rec.id_items_ = FusionTransformer(probe_cfg), [str(x) for x in split.item_ids]
        items = rec._item_side()
        codes = EventCodes.from_interactions(split.train, probe_cfg)
        log_q = None if loss == "full" else torch.full((split.n_items,), float(np.log(1.0 / split.n_items)))
        mem[loss] = step_memory_mb(rec.model_, items, codes, tcfg, full=loss == "full",
                                   catalog=np.arange(split.n_items), log_q=log_q)
        rec.model_ = None
        print(f"fitting and evaluating mmrec with the {loss} softmax ({args.minutes:g} min budget) ...", flush=True)
        results[loss] = evaluate(rec, split, ks=(10,), metrics=("recall", "ndcg"))
        fitted[loss] = rec
        print(f"  {loss}: " + ", ".join(f"{m} {results[loss].mean(m):.4f}" for m in METRICS)
              + f" (fit {results[loss].fit_seconds:.0f} s, step memory {mem[loss]:.0f} MB)", flush=True)
    report = build_report(results, split, title="ML-1M full vs sampled softmax", metrics=("recall", "ndcg"),
                          reference="full", n_boot=args.n_boot)

    out: dict = {
        "benchmark": "sampled_softmax",
        "protocol": "ML-1M leave-one-out by time, full ranking over all rated movies, history excluded; one split, "
                    "one content vector set (use-m3), same model config, seed and wall-clock budget for both; "
                    "95% paired-bootstrap intervals over users",
        "split": split.describe(),
        "ml1m": {},
        "step_memory": step_memory,
    }
    for loss, res in results.items():
        entry = report.models[loss]["metrics"]
        out["ml1m"][loss] = {
            **{m: round(entry[m]["mean"], 5) for m in METRICS},
            "intervals": {m: [round(entry[m]["low"], 5), round(entry[m]["high"], 5)] for m in METRICS},
            "train_s": round(res.fit_seconds, 1),
            "peak_step_mem_mb": mem[loss],
            "epochs": len(fitted[loss].report_["epochs"]),
            "best_epoch": fitted[loss].report_.get("best_epoch"),
            "stopped": fitted[loss].report_["stopped"],
        }
    diff = next((c for c in report.comparisons if c.metric == "ndcg@10"), None)
    if diff is not None:
        out["ml1m"]["sampled_minus_full_ndcg@10"] = {"diff": round(diff.diff, 5),
                                                     "ci95": [round(diff.low, 5), round(diff.high, 5)],
                                                     "a": diff.a, "b": diff.b}
    out["step_memory_detail"] = {
        "how": "sampled softmax, batch of --batch-size windows of up to 200 events, "
               f"{args.n_negatives} uniform negatives + in-batch targets, content width {args.synthetic_dim}, "
               "peak RSS of a step above the RSS before it (after 2 warm-up steps), largest of 3 steps",
        "runs": step_detail,
        "dense_ids_before": step_dense,
        "dense_ids_before_how": "the same steps with the optimizer of earlier releases (dense ID gradient, AdamW "
                                "over the whole ID table every step), measured in the same run",
    }
    out["config"] = {"model": mcfg.to_dict(), "train": {k: v for k, v in vars(base).items()},
                     "minutes_each": args.minutes}
    out["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load_avg_start": load_start,
                      "load_avg_end": os.getloadavg(), "wall_s": round(time.time() - started, 1),
                      "note": "2-core machine shared with other jobs: timings are noisy"}
    if args.note:
        out["note"] = args.note
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=float) + "\n")

    header = f"{'ML-1M':<10}" + "".join(f"{m:>26}" for m in METRICS) + f"{'train s':>9}{'step MB':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    for loss in results:
        m = out["ml1m"][loss]
        cells = [f"{m[k]:.4f} [{m['intervals'][k][0]:.4f}, {m['intervals'][k][1]:.4f}]" for k in METRICS]
        print(f"{loss:<10}" + "".join(f"{c:>26}" for c in cells) + f"{m['train_s']:>9.0f}{m['peak_step_mem_mb']:>9.0f}")
    print(f"\n{'step memory, sampled softmax (MB)':<36}" + "".join(f"{int(n):>12,}" for n in step_memory))
    print(f"{'  sparse ID gradients (now)':<36}" + "".join(f"{v:>12.0f}" for v in step_memory.values()))
    print(f"{'  dense ID gradients (before)':<36}" + "".join(f"{v:>12.0f}" for v in step_dense.values()))
    print(f"load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

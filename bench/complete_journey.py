"""The Complete Journey (dunnhumby grocery: 92,331 products, 1.47M purchase lines, 2,469 households) through
mmrec's documented user path, each stage one CLI command in its own process, measured:

    embed     mmrec embed complete-journey --out vectors.parquet --no-images --text-encoder SPEC
    index     mmrec index complete-journey --data-dir DIR --text-encoder SPEC --image-encoder none --adapter none
    train     mmrec train --dataset complete-journey --vectors service:DIR --split next-basket --max-minutes M
    evaluate  mmrec evaluate --dataset complete-journey --protocol next-basket --item-vectors service:DIR
                  --models mmrec,personal-topfreq,popularity,contentknn,sasrec --mmrec-checkpoint DIR/model.pt
    serve     mmrec serve --data-dir DIR --model DIR/model.pt, then POST /recommend with real households'
              histories from 1 and 4 clients

Per stage: wall seconds, CPU seconds and peak RSS of that process (``os.wait4``'s rusage of the child).
``embed_rss_growth`` = peak RSS of `mmrec embed` on all items / on the first 10k items (both with an empty
embedding cache), i.e. whether embedding streams. Quality: next-basket on a temporal split (each household's
next basket after the 0.9 quantile of purchase times; training before the 0.8 quantile), full ranking over
the catalog, repeat purchases allowed and reported apart (repeat vs explore items; Li et al., TOIS 2023),
95% bootstrap intervals, paired comparisons against personal top-frequency.

    .venv/bin/python bench/complete_journey.py                      # the full run (most of an hour, 2 cores)
    .venv/bin/python bench/complete_journey.py --households 300 --max-items 8000 --train-minutes 2  # a quick one

With ``--households``, a seeded sample of households and the items they bought (at most ``--max-items``) are
written as catalog and event files, and the same commands run on those files (`--items/--events`).
Embedding uses a fresh embedding cache (other model caches are shared), so the embed stage does the work.
Writes bench/results/complete_journey.json (or --out) and prints a table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_TEXT = "use-m3"  # the default text space's USE component (the catalog is English; see "text_encoder_why")
MODEL_KEYS = {"mmrec": "mmrec", "sasrec": "sasrec", "contentknn": "contentknn", "popularity": "popularity",
              "personal-topfreq": "personal_topfreq"}


def run_stage(name: str, cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run one CLI command as a child process; its wall time, CPU time (user + system) and peak RSS."""
    print(f"\n=== [{name}] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        fh.write(f"\n=== [{name}] {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT)  # output goes to the terminal: the product's progress
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    out = {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
           "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "exit_code": proc.returncode,
           "loadavg_after": [round(x, 2) for x in os.getloadavg()],  # contention costs a time-boxed stage steps
           "command": " ".join(cmd)}
    print(f"=== [{name}] done: {json.dumps({k: v for k, v in out.items() if k != 'command'})}", flush=True)
    with open(log.with_name("stages_so_far.jsonl"), "a") as fh:
        fh.write(json.dumps({name: out}) + "\n")
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed with exit code {proc.returncode}")
    return out


def fresh_cache(work: Path) -> Path:
    """An MMREC_CACHE whose embeddings folder is empty and whose other folders (datasets, model files, ONNX
    exports) link to the user's cache, so nothing is downloaded or exported again."""
    from mmrec.paths import cache_dir

    real = cache_dir()
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    for sub in real.iterdir():
        if sub.name not in ("embeddings", "item_vectors"):
            (cache / sub.name).symlink_to(sub)
    return cache


def prepare(args: argparse.Namespace, work: Path) -> tuple[list[str], str, Path, int, dict]:
    """(data arguments for train/evaluate, catalog argument for embed/index, first-10k catalog file, items,
    scale info). Full run: the built-in dataset; --households: files of a seeded sample."""
    from mmrec import datasets

    ds = datasets.load("complete-journey")
    items = ds.items.to_pandas()
    first = work / "catalog_first10k.parquet"
    info = {"households": ds.n_users, "items": len(items), "events": len(ds.events)}
    if args.households is None:
        n_first = min(10_000, len(items))
        items.iloc[:n_first].to_parquet(first, index=False)
        return ["--dataset", "complete-journey"], "complete-journey", first, len(items), info
    events = ds.events.to_pandas()
    users = np.sort(events["user_id"].unique())
    pick = set(np.random.default_rng(args.seed).choice(users, min(args.households, len(users)), replace=False))
    events = events[events["user_id"].isin(pick)]
    counts = events["item_id"].value_counts()
    keep = set(counts.index[: args.max_items]) if args.max_items else set(counts.index)
    events = events[events["item_id"].isin(keep)]
    items = items[items["item_id"].isin(keep)].reset_index(drop=True)
    items_path, events_path = work / "catalog.parquet", work / "events.parquet"
    items.to_parquet(items_path, index=False)
    events.to_parquet(events_path, index=False)
    n_first = min(10_000, max(1, len(items) // 4))
    items.iloc[:n_first].to_parquet(first, index=False)
    info = {"households": len(pick), "items": len(items), "events": len(events), "sample_seed": args.seed}
    return (["--items", str(items_path), "--events", str(events_path), "--repeat-purchases", "on"],
            str(items_path), first, len(items), info)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, bodies: list[dict], concurrency: int) -> tuple[list[float], float, int, list[dict]]:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    latencies, answers, errors = [], [], 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            r = await client.post("/recommend", json=body)
            latencies.append(1000 * (time.perf_counter() - t0))
            if r.status_code == 200:
                answers.append({"history": body["history"], "results": [x["item_id"] for x in r.json()["results"]]})
            else:
                errors += 1
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, wall, errors, answers


def serve_stage(cmd: list[str], env: dict[str, str], bodies: list[dict], concurrency: int) -> dict:
    """Start `mmrec serve`, wait for /healthz, send the requests from 1 and ``concurrency`` clients, stop it
    (SIGINT: a clean shutdown) and measure the process like the other stages."""
    import httpx

    port = _free_port()
    cmd = cmd + ["--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    print(f"\n=== [serve] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    startup = None
    try:
        while time.perf_counter() - t0 < 900:
            if proc.poll() is not None:
                raise SystemExit(f"mmrec serve exited with code {proc.returncode}")
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    startup = time.perf_counter() - t0
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        if startup is None:
            raise SystemExit("mmrec serve did not answer /healthz in 15 minutes")
        httpx.post(f"{url}/recommend", json=bodies[0], timeout=300)  # warm-up
        load: dict = {}
        answers: list[dict] = []
        for c in (1, concurrency):
            lat, wall, errors, got = asyncio.run(_load(url, bodies, c))
            answers += got
            load[f"{c}_client{'s' if c > 1 else ''}"] = {
                "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
                "requests_per_s": round(len(lat) / wall, 2), "requests": len(lat), "errors": errors}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            usage = os.wait4(proc.pid, 0)[2]
        except ChildProcessError:
            usage = None
    wall = time.perf_counter() - t0
    reoffered = [np.mean([r in set(a["history"]) for r in a["results"]]) for a in answers if a["results"]]
    out = {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1) if usage else None,
           "peak_rss_mb": round(usage.ru_maxrss / 1024, 1) if usage else None, "startup_s": round(startup, 1),
           "load": load, "reoffered_share": round(float(np.mean(reoffered)), 3) if reoffered else None,
           "command": " ".join(cmd)}
    print(f"=== [serve] done: {json.dumps({k: v for k, v in out.items() if k != 'command'})}", flush=True)
    return out


def request_bodies(data_args: list[str], n: int, seed: int, history: int) -> list[dict]:
    """Ad-hoc histories (the last ``history`` purchases) of a seeded sample of households."""
    import pandas as pd

    from mmrec import datasets

    if data_args[0] == "--dataset":
        events = datasets.load(data_args[1]).events.select_columns(["user_id", "item_id", "timestamp"]).to_pandas()
    else:
        events = pd.read_parquet(data_args[3], columns=["user_id", "item_id", "timestamp"])
    events = events.sort_values(["user_id", "timestamp"], kind="stable")
    users = np.sort(events["user_id"].unique())
    pick = np.random.default_rng(seed).choice(users, min(n, len(users)), replace=False)
    groups = events[events["user_id"].isin(set(pick))].groupby("user_id")["item_id"]
    return [{"history": list(map(str, g.tolist()[-history:])), "k": 10} for _, g in groups]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--households", type=int, default=None, help="a seeded sample of households (quick runs)")
    ap.add_argument("--max-items", type=int, default=None, help="with --households: keep the N most bought items")
    ap.add_argument("--text-encoder", default=DEFAULT_TEXT, help=f"text encoder spec [{DEFAULT_TEXT}]")
    ap.add_argument("--train-minutes", type=float, default=20.0, help="mmrec train --max-minutes [20]")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="mmrec train --batch-size: windows per step (more, cheaper steps in the time box) [64]")
    ap.add_argument("--sasrec-minutes", type=float, default=8.0, help="SASRec's training budget [8]")
    ap.add_argument("--requests", type=int, default=200, help="POST /recommend requests per client setting")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/mmrec_bench_complete_journey",
                    help="working folder (data dir, checkpoint, reports); emptied first")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "complete_journey.json"))
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "stages.log"
    started = time.time()
    load_before = os.getloadavg()
    cache = fresh_cache(work)
    data_args, catalog, first10k, n_items, scale = prepare(args, work)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "MMREC_CACHE": str(cache)}
    mmrec = [sys.executable, "-m", "mmrec"]
    data_dir = work / "data"
    model = data_dir / "model.pt"
    enc = ["--text-encoder", args.text_encoder]
    stages: dict[str, dict] = {}

    stages["embed_first10k"] = run_stage("embed_first10k", mmrec + [
        "embed", str(first10k), "--out", str(work / "vectors_first10k.parquet"), "--no-images", *enc,
        "--cache-dir", str(work / "cache_first10k")], env, log)
    stages["embed"] = run_stage("embed", mmrec + [
        "embed", catalog, "--out", str(work / "vectors.parquet"), "--no-images", *enc], env, log)
    stages["index"] = run_stage("index", mmrec + [
        "index", catalog, "--data-dir", str(data_dir), *enc, "--image-encoder", "none", "--adapter", "none"], env, log)
    stages["train"] = run_stage("train", mmrec + [
        "train", *data_args, "--vectors", f"service:{data_dir}", "--split", "next-basket",
        "--max-minutes", str(args.train_minutes), "--loss", "sampled", "--batch-size", str(args.batch_size), "--out", str(model), "--seed", str(args.seed)],
        env, log)
    eval_dir = work / "evaluate"
    stages["evaluate"] = run_stage("evaluate", mmrec + [
        "evaluate", *data_args, "--protocol", "next-basket", "--item-vectors", f"service:{data_dir}",
        "--models", "mmrec,personal-topfreq,popularity,contentknn,sasrec", "--reference", "personal-topfreq",
        "--mmrec-checkpoint", str(model), "--sasrec-minutes", str(args.sasrec_minutes), "--ks", "10,20",
        "--seed", str(args.seed), "--no-plots", "--out", str(eval_dir)], env, log)
    (work / "stages_so_far.json").write_text(json.dumps(stages, indent=2))
    bodies = request_bodies(data_args, args.requests, args.seed, history=50)
    stages["serve"] = serve_stage(mmrec + [
        "serve", "--data-dir", str(data_dir), "--model", str(model), *enc, "--image-encoder", "none",
        "--adapter", "none"], env, bodies, args.concurrency)

    report = json.loads((eval_dir / "report.json").read_text())
    models = {}
    for name, key in MODEL_KEYS.items():
        entry = report["models"].get(name)
        if entry is None:
            continue
        row: dict = {}
        for metric, ci in entry["metrics"].items():
            row[metric] = round(ci["mean"], 5)
            row[f"{metric}_ci95"] = [round(ci["low"], 5), round(ci["high"], 5)]
            if metric.startswith(("repeat_", "explore_")):
                row[f"{metric}_n"] = ci["n"]
        row["fit_seconds"] = entry.get("fit_seconds")
        models[key] = row
    vs_topfreq = [c for c in report.get("comparisons", [])
                  if c["a"] == "mmrec" and c["b"] == "personal-topfreq" and c["metric"] in ("ndcg@10", "recall@10")]
    du = sum(f.stat().st_size for f in data_dir.rglob("*") if f.is_file())
    emb10, emb = stages["embed_first10k"], stages["embed"]
    first_n = min(10_000, n_items) if args.households is None else max(1, n_items // 4)
    result = {
        "dataset": "complete-journey", "scale": scale, "full_scale": args.households is None,
        "text_encoder": args.text_encoder, "image_encoder": None,
        "stages": stages,
        "embed_rss_growth": round(emb["peak_rss_mb"] / emb10["peak_rss_mb"], 3),
        "embed_rss_growth_how": f"peak RSS of `mmrec embed` on all {n_items:,} items / on the first {first_n:,}, "
                                "each with an empty embedding cache",
        "embed_items_per_s": round(n_items / emb["wall_s"], 1),
        "index_items_per_s": round(n_items / stages["index"]["wall_s"], 1),
        "disk_mb": round(du / 2**20, 1),
        "models": models,
        "mmrec_vs_personal_topfreq": vs_topfreq,
        "split": report.get("split"),
        "mmrec_model": report.get("extra", {}).get("mmrec"),
        "sasrec_model": report.get("extra", {}).get("sasrec"),
        "protocol": "next basket after the 0.9 quantile of purchase times (training before the 0.8 quantile), "
                    "full ranking over the catalog, history items allowed; repeat_* = metrics over the basket's "
                    "items the household bought before, explore_* = over its new items (NaN-free means over the "
                    "cases that have such items, n given); intervals: 95% bootstrap over households",
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(), "total_minutes": round((time.time() - started) / 60, 1),
        "note": args.note,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # merge: keys other tools added stay; a note about an earlier run's validity does not describe this one
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged.pop("validity_note", None)
    merged.update(result)
    out.write_text(json.dumps(merged, indent=2) + "\n")

    print("\nstage            wall s    cpu s   peak RSS MB")
    for name, st in stages.items():
        print(f"{name:15s} {st['wall_s']:8.1f} {st['cpu_s'] or 0:8.1f} {st['peak_rss_mb'] or 0:12.1f}")
    print(f"embed_rss_growth {result['embed_rss_growth']}   embed {result['embed_items_per_s']} items/s   "
          f"disk {result['disk_mb']} MB")
    cols = ["ndcg@10", "recall@10", "hit_rate@10", "repeat_recall@10", "explore_recall@10", "repeat_share@10"]
    print(f"\n{'model':18s}" + "".join(f"{c:>20s}" for c in cols))
    for key, row in models.items():
        print(f"{key:18s}" + "".join(f"{row.get(c, float('nan')):20.4f}" for c in cols))
    if "mmrec" in models and "personal_topfreq" in models:
        a, b = models["mmrec"], models["personal_topfreq"]
        print(f"\nNDCG@10 mmrec {a['ndcg@10']:.4f} {a['ndcg@10_ci95']} vs personal_topfreq {b['ndcg@10']:.4f} "
              f"{b['ndcg@10_ci95']}")
    print(f"serve: {json.dumps(stages['serve']['load'])}, re-offered share {stages['serve']['reoffered_share']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

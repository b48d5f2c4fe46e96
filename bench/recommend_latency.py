"""End-to-end POST /recommend latency with the fusion transformer behind it, on a 100k-item catalog,
beside the service's content-based /recommend on the same data, in the same run.

    .venv/bin/python bench/recommend_latency.py [--requests 300] [--concurrency 8]

Catalog: emoji-market (6,706 listings, 14 languages) + The Complete Journey's 92,331 grocery products =
99,037 items, titles through use-m3 (text-only service: `--image-encoder none`), bulk-loaded into the
service's embedded Qdrant store with an HNSW index. Model: a fusion transformer trained briefly on the
emoji-market shopper SIMULATION over the same vectors; the grocery products are cold for it (content path).
Requests: ad-hoc histories (the last 10 events of simulated shoppers) with k=10, half of them with the
shopper's market as a filter. The load generator runs on the same 2-core machine as the server.
Writes bench/results/recommend_latency.json and prints a table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start(data_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mmrec.cli", "serve", "--port", str(port), "--data-dir",
                             str(data_dir), "--text-encoder", "use-m3", "--image-encoder", "none", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def run_load(url: str, bodies: list[dict], concurrency: int) -> tuple[list[float], float, int]:
    """Send every body once with `concurrency` clients; (latencies ms, wall seconds, errors)."""
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    latencies: list[float] = []
    errors = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            r = await client.post("/recommend", json=body)
            latencies.append(1000 * (time.perf_counter() - t0))
            errors += r.status_code != 200
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, wall, errors


def measure(url: str, bodies: list[dict], concurrency: int) -> dict:
    httpx.post(f"{url}/recommend", json=bodies[0], timeout=120)  # warm-up
    out = {}
    for c in (1, concurrency):
        lat, wall, errors = asyncio.run(run_load(url, bodies, c))
        out[f"{c}_client{'s' if c > 1 else ''}"] = {
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "requests_per_s": round(len(lat) / wall, 1), "errors": errors}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "recommend_latency.json"))
    args = ap.parse_args()

    import datasets as hf

    from evaluation.splits import leave_one_out
    from index import CollectionSchema, Point, open_store
    from mmrec.data.datasets import load
    from mmrec.model.vectors import store_vectors
    from mmrec.model.transformer import FusionConfig
    from mmrec.model import FusionRecommender, TrainConfig

    emoji, grocery = load("emoji-market"), load("complete-journey")
    items = hf.concatenate_datasets([emoji.items, grocery.items])
    work = Path(tempfile.mkdtemp(prefix="mmrec-latency-"))
    data = work / "data"
    proc, _ = start(data)  # creates the data dir with the service's encoder settings
    stop(proc)
    t0 = time.perf_counter()
    vectors = store_vectors(items, str(data))
    embed_s = time.perf_counter() - t0
    rows = items.select_columns(["item_id", "product_id", "title", "language", "market", "category"]).to_list()
    store = open_store("edge", path=data / "store", schema=CollectionSchema(text_dim=vectors.dim, image_dim=vectors.dim,
                                                                            fused_dim=vectors.dim))
    t0 = time.perf_counter()
    store.upsert((Point(r["item_id"], {"fused": vectors.vectors[i], "text": vectors.vectors[i]},
                        {**{k: r[k] for k in ("product_id", "language", "market", "category", "title")}, "in_stock": True})
                  for i, r in enumerate(rows)), batch_size=1000)
    store.build_index()
    n_points = store.count()
    store.close()
    load_s = time.perf_counter() - t0
    print(f"{n_points} items embedded in {embed_s:.0f}s, loaded + indexed in {load_s:.0f}s", flush=True)

    split = leave_one_out(emoji.events, items=emoji.items, seed=0)
    aligned = vectors.aligned(split.item_ids)
    rec = FusionRecommender(aligned, FusionConfig(content_dim=vectors.dim, hidden=64, max_len=50),
                            TrainConfig(epochs=args.epochs, lr=3e-3, warmup_steps=50, progress=False),
                            item_ids=split.item_ids, item_market=split.item_market, vectors_version=vectors.version)
    rec.fit(split.train)
    ckpt = rec.save(work / "model.pt")

    rng = random.Random(0)
    hist = split.test.histories
    user_rows = rng.sample(range(len(hist)), min(args.requests, len(hist)))
    bodies = []
    for n, i in enumerate(user_rows):
        h = [str(split.item_ids[j]) for j in hist[i][-10:]]
        body = {"history": list(dict.fromkeys(h)), "k": 10}
        if n % 2 == 0 and hist.markets is not None:
            body["market"] = str(hist.markets[hist.indptr[i + 1] - 1])
        bodies.append(body)

    results = {}
    for label, extra in (("fusion_transformer", ("--model", str(ckpt))), ("content_based", ())):
        proc, url = start(data, *extra)
        try:
            results[label] = measure(url, bodies, args.concurrency)
        finally:
            stop(proc)
        print(label, results[label], flush=True)

    out = {"benchmark": "recommend_latency", "items": n_points, "requests": len(bodies), "k": 10,
           "embed_seconds": round(embed_s, 1), "load_index_seconds": round(load_s, 1),
           "note": "loopback HTTP on the shared 2-core machine, load generator on the same box; the model was "
                   "trained on the emoji-market shopper SIMULATION",
           "results": results, "load_avg_end": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nPOST /recommend on {n_points:,} items, k=10, {len(bodies)} requests")
    print(f"{'recommender':<22}{'clients':>8}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'errors':>8}")
    for label, r in results.items():
        for c, m in r.items():
            print(f"{label:<22}{c.split('_')[0]:>8}{m['p50_ms']:>10.1f}{m['p99_ms']:>10.1f}{m['requests_per_s']:>10.1f}"
                  f"{m['errors']:>8}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end POST /recommend and GET /search latency under 1 and 8 concurrent clients, with the fusion
transformer behind /recommend, on a 100k-item catalog: the service as shipped (micro-batching on), the
content-based /recommend on the same data, and the same model service with micro-batching off
(`--batch-window-ms 0`) as the baseline, all in the same run.

    .venv/bin/python bench/recommend_latency.py [--requests 300] [--concurrency 8] [--batch-window-ms MS]
                                                [--work-dir DIR]   # keep and reuse the data dir and model

Catalog: emoji-market (6,706 listings, 14 languages) + The Complete Journey's 92,331 grocery products =
99,037 items, titles through use-m3 (text-only service: `--image-encoder none`), bulk-loaded into the
service's embedded Qdrant store with an HNSW index. Model: a fusion transformer trained briefly on the
emoji-market shopper SIMULATION over the same vectors; the grocery products are cold for it (content path).
/recommend requests: ad-hoc histories (the last 10 events of simulated shoppers) with k=10, half of them with
the shopper's market as a filter. /search requests: titles of random listings (any of the 15 languages),
half of them within the listing's market. Each measurement follows a warm-up pass over the same requests.
The load generator runs on the same 2-core machine as the server: one asyncio process, N clients each with
its own keep-alive HTTP/1.1 connection over loopback, each sending its next request when the last one is
answered (closed loop), written on raw sockets so that it costs little CPU; its own CPU time per request is
reported (`load_generator_cpu_ms_per_request`) beside the server's (all its threads, from /proc), as neither
depends on what else the machine runs. Writes bench/results/recommend_latency.json and prints a table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import resource
from urllib.parse import urlencode

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start(data_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`mmrec serve` on a free port; its log goes to data_dir/../serve-PORT.log (the batchers' batch sizes
    are logged there at shutdown)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log_path = data_dir.parent / f"serve-{port}.log"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mmrec.cli", "serve", "--port", str(port), "--data-dir",
                                 str(data_dir), "--text-encoder", "use-m3", "--image-encoder", "none", *extra],
                                stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
    proc.log_path = log_path  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
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


async def _client(host: str, port: int, queue: list[tuple[str, dict]], latencies: list[float],
                  errors: list[int]) -> None:
    """One client: a keep-alive connection; takes the next request when its last one is answered."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while queue:
            path, body = queue.pop()
            if path == "/search":
                data = f"GET {path}?{urlencode(body)} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            else:
                payload = json.dumps(body).encode()
                data = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
            t0 = time.perf_counter()
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
            latencies.append(1000 * (time.perf_counter() - t0))
            ok = head[9:12] == b"200" and answer[:1] == b"{"
            errors[0] += not ok
    finally:
        writer.close()


async def run_load(url: str, requests: list[tuple[str, dict]], concurrency: int) -> tuple[list[float], float, int]:
    """Send every request ("/recommend" + JSON body, or "/search" + query parameters) once with
    `concurrency` clients, each on its own keep-alive connection, each sending its next request when the
    last one is answered; (latencies ms, wall seconds, errors). Raw HTTP/1.1 on asyncio streams: an
    HTTP client library would cost more CPU per request than some of the answers."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    queue = list(reversed(requests))
    latencies: list[float] = []
    errors = [0]
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(host, int(port), queue, latencies, errors) for _ in range(concurrency)))
    return latencies, time.perf_counter() - t0, errors[0]


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process (the load generator)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, path: str, bodies: list[dict], concurrency: int, pid: int) -> dict:
    """1 client, then `concurrency` clients, over the same requests. A warm-up pass sends every request
    once first, so that both measurements see the same warm caches (the store's hit-vector cache)."""
    asyncio.run(run_load(url, [(path, b) for b in bodies], 1))
    out = {}
    for c in (1, concurrency):
        cpu0, own0 = cpu_seconds(pid), own_cpu_seconds()
        lat, wall, errors = asyncio.run(run_load(url, [(path, b) for b in bodies], c))
        out[f"{c}_client{'s' if c > 1 else ''}"] = {
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "requests_per_s": round(len(lat) / wall, 1), "errors": errors,
            "server_cpu_ms_per_request": round(1000 * (cpu_seconds(pid) - cpu0) / len(lat), 2),
            "load_generator_cpu_ms_per_request": round(1000 * (own_cpu_seconds() - own0) / len(lat), 2)}
    return out


def scaling(r: dict, concurrency: int) -> dict:
    """The issue's two goals for one endpoint: rps(N) / rps(1) (>= 3) and p99(N) / p50(1) (<= 4)."""
    one, many = r["1_client"], r[f"{concurrency}_clients"]
    return {"rps_ratio": round(many["requests_per_s"] / one["requests_per_s"], 2),
            "p99_over_p50_1": round(many["p99_ms"] / one["p50_ms"], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-window-ms", type=float, default=None,
                    help="the service's micro-batching window (default: mmrec serve's default)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "recommend_latency.json"))
    ap.add_argument("--note", default="", help="appended to the JSON's note")
    ap.add_argument("--work-dir", default=None,
                    help="keep the data dir and model here and reuse them on the next run (default: a temp dir, removed)")
    args = ap.parse_args()
    load_start = os.getloadavg()

    import datasets as hf

    from evaluation.splits import leave_one_out
    from index import CollectionSchema, Point, open_store
    from mmrec.data.datasets import load
    from mmrec.model.vectors import store_vectors
    from mmrec.model.transformer import FusionConfig
    from mmrec.model import FusionRecommender, TrainConfig

    emoji, grocery = load("emoji-market"), load("complete-journey")
    items = hf.concatenate_datasets([emoji.items, grocery.items])
    keep = args.work_dir is not None
    work = Path(args.work_dir) if keep else Path(tempfile.mkdtemp(prefix="mmrec-latency-"))
    data = work / "data"
    reuse = keep and (work / "loaded").exists()
    if not reuse:
        proc, _ = start(data)  # creates the data dir with the service's encoder settings
        stop(proc)
    t0 = time.perf_counter()
    vectors = store_vectors(items, str(data))
    embed_s = time.perf_counter() - t0
    rows = items.select_columns(["item_id", "product_id", "title", "language", "market", "category"]).to_list()
    store = open_store("edge", path=data / "store", schema=CollectionSchema(text_dim=vectors.dim, image_dim=vectors.dim,
                                                                            fused_dim=vectors.dim))
    t0 = time.perf_counter()
    if not reuse:
        store.upsert((Point(r["item_id"], {"fused": vectors.vectors[i], "text": vectors.vectors[i]},
                            {**{k: r[k] for k in ("product_id", "language", "market", "category", "title")},
                             "in_stock": True})
                      for i, r in enumerate(rows)), batch_size=1000)
        store.build_index()
        (work / "loaded").touch()
    n_points = store.count()
    store.close()
    load_s = time.perf_counter() - t0
    print(f"{n_points} items embedded in {embed_s:.0f}s, loaded + indexed in {load_s:.0f}s", flush=True)

    split = leave_one_out(emoji.events, items=emoji.items, seed=0)
    aligned = vectors.aligned(split.item_ids)
    rec = FusionRecommender(aligned, FusionConfig(content_dim=vectors.dim, hidden=64, max_len=50),
                            TrainConfig(epochs=args.epochs, lr=3e-3, warmup_steps=50, progress=False),
                            item_ids=split.item_ids, item_market=split.item_market, vectors_version=vectors.version)
    ckpt = work / "model.pt"
    if not (reuse and ckpt.exists()):
        rec.fit(split.train)
        ckpt = rec.save(ckpt)

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
    # /search: titles of random listings (14 languages of emoji-market + English grocery), half of them
    # searched within the listing's market
    titles = items.select_columns(["title", "market"])
    queries = []
    for n, i in enumerate(rng.sample(range(len(titles)), args.requests)):
        row = titles[i]
        query = {"q": row["title"], "k": 10}
        if n % 2 == 0 and row["market"]:
            query["market"] = row["market"]
        queries.append(query)

    from mmrec.serving.batching import DEFAULT_WINDOW_MS

    window = DEFAULT_WINDOW_MS if args.batch_window_ms is None else args.batch_window_ms
    batched = ("--batch-window-ms", str(window))
    results: dict = {}
    baseline: dict = {}
    batches: dict = {}
    runs = ((results, ("--model", str(ckpt), *batched), (("fusion_transformer", "/recommend", bodies),
                                                         ("search", "/search", queries))),
            (results, batched, (("content_based", "/recommend", bodies),)),
            (baseline, ("--model", str(ckpt), "--batch-window-ms", "0"),
             (("fusion_transformer", "/recommend", bodies), ("search", "/search", queries))))
    for into, extra, measured in runs:
        proc, url = start(data, *extra)
        try:
            for label, path, reqs in measured:
                into[label] = measure(url, path, reqs, args.concurrency, proc.pid)
                print(label, " ".join(extra[-2:]), into[label], flush=True)
        finally:
            stop(proc)
        for line in proc.log_path.read_text().splitlines():  # type: ignore[attr-defined]
            found = re.search(r"([\w:]+) batcher: (\d+) requests in (\d+) batches", line)
            if found:  # warm-up + 1 client + N clients, per batcher
                batches[f"{' '.join(extra[-2:])} {found[1]}"] = {"requests": int(found[2]), "batches": int(found[3])}
    checks = {label: scaling(r, args.concurrency) for label, r in results.items()}
    checks["baseline_no_batching"] = {label: scaling(r, args.concurrency) for label, r in baseline.items()}

    out = {"benchmark": "recommend_latency", "items": n_points, "requests": len(bodies), "k": 10,
           "embed_seconds": round(embed_s, 1), "load_index_seconds": round(load_s, 1),
           "batch_window_ms": window, "concurrency": args.concurrency,
           "note": "loopback HTTP on the shared 2-core machine, load generator on the same box (one asyncio "
                   "process, one keep-alive HTTP/1.1 connection per client on raw sockets, closed loop; its own CPU "
                   "per request is load_generator_cpu_ms_per_request); the model was "
                   "trained on the emoji-market shopper SIMULATION. Each measurement follows a warm-up pass over "
                   "the same requests. results: the service as shipped (micro-batching on, --batch-window-ms "
                   "above; content_based is not batched); baseline_no_batching: the same model with "
                   "--batch-window-ms 0, same run. checks: rps_ratio = rps(N clients) / rps(1), "
                   "p99_over_p50_1 = p99(N clients) / p50(1 client) (goals: >= 3 and <= 4). "
                   + ("The data dir and model were reused from an earlier run of this script (--work-dir): "
                      "embed_seconds / load_index_seconds are then the time to read them back. " if reuse else "")
                   + args.note,
           "reused_work_dir": reuse,
           "results": results, "baseline_no_batching": baseline, "checks": checks, "batches": batches,
           "load_avg_start": load_start, "load_avg_end": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nPOST /recommend and GET /search on {n_points:,} items, k=10, {len(bodies)} requests each")
    print(f"{'endpoint':<34}{'clients':>8}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'errors':>8}"
          f"{'rps ratio':>11}{'p99/p50(1)':>12}")
    for prefix, block, check in (("", results, checks), ("no batching: ", baseline, checks["baseline_no_batching"])):
        for label, r in block.items():
            for c, m in r.items():
                extra = ""
                if c != "1_client":
                    extra = f"{check[label]['rps_ratio']:>11.2f}{check[label]['p99_over_p50_1']:>12.2f}"
                print(f"{prefix + label:<34}{c.split('_')[0]:>8}{m['p50_ms']:>10.1f}{m['p99_ms']:>10.1f}"
                      f"{m['requests_per_s']:>10.1f}{m['errors']:>8}{extra}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""HTTP latency and throughput of `mmrec serve` on loopback: /search and /recommend, 1 vs 8 concurrent
clients, with /healthz beside them as the floor (what HTTP + FastAPI cost with no work behind it).

Catalog: the `emoji-market` items (6,706 product-like listings, 479 products x 14 languages), titles only
(`--image-encoder none`: embedding 6.7k images on this CPU takes ~12 min and does not change query
latency). Users and their events: the dataset's shopper SIMULATION (a subset of users), posted through
POST /events. Search queries: catalog titles, so every language appears. The load generator (asyncio +
httpx) runs on the same 2-core machine as the server, so the numbers include that competition.

    python bench/service_latency.py                      # writes bench/results/service.json
    python bench/service_latency.py --requests 200       # quicker
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULT = REPO / "bench" / "results" / "service.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, text_encoder: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmrec.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
         "--text-encoder", text_encoder, "--image-encoder", "none"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start in 300 s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_data(url: str, n_users: int) -> tuple[list[str], list[str]]:
    from mmrec import datasets

    ds = datasets.load("emoji-market")
    items = ds.items.to_list()
    client = httpx.Client(base_url=url, timeout=300)
    t0 = time.perf_counter()
    for s in range(0, len(items), 256):
        batch = [{k: it[k] for k in ("item_id", "product_id", "title", "language", "market", "category", "created_at")
                  if it[k] is not None} for it in items[s:s + 256]]
        r = client.post("/items", json={"items": batch})
        r.raise_for_status()
    print(f"indexed {len(items)} items in {time.perf_counter() - t0:.1f} s")
    events = ds.events.to_list()
    users = sorted({e["user_id"] for e in events})[:n_users]
    chosen = set(users)
    mine = [{k: v for k, v in e.items() if v is not None} for e in events if e["user_id"] in chosen]
    for s in range(0, len(mine), 1000):
        client.post("/events", json={"events": mine[s:s + 1000]}).raise_for_status()
    print(f"posted {len(mine)} events of {len(users)} simulated users")
    client.close()
    return [it["title"] for it in items], users


async def run_load(url: str, make_request, n_requests: int, concurrency: int) -> dict:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n_requests))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            method, path, kwargs = make_request(i)
            t0 = time.perf_counter()
            r = await client.request(method, path, **kwargs)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1

    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        for i in range(min(20, n_requests)):  # warm-up
            method, path, kwargs = make_request(i)
            await client.request(method, path, **kwargs)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "rps": len(latencies) / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text-encoder", default="use-m3")
    ap.add_argument("--requests", type=int, default=600, help="requests per endpoint and concurrency level")
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    rng = random.Random(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmrec-service-bench-") as tmp:
        proc, url = start_server(Path(tmp) / "data", args.text_encoder)
        try:
            titles, users = load_data(url, args.users)
            queries = rng.sample(titles, 500)
            markets = ["DE", "FR", "JP", None, None]
            endpoints = {
                "GET /healthz": lambda i: ("GET", "/healthz", {}),
                "GET /search": lambda i: ("GET", "/search", {"params": {"q": queries[i % len(queries)], "k": 10}}),
                "POST /recommend": lambda i: ("POST", "/recommend", {"json": {
                    "user_id": users[i % len(users)], "k": 10,
                    **({"market": markets[i % 5]} if markets[i % 5] else {})}}),
            }
            rows = []
            for name, make in endpoints.items():
                for concurrency in (1, 8):
                    cpu0 = cpu_seconds(proc.pid)
                    stats = asyncio.run(run_load(url, make, args.requests, concurrency))
                    # server CPU per request: what the request costs, whatever else runs on the machine
                    stats["server_cpu_ms_per_request"] = (cpu_seconds(proc.pid) - cpu0) * 1000 / (stats["requests"] + 20)
                    rows.append({"endpoint": name, "clients": concurrency, **stats})
                    print(f"{name:<16} clients={concurrency}  p50 {stats['p50_ms']:6.2f} ms  "
                          f"p99 {stats['p99_ms']:6.2f} ms  {stats['rps']:6.1f} req/s  "
                          f"server CPU {stats['server_cpu_ms_per_request']:.2f} ms/req  errors {stats['errors']}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    rec8 = next(r for r in rows if r["endpoint"] == "POST /recommend" and r["clients"] == 8)
    report = {
        "benchmark": "service_latency",
        "catalog": "emoji-market items (titles only, 6,706 listings); events: shopper SIMULATION "
                   f"({args.users} users)",
        "text_encoder": args.text_encoder,
        "store": "edge (embedded Qdrant)",
        "load_generator": "asyncio + httpx on the same machine, loopback",
        "load_average_1m_at_end": os.getloadavg()[0],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "goal": {"recommend_p99_ms_8_clients": rec8["p99_ms"], "target_ms": 50.0, "met": rec8["p99_ms"] < 50.0},
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\n{'endpoint':<16} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'CPU ms/req':>10} {'errors':>6}")
    for r in rows:
        print(f"{r['endpoint']:<16} {r['clients']:>7} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['rps']:>8.1f} "
              f"{r['server_cpu_ms_per_request']:>10.2f} {r['errors']:>6}")
    print(f"machine load average (1 min) at the end: {report['load_average_1m_at_end']:.1f} on {os.cpu_count()} CPUs")
    g = report["goal"]
    print(f"goal: POST /recommend p99 with 8 clients {g['recommend_p99_ms_8_clients']:.1f} ms "
          f"(< 50 ms: {'MET' if g['met'] else 'NOT MET'})")
    print(f"wrote {args.out} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

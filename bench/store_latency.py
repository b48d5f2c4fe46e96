"""Vector-store query latency: edge HNSW vs edge exact vs numpy brute force, in the same run.

Data: SYNTHETIC clustered 512-d vectors (random cluster centres + Gaussian noise, unit-normalised), which
is what a store benchmark needs (latency and recall depend on size, dimension and cluster structure, not
on what the vectors mean). Each item gets one of 8 markets uniformly at random; the "filtered" queries
ask for one market (~12.5% of the items). Queries are fresh draws from the same distribution.

Everything runs on one thread (numpy/BLAS and the engine's search pool) so the comparison is like for
like on this shared 2-core machine. Latency is measured through `index.VectorStore` (what the service
pays, Python wrapper included). Recall@10 of HNSW is measured against edge exact search, which in turn
is checked against numpy.

    python bench/store_latency.py            # 10k and 100k, writes bench/results/store.json
    python bench/store_latency.py --sizes 10000 --queries 50   # quick
    python bench/store_latency.py --sizes 1000000 --dim 896 --quantization int8 --queries 50 --ef --merge
        # scale: int8 + rescoring (Qdrant's recipe); --merge adds the entry to the JSON beside the others

Each size reports the index build's wall and CPU seconds (all threads), the machine's load average around
it (other processes' CPU use is what separates the two: the build itself never waits), and the process's
peak RSS.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Self  # noqa: E402

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from index import CollectionSchema, Filter, Point, open_store  # noqa: E402

DIM = 512  # default; --dim changes it
MARKETS = ["de", "fr", "es", "it", "us", "gb", "jp", "br"]
RESULT = Path(__file__).resolve().parent / "results" / "store.json"


def make_data(n: int, n_queries: int, dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_clusters = max(n // 100, 10)
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    def draw(m: int) -> np.ndarray:  # float32 in chunks: 1M x 896 would need 7 GB as one float64 draw
        out = np.empty((m, dim), dtype=np.float32)
        for s in range(0, m, 65_536):
            e = min(s + 65_536, m)
            x = centres[rng.integers(0, n_clusters, size=e - s)]
            x += 0.6 * rng.standard_normal(size=(e - s, dim), dtype=np.float32)
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out
    return draw(n), rng.integers(0, len(MARKETS), size=n), draw(n_queries)


# Sampled from a separate process, as the engine holds the GIL while it builds: per thread of the bench
# process, CPU time run and time spent runnable but waiting for a CPU (/proc/<pid>/task/<tid>/schedstat).
_SCHED_MONITOR = r"""
import json, os, select, sys
pid = sys.argv[1]
def snap():
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run, wait, _ = f.read().split()
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                out[tid] = (int(run), int(wait), f.read().strip())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return out
start = snap(); last = dict(start)
while not select.select([sys.stdin], [], [], 0.1)[0]:
    last.update(snap())
last.update(snap())
run = sum(v[0] - start.get(t, (0, 0))[0] for t, v in last.items()) / 1e9
wait = sum(v[1] - start.get(t, (0, 0))[1] for t, v in last.items()) / 1e9
names = sorted({v[2] for t, v in last.items() if v[0] - start.get(t, (0, 0))[0] > 1e8})
print(json.dumps({"run_s": run, "runqueue_wait_s": wait, "busy_threads": names}))
"""


class SchedMonitor:
    """CPU run time and run-queue wait of all this process's threads over a block (Linux; {} elsewhere):
    wall time beyond CPU time / threads is either waiting for a CPU that other processes hold or sleeping."""

    def __enter__(self) -> Self:
        self.result: dict = {}
        self._proc = None
        if os.path.isdir(f"/proc/{os.getpid()}/task"):
            self._proc = subprocess.Popen([sys.executable, "-S", "-c", _SCHED_MONITOR, str(os.getpid())],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            time.sleep(0.3)  # its first snapshot is the baseline
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            out, _ = self._proc.communicate(input="", timeout=60)
            self.result = json.loads(out)


def peak_rss_gb() -> float:
    """Peak resident set of this process so far (Linux reports KiB), mapped store files included."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, queries: np.ndarray) -> tuple[list[list[int]] | list[list[str]], np.ndarray]:
    out, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q))
        times.append(time.perf_counter() - t0)
    return out, np.asarray(times) * 1000.0


def stats(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def recall(approx: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(a) & set(e)) / max(len(e), 1) for a, e in zip(approx, exact)]))


def top10(scores: np.ndarray) -> np.ndarray:
    idx = np.argpartition(-scores, 10)[:10]
    return idx[np.argsort(-scores[idx])]


def run_size(n: int, n_queries: int, k: int, ef_sweep: list[int], workdir: Path, dim: int = DIM,
             quantization: str | None = None) -> dict:
    x, market_of, queries = make_data(n, n_queries, dim)
    ids = np.array([f"i{i}" for i in range(n)])
    market = 0  # "de"
    flt = Filter(markets=[MARKETS[market]])
    rows: list[dict] = []
    res: dict = {"n": n, "dim": dim, "quantization": quantization or "none", "queries": n_queries,
                 "filter_selectivity": float(np.mean(market_of == market))}

    # numpy brute force: full scan (+ mask for the filter), and a pre-partitioned per-market matrix
    def np_full(q):
        return ids[top10(x @ q)].tolist()
    mask = market_of == market
    def np_masked(q):
        s = x @ q
        s[~mask] = -np.inf
        return ids[top10(s)].tolist()
    sub_x, sub_ids = np.ascontiguousarray(x[mask]), ids[mask]
    def np_partitioned(q):
        return sub_ids[top10(sub_x @ q)].tolist()
    np_un, t = timed(np_full, queries)
    rows.append({"method": "numpy brute force", "filter": "none", **stats(t)})
    np_f, t = timed(np_masked, queries)
    rows.append({"method": "numpy brute force (scan all + mask)", "filter": "market", **stats(t)})
    np_fp, t = timed(np_partitioned, queries)
    rows.append({"method": "numpy brute force (pre-partitioned by market)", "filter": "market", **stats(t)})
    assert np_f == np_fp

    # edge store
    path = workdir / f"edge-{n}"
    shutil.rmtree(path, ignore_errors=True)
    store = open_store("edge", path=path, schema=CollectionSchema(text_dim=dim, image_dim=dim, fused_dim=dim),
                       max_search_threads=1, quantization=quantization)
    t0 = time.perf_counter()
    batch = 1000
    for s in tqdm(range(0, n, batch), desc=f"upsert {n}", leave=False):
        store.upsert([Point(str(ids[i]), {"fused": x[i]}, {"market": MARKETS[market_of[i]], "in_stock": True})
                      for i in range(s, min(s + batch, n))], batch_size=batch)
    res["upsert_s"] = time.perf_counter() - t0
    x = sub_x = None  # the numpy baselines are done: free them, so the peak RSS from here is the store's own
    print(f"n={n}: building the index ({store.indexing_threads} threads) ...", flush=True)
    load0 = os.getloadavg()[0]
    with SchedMonitor() as sched:
        t0, c0 = time.perf_counter(), time.process_time()
        store.build_index()
        res["build_index_s"] = time.perf_counter() - t0
        res["build_index_cpu_s"] = time.process_time() - c0  # all threads; wall time depends on the machine's load
    res["build_index_sched"] = sched.result
    res["build_index_threads"] = store.indexing_threads
    res["load_average_1m_build_start_end"] = [load0, os.getloadavg()[0]]
    res["peak_rss_gb_after_build"] = peak_rss_gb()
    print(f"n={n}: build_index {res['build_index_s']:.1f} s wall, {res['build_index_cpu_s']:.1f} s CPU, "
          f"{sched.result.get('runqueue_wait_s', float('nan')):.1f} s waiting for a CPU (all threads); "
          f"peak RSS {res['peak_rss_gb_after_build']:.2f} GB", flush=True)
    res["store_info"] = store.info()

    def edge(filter, exact, ef=None):
        return lambda q: [h.item_id for h in store.search(q, k=k, filter=filter, exact=exact, hnsw_ef=ef)]

    ex_un, t = timed(edge(None, True), queries)
    rows.append({"method": "edge exact", "filter": "none", **stats(t)})
    ex_f, t = timed(edge(flt, True), queries)
    rows.append({"method": "edge exact", "filter": "market", **stats(t)})
    res["edge_exact_vs_numpy_recall"] = {"none": recall(ex_un, np_un), "market": recall(ex_f, np_f)}
    for ef in ef_sweep:
        label = "edge HNSW" + ("" if ef is None else f" ef={ef}")
        hn_un, t = timed(edge(None, False, ef), queries)
        rows.append({"method": label, "filter": "none", **stats(t), "recall@10": recall(hn_un, ex_un)})
        hn_f, t = timed(edge(flt, False, ef), queries)
        rows.append({"method": label, "filter": "market", **stats(t), "recall@10": recall(hn_f, ex_f)})

    # recommend by example on edge = retrieve the examples' vectors (the engine's own retrieve) + query
    rng = np.random.default_rng(1)
    examples = [ids[rng.integers(0, n, size=5)].tolist() for _ in range(n_queries)]
    _, t = timed(lambda ex: store.get(list(ex), with_vectors=True), np.asarray(examples))
    rows.append({"method": "edge retrieve 5 vectors by id", "filter": "-", **stats(t)})
    _, t = timed(lambda ex: store.recommend(list(ex), k=k, filter=flt), np.asarray(examples))
    rows.append({"method": "edge recommend (5 examples)", "filter": "market", **stats(t)})
    _, t = timed(lambda q: store.search_groups(q, k=k, filter=flt), queries)
    rows.append({"method": "edge HNSW search_groups", "filter": "market", **stats(t)})
    res["peak_rss_gb"] = peak_rss_gb()
    store.close()
    shutil.rmtree(path, ignore_errors=True)

    # The goal compares with general numpy brute force (any filter: scan all, mask). The pre-partitioned
    # matrix only works for a filter on one field known in advance; its ratio is reported beside it.
    numpy_f = next(r for r in rows if r["method"] == "numpy brute force (scan all + mask)")["p50_ms"]
    numpy_part = next(r for r in rows if r["method"].startswith("numpy brute force (pre-partitioned"))["p50_ms"]
    hnsw_f = next(r for r in rows if r["method"] == "edge HNSW" and r["filter"] == "market")
    res["goal"] = {
        "filtered_edge_hnsw_p50_ms": hnsw_f["p50_ms"],
        "numpy_filtered_p50_ms": numpy_f,
        "ratio": hnsw_f["p50_ms"] / numpy_f,
        "ratio_vs_pre_partitioned_numpy": hnsw_f["p50_ms"] / numpy_part,
        "recall@10": hnsw_f["recall@10"],
        "met": bool(hnsw_f["p50_ms"] <= 0.15 * numpy_f and hnsw_f["recall@10"] >= 0.98),
    }
    res["rows"] = rows
    return res


def build_summary(res: dict) -> dict:
    """One line per size: how the build's CPU grows with n, and where its wall time went."""
    wall, cpu = res["build_index_s"], res["build_index_cpu_s"]
    sched = res.get("build_index_sched") or {}
    out = {"n": res["n"], "dim": res["dim"], "quantization": res.get("quantization", "none"),
           "build_index_s": wall, "build_index_cpu_s": cpu, "wall_over_cpu": wall / cpu,
           "cpu_ms_per_point": 1000.0 * cpu / res["n"], "peak_rss_gb": res.get("peak_rss_gb")}
    if "runqueue_wait_s" in sched:
        # thread-seconds runnable but not running, per second of build: other processes holding the CPUs
        out["runqueue_wait_per_wall_s"] = sched["runqueue_wait_s"] / wall
    return out


def print_table(results: list[dict]) -> None:
    print(f"\n{'n':>7} {'method':<46} {'filter':<7} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>9}")
    for res in results:
        for r in res["rows"]:
            rc = f"{r['recall@10']:.3f}" if "recall@10" in r else ""
            print(f"{res['n']:>7} {r['method']:<46} {r['filter']:<7} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {rc:>9}")
        g = res["goal"]
        print(f"{res['n']:>7} build ({res['dim']}-d, quantization {res.get('quantization', 'none')}): upsert "
              f"{res['upsert_s']:.1f}s, build_index {res['build_index_s']:.1f}s ({res['build_index_cpu_s']:.0f} CPU s, "
              f"wall/CPU {res['build_index_s'] / res['build_index_cpu_s']:.2f}); peak RSS "
              f"{res.get('peak_rss_gb', float('nan')):.2f} GB; "
              f"goal filtered HNSW p50 {g['filtered_edge_hnsw_p50_ms']:.2f} ms = {g['ratio']:.3f}x numpy scan+mask "
              f"({g['numpy_filtered_p50_ms']:.2f} ms; {g['ratio_vs_pre_partitioned_numpy']:.2f}x pre-partitioned "
              f"numpy), recall@10 {g['recall@10']:.3f} -> {'MET' if g['met'] else 'NOT MET'} (<=0.15x at >=0.98)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ef", type=int, nargs="*", default=[32, 64],
                    help="extra hnsw_ef values to sweep besides the engine default")
    ap.add_argument("--dim", type=int, default=DIM)
    ap.add_argument("--quantization", choices=["none", "int8"], default="none",
                    help="int8: scalar quantization with rescoring on the originals (Qdrant's recipe)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other entries of --out (replacing one with the same n, dim, quantization)")
    ap.add_argument("--note", default="", help="free text kept in the JSON (e.g. why a size is missing)")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    results = []
    quant = None if args.quantization == "none" else args.quantization
    with tempfile.TemporaryDirectory(prefix="mmrec-store-bench-") as tmp:
        for n in args.sizes:
            results.append(run_size(n, args.queries, args.k, [None, *args.ef], Path(tmp), args.dim, quant))
    seconds = time.perf_counter() - started
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        key = lambda r: (r["n"], r["dim"], r.get("quantization", "none"))  # noqa: E731
        new_keys = {key(r) for r in results}
        results = sorted([r for r in old["results"] if key(r) not in new_keys] + results, key=key)
        seconds += old.get("seconds", 0.0)
        args.note = " ".join(x for x in (old.get("note", ""), args.note) if x)
    report = {
        "benchmark": "store_latency",
        "data": "synthetic clustered unit vectors (512-d unless an entry's dim says otherwise; n/100 clusters, "
                "noise 0.6), 8 markets uniform; filter = one market",
        "threads": "1 for search (numpy BLAS and edge search pool); index build: build_index_threads",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_average_1m_at_end": os.getloadavg()[0],  # other work on the machine inflates wall times
        "seconds": seconds,
        "note": args.note,
        "build_summary": [build_summary(r) for r in results],
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(results)
    print(f"machine load average (1 min) at the end: {report['load_average_1m_at_end']:.1f} on {os.cpu_count()} CPUs")
    print(f"\nwrote {args.out} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

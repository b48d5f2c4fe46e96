"""Run every benchmark in bench/ one after the other (`make bench`), each with its own defaults, and print a
table: benchmark, exit code, wall time, the JSON it wrote.

Benchmarks compete for the same cores, so they never run side by side. The whole set takes hours on a
2-core machine (ML-1M and the store build at 100k dominate); `--only` picks some, `--list` shows them.

    python bench/run_all.py --list
    python bench/run_all.py --only encoders_text,store_latency
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks() -> list[str]:
    """Every bench script but this one, in name order."""
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem != "run_all")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    names = benchmarks()
    if args.list:
        print("\n".join(names))
        return 0
    chosen = [n.strip().removesuffix(".py") for n in args.only.split(",") if n.strip()] or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    rows = []
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        before = {p: p.stat().st_mtime for p in (HERE / "results").glob("*.json")}
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py")])
        wrote = [p.name for p in sorted((HERE / "results").glob("*.json")) if before.get(p) != p.stat().st_mtime]
        rows.append((name, code, time.perf_counter() - t0, ", ".join(wrote) or "-"))
    print(f"\n{'benchmark':<22} {'exit':>4} {'minutes':>8}  wrote")
    for name, code, seconds, wrote in rows:
        print(f"{name:<22} {code:>4} {seconds / 60:>8.1f}  {wrote}")
    return 0 if all(code == 0 for _, code, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

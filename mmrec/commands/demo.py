"""`mmrec demo`: the main job end to end on the embedded default.

For now it fetches the built-in datasets and prints their summaries; later steps (embedding, indexing,
training, evaluating, recommending) join here as they land.
"""
from __future__ import annotations

import argparse

from mmrec import datasets


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the main job end to end on the built-in data")
    parser.add_argument("--datasets", default="ml-100k,ml-1m,emoji-market",
                        help="comma-separated built-in datasets to load (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in args.datasets.split(","):
        data = datasets.load(name.strip())
        print(data.describe())
        print()
    return 0

"""`mmrec datasets list | info NAME | fetch NAME...`: the built-in datasets."""
from __future__ import annotations

import argparse

from mmrec import datasets


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("datasets", help="list, describe and fetch the built-in datasets")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="the built-in datasets").set_defaults(func=_list)
    info = actions.add_parser("info", help="what a dataset holds (describes it if fetched)")
    info.add_argument("name")
    info.set_defaults(func=_info)
    fetch = actions.add_parser("fetch", help="fetch/build datasets into the cache (MMREC_CACHE)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="datasets to fetch (default: all)")
    fetch.add_argument("--force", action="store_true", help="rebuild even if cached")
    fetch.set_defaults(func=_fetch)


def _list(args: argparse.Namespace) -> int:
    width = max(map(len, datasets.names()))
    for name in datasets.names():
        spec = datasets.REGISTRY[name]
        state = "fetched" if datasets.is_fetched(name) else "-"
        print(f"{name:<{width}}  {state:<7}  {spec.summary}")
    return 0


def _info(args: argparse.Namespace) -> int:
    print(datasets.info(args.name))
    if datasets.is_fetched(args.name):
        print(datasets.load(args.name).describe())
    return 0


def _fetch(args: argparse.Namespace) -> int:
    names = args.names or datasets.names()
    for name in names:
        datasets.info(name)  # validates the name before any work
    for name in names:
        already = datasets.is_fetched(name) and not args.force
        folder = datasets.fetch(name, force=args.force)
        print(f"{name}: {'already in cache' if already else 'fetched'} at {folder}")
    return 0

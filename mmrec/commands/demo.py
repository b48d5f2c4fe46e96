"""`mmrec demo`: the main job end to end on the embedded default (see `mmrec.demo`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from mmrec.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo", help="emoji-market end to end: embed, index, train, evaluate, recommend across languages")
    parser.add_argument("--data-dir", default="demo-data",
                        help="service data dir to fill: store, checkpoint, report (default: %(default)s)")
    parser.add_argument("--train-minutes", type=float, default=4.0, help="training budget (default: %(default)s)")
    parser.add_argument("--retrain", action="store_true", help="train again even if a matching checkpoint exists")
    parser.add_argument("--history-market", default="DE", help="example shoppers' home storefront (default: DE)")
    parser.add_argument("--target-market", default="JP", help="storefront they are recommended for (default: JP)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on 2 cores)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmrec.demo import DemoConfig, run_demo

    if args.train_minutes <= 0:
        raise UserError("--train-minutes must be positive")
    if args.history_market == args.target_market:
        raise UserError("--history-market and --target-market must differ: the demo shows recommendations "
                        "across markets")
    from index import SchemaError, StoreError

    config = DemoConfig(data_dir=Path(args.data_dir), train_minutes=args.train_minutes, retrain=args.retrain,
                        history_market=args.history_market, target_market=args.target_market,
                        threads=args.threads, progress=not args.no_progress)
    try:
        run_demo(config)
    except (StoreError, SchemaError, ValueError, OSError) as exc:  # e.g. the data dir is in use by `mmrec serve`
        raise UserError(f"demo data dir {args.data_dir}: {exc}") from None
    return 0

"""The `mmrec` command line. Each subcommand lives in `mmrec/commands/<name>.py` with a `register()`."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mmrec.errors import UserError

# Modules under mmrec.commands; each defines register(subparsers) and sets `func` on its parser.
COMMANDS: tuple[str, ...] = ("datasets", "demo", "serve", "users", "evaluate", "train_adapter", "train_text", "train", "embed", "index", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmrec",
        description="Multimodal, cross-lingual recommendation: embed, index, train, evaluate, serve.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mmrec.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `mmrec train --ddp N` relaunches
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"mmrec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`mmrec report online (--data-dir DIR | --events redis://...) [--since WHEN]`: CTR, add-to-cart rate and
CVR per variant, market and position with confidence intervals, and each variant compared with the
control (difference, interval, p-value, power), from the impressions and attributed events a service
logged (mmrec/serving/online_report.py). Reads a data dir without its lock, so it runs beside the service."""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

from mmrec.errors import UserError

RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="reports on what a running service did (online A/B metrics)")
    kinds = parser.add_subparsers(dest="report", metavar="REPORT", required=True)
    online = kinds.add_parser("online", help="CTR / add-to-cart / CVR per variant, market and position, with intervals")
    source = online.add_mutually_exclusive_group()
    source.add_argument("--data-dir", type=Path, help="a service's data dir (its events.jsonl and impressions.jsonl)")
    source.add_argument("--events", default=None,
                        help="the service's Redis, redis://[:PASSWORD@]HOST:PORT/DB (default: $MMREC_EVENTS)")
    online.add_argument("--since", default=None,
                        help="only impressions from then on: unix seconds, an ISO date/time (UTC unless it says), "
                             "or an age such as 30m, 24h, 7d")
    online.add_argument("--control", default=None, help="the variant the others are compared with (default: the "
                                                        "first by name)")
    online.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    online.add_argument("--min-lift", type=float, default=0.1,
                        help="relative lift a comparison should be able to detect; below 80%% power it is "
                             "reported as underpowered (default 0.1 = 10%%)")
    online.add_argument("--json", action="store_true", help="print the report as JSON")
    online.set_defaults(func=run_online)


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """Unix seconds from a number, an ISO 8601 date/time (UTC when no offset is given) or an age (7d)."""
    if text is None:
        return None
    text = text.strip()
    if (m := RELATIVE.match(text)) is not None:
        return (time.time() if now is None else now) - float(m.group(1)) * SECONDS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--since {text!r}: give unix seconds, an ISO date/time (2025-01-31T12:00) or an age "
                        f"(30m, 24h, 7d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def run_online(args: argparse.Namespace) -> int:
    from mmrec.serving.online_report import from_data_dir, from_log

    if not 0.5 <= args.level < 1:
        raise UserError(f"--level must be in [0.5, 1), got {args.level}")
    if not args.min_lift > 0:
        raise UserError(f"--min-lift must be positive, got {args.min_lift}")
    options = dict(since=parse_since(args.since), control=args.control, level=args.level, min_lift=args.min_lift)
    events = args.events or (os.environ.get("MMREC_EVENTS") if args.data_dir is None else None)
    if args.data_dir is not None:
        if not args.data_dir.is_dir():
            raise UserError(f"{args.data_dir} is not a directory")
        report = from_data_dir(args.data_dir, **options)
    elif events:
        from mmrec.serving.interaction_log import EventLogError
        from mmrec.serving.redis_log import RedisEventLog

        try:
            log = RedisEventLog(events, require_durable=False)
            try:
                report = from_log(log, **options)
            finally:
                log.close()
        except EventLogError as exc:
            raise UserError(str(exc)) from None
    else:
        raise UserError("give --data-dir DIR or --events redis://HOST:PORT/DB")
    if args.control is not None and args.control not in report.by_variant:
        raise UserError(f"--control {args.control!r}: no such variant (seen: {', '.join(report.by_variant) or 'none'})")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_text())
    return 0


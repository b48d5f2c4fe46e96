"""`mmrec users delete USER_ID --data-dir DIR`: erase a user's events from a data dir's event log (the
right to erasure) while no service runs on it; a running service does the same with DELETE /users/ID."""
from __future__ import annotations

import argparse
from pathlib import Path

from mmrec.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("users", help="manage the users of a service's data dir (erasure)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    delete = actions.add_parser("delete", help="delete every event of a user from DIR/events.jsonl")
    delete.add_argument("user_id")
    delete.add_argument("--data-dir", required=True, type=Path)
    delete.set_defaults(func=run_delete)


def run_delete(args: argparse.Namespace) -> int:
    from mmrec.serving.event_log import EventLog, EventLogInUse

    path = args.data_dir / "events.jsonl"
    if not args.data_dir.is_dir():
        raise UserError(f"{args.data_dir} is not a directory")
    try:
        log = EventLog(path)
    except EventLogInUse as exc:
        raise UserError(f"{exc}: erase through its DELETE /users/{{user_id}} instead") from None
    try:
        removed = log.forget_user(args.user_id)
    finally:
        log.close()
    print(f"deleted {removed} event(s) of the user from {path}")
    return 0

"""Which interaction log a service uses: the file log in its data dir, or a Redis shared by replicas."""
from __future__ import annotations

import os
from pathlib import Path

from mmrec.serving.interaction_log import InteractionLog


def open_interaction_log(events: str | None, data_dir: str | os.PathLike[str]) -> InteractionLog:
    """The log `mmrec serve --events` names: None or "file" -> DATA_DIR/events.jsonl (+ impressions.jsonl
    beside it); "redis://[:PASSWORD@]HOST:PORT/DB" -> that Redis (see mmrec.serving.redis_log)."""
    if events is None or events == "file":
        from mmrec.serving.event_log import FileEventLog

        return FileEventLog(Path(data_dir) / "events.jsonl")
    if events.startswith(("redis://", "rediss://", "unix://")):
        from mmrec.serving.redis_log import RedisEventLog

        return RedisEventLog(events)
    raise ValueError("--events must be 'file' or a redis://[:PASSWORD@]HOST:PORT/DB URL")

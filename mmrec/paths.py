"""Where mmrec keeps fetched data, rendered images and model caches."""
from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def cache_dir(*parts: str) -> Path:
    """`$MMREC_CACHE` or the user's cache dir (e.g. ~/.cache/mmrec), with `parts` below it, created."""
    root = Path(os.environ.get("MMREC_CACHE") or user_cache_dir("mmrec"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path

"""The markets items are listed in, so that a filter naming another one (a typo, the wrong case) is a 400
listing the known ones instead of a page that silently matches nothing.

Kept in DATA_DIR/markets.json (rewritten atomically when a new market shows up). A market missing from
the file, e.g. in a data dir from before the file existed, is recognised by asking the store whether any
item carries it. Markets are case-sensitive, as stored.
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from fastapi import HTTPException

from index import Filter, VectorStore

MAX_LISTED = 50


class Markets:
    def __init__(self, store: VectorStore, path: str | os.PathLike[str] | None = None) -> None:
        self.store = store
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._known: set[str] = set()
        if self.path is not None and self.path.exists():
            try:
                self._known = {str(m) for m in json.loads(self.path.read_text())}
            except (ValueError, TypeError):
                self._known = set()  # rebuilt from the store's answers as markets are asked for

    def add(self, markets: Iterable[str | None]) -> None:
        """Remember the markets of items just stored."""
        new = {m for m in markets if m is not None} - self._known
        if new:
            with self._lock:
                self._known |= new
                self._save()

    def is_known(self, market: str) -> bool:
        """Whether `market` is already known (then `check` reads nothing)."""
        return market in self._known

    def check(self, market: str) -> None:
        """Raise a 400 naming the known markets unless some item was listed in `market`."""
        if market in self._known:
            return
        if self.store.count(Filter(markets=(market,))) > 0:
            self.add([market])
            return
        known = sorted(self._known)
        listed = ", ".join(known[:MAX_LISTED]) + (", ..." if len(known) > MAX_LISTED else "")
        raise HTTPException(400, f"unknown market (markets are case-sensitive); known: {listed or 'none yet'}")

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(sorted(self._known), fh, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

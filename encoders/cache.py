"""The embedding cache: content hash -> the vectors an encoder made for that content, in one SQLite file.

The key is a hash of the encoder's identity and the exact inputs it saw (text, image bytes), so
  - an unchanged input is never embedded twice (a re-run over a grown catalog embeds only what is new),
  - a changed text or image changes the key and is embedded again,
  - vectors from another model (or adapter weights, or mix) are never returned,
  - a crash keeps every batch committed before it (one transaction per batch).
Stdlib sqlite3 in WAL mode; one connection shared by the process's threads behind a lock.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

VECTOR_FIELDS = ("text", "image", "fused")


def image_digest(image: Any) -> str:
    """Hash of an image's bytes, so a re-saved identical file hits the cache and an edited one does not.

    An unreadable path hashes as 'unreadable:<path>' so that the item still has a stable key (and the error
    is reported when the encoder tries it).
    """
    if image is None:
        return "none"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(image)).hexdigest()
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as fh:
                return hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError:
            return f"unreadable:{os.fspath(image)}"
    if hasattr(image, "tobytes"):  # a PIL image
        h = hashlib.sha256(f"{getattr(image, 'mode', '')}{getattr(image, 'size', '')}".encode())
        h.update(image.tobytes())
        return h.hexdigest()
    raise TypeError(f"cannot hash an image of type {type(image).__name__}")


def content_key(identity: str, text: str | None, image: Any) -> str:
    """The cache key of one input: the encoder identity, the text and the image's bytes."""
    h = hashlib.sha256()
    for part in (identity, text or "", image_digest(image)):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


class EmbeddingCache:
    """key -> {"text", "image", "fused": float32 vector or None, "image_error": str or None}."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, text BLOB, image BLOB, "
                         "fused BLOB, image_error TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        self._db.commit()

    def set_meta(self, name: str, value: Any) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value, default=str)))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def get_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            for s in range(0, len(uniq), 500):  # SQLite's bound-parameter limit
                chunk = uniq[s : s + 500]
                rows = self._db.execute(
                    f"SELECT key, text, image, fused, image_error FROM vectors WHERE key IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, text, image, fused, err in rows:
                    out[key] = {"text": _unblob(text), "image": _unblob(image), "fused": _unblob(fused),
                                "image_error": err}
        return out

    def put_many(self, records: dict[str, dict[str, Any]]) -> None:
        """Insert one batch in a single transaction: all of it survives a later crash, or none."""
        rows = [(k, _blob(r.get("text")), _blob(r.get("image")), _blob(r.get("fused")), r.get("image_error"))
                for k, r in records.items()]
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _blob(vec: np.ndarray | None) -> bytes | None:
    if vec is None:
        return None
    vec = np.asarray(vec, dtype=np.float32)
    return None if not np.isfinite(vec).all() else vec.tobytes()


def _unblob(data: bytes | None) -> np.ndarray | None:
    return None if data is None else np.frombuffer(data, dtype=np.float32)

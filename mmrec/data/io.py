"""User data in: catalogs and event logs from JSONL, Parquet or CSV, validated, as `datasets.Dataset`.

Nothing is dropped silently. Every rejected row and every removed image becomes an `Issue` naming the
file, the row (1-based record number) and the field; the `LoadReport` counts them and the log says how
many. With `on_error="raise"` the first problem raises a `UserError` instead.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import datasets
import numpy as np
import pandas as pd

from mmrec.errors import UserError
from mmrec.data.schema import EVENT_FEATURES, EVENT_KINDS, ITEM_FEATURES

log = logging.getLogger(__name__)

ITEM_FIELDS = tuple(ITEM_FEATURES)
EVENT_FIELDS = tuple(EVENT_FEATURES)


@dataclass
class Issue:
    file: str
    row: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}: field {self.field!r}: {self.message}"


@dataclass
class LoadReport:
    """What a load read, kept and rejected. `issues` lists every problem (the first `max_listed`)."""

    file: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows skipped
    images_removed: int = 0  # rows kept, without their unreadable image
    issues: list[Issue] = field(default_factory=list)
    max_listed: int = 1000

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def add(self, issue: Issue, reason: str | None) -> None:
        if reason:
            self.skipped[reason] += 1
        if len(self.issues) < self.max_listed:
            self.issues.append(issue)

    def summary(self) -> str:
        parts = [f"{self.file}: kept {self.rows_kept:,} of {self.rows_read:,} rows"]
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{n:,} {why}" for why, n in sorted(self.skipped.items())))
        if self.images_removed:
            parts.append(f"{self.images_removed:,} unreadable images removed (items kept)")
        return "; ".join(parts)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a JSONL, Parquet or CSV file by its extension into a DataFrame of raw columns."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    try:
        if suffix in (".jsonl", ".ndjson", ".jsonl.gz", ".json"):
            return pd.read_json(path, lines=suffix != ".json", dtype=False)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".csv.gz"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                               na_values=[""])
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: cannot be read as {suffix.lstrip('.')}: {str(exc).splitlines()[0]}") from None
    raise UserError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .parquet or .csv)")


def _apply_mapping(frame: pd.DataFrame, mapping: Mapping[str, str] | None, fields: tuple[str, ...],
                   file: str) -> tuple[pd.DataFrame, list[str]]:
    """Rename user columns to ours (mapping: our field -> their column). Returns frame and extra columns."""
    mapping = dict(mapping or {})
    unknown = set(mapping) - set(fields)
    if unknown:
        raise UserError(f"column mapping names unknown fields {sorted(unknown)}; fields are {', '.join(fields)}")
    absent = [col for col in mapping.values() if col not in frame.columns]
    if absent:
        raise UserError(f"{file}: mapped columns {absent} are not in the file (it has {list(frame.columns)})")
    frame = frame.rename(columns={theirs: ours for ours, theirs in mapping.items()})
    extra = [c for c in frame.columns if c not in fields]
    return frame, extra


def _is_missing(values: pd.Series) -> np.ndarray:
    return (values.isna() | values.astype(str).str.strip().eq("")).to_numpy()


def _as_str(values: pd.Series) -> pd.Series:
    """Ids and text as str; integral floats (a CSV/JSON artefact) without the '.0'."""
    def one(v: Any) -> Any:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return None
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)

    return values.map(one).astype(object)


def parse_timestamps(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Unix seconds (int64) and a mask of unparseable entries. Accepts seconds, milliseconds and ISO 8601."""
    numeric = pd.to_numeric(values, errors="coerce")
    out = np.zeros(len(values), dtype=np.int64)
    ok = numeric.notna().to_numpy().copy()
    secs = numeric.to_numpy(dtype=float, na_value=np.nan)
    secs = np.where(np.abs(secs) > 1e11, secs / 1000.0, secs)  # milliseconds since the epoch
    out[ok] = secs[ok].astype(np.int64)
    rest = ~ok & ~_is_missing(values)
    if rest.any():
        parsed = pd.to_datetime(values[rest].astype(str), errors="coerce", utc=True, format="ISO8601")
        good = parsed.notna().to_numpy()
        idx = np.flatnonzero(rest)
        out[idx[good]] = ((parsed[good] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy()
        ok[idx[good]] = True
    return out, ~ok


def _readable_image(path: str) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def _reject(frame: pd.DataFrame, bad: np.ndarray, keep: np.ndarray, report: LoadReport, field_name: str,
            reason: str, message: Any) -> None:
    """Mark rows `bad & keep` as skipped, recording one issue each."""
    for i in np.flatnonzero(bad & keep):
        text = message(frame.iloc[i]) if callable(message) else message
        report.add(Issue(report.file, int(i) + 1, field_name, text), reason)
    keep &= ~bad


def _finish(report: LoadReport, on_error: str) -> None:
    if on_error == "raise" and report.issues:
        raise UserError(str(report.issues[0]))
    if report.rows_skipped or report.images_removed:
        log.warning("%s", report.summary())
        for issue in report.issues[:5]:
            log.warning("  %s", issue)
    else:
        log.info("%s", report.summary())


def _check_on_error(on_error: str) -> None:
    if on_error not in ("skip", "raise"):
        raise UserError(f"on_error must be 'skip' or 'raise', not {on_error!r}")


def load_catalog(path: str | Path, mapping: Mapping[str, str] | None = None, *, on_error: str = "skip",
                 image_root: str | Path | None = None, check_images: bool = True
                 ) -> tuple[datasets.Dataset, LoadReport]:
    """Load a catalog file into an items Dataset (schema `mmrec.data.schema.ITEM_FEATURES`).

    `mapping` maps our field names to the file's columns, e.g. {"item_id": "sku", "title": "name"}.
    Columns that are not fields become free `attributes`. Relative image paths resolve against
    `image_root` (default: the file's folder). Rows without an id or title and repeated ids (all but
    the first) are skipped; unreadable images are removed from their item, which stays.
    """
    _check_on_error(on_error)
    file = str(path)
    frame, extra = _apply_mapping(read_table(path), mapping, ITEM_FIELDS, file)
    report = LoadReport(file, rows_read=len(frame))
    for required in ("item_id", "title"):
        if required not in frame.columns:
            raise UserError(f"{file}: no {required!r} column (map yours with mapping={{'{required}': 'your_column'}})")
    keep = np.ones(len(frame), dtype=bool)
    frame["item_id"] = _as_str(frame["item_id"])
    _reject(frame, _is_missing(frame["item_id"]), keep, report, "item_id", "missing item_id", "missing id")
    _reject(frame, _is_missing(frame["title"]), keep, report, "title", "missing title", "missing title")
    first_row: dict[str, int] = {}
    dup = np.zeros(len(frame), dtype=bool)
    for i in np.flatnonzero(keep):
        key = frame["item_id"].iat[i]
        if key in first_row:
            dup[i] = True
        else:
            first_row[key] = i + 1
    _reject(frame, dup, keep, report, "item_id", "duplicate item_id",
            lambda r: f"duplicate id {r['item_id']!r} (first at row {first_row[r['item_id']]}); later row skipped")

    out = pd.DataFrame(index=frame.index)
    for name in ITEM_FIELDS:
        out[name] = frame[name] if name in frame.columns else None
    for name in ("item_id", "product_id", "title", "description", "language", "market", "category", "image_path"):
        out[name] = _as_str(out[name])
    out["product_id"] = out["product_id"].where(out["product_id"].notna(), out["item_id"])
    out["price"] = pd.to_numeric(out["price"], errors="coerce")
    bad_price = out["price"].isna().to_numpy() & ~_is_missing(frame["price"]) if "price" in frame else None
    if bad_price is not None:
        _reject(frame, bad_price, keep, report, "price", "unparseable price", lambda r: f"not a number: {r['price']!r}")
    if "created_at" in frame.columns:
        ts, bad_ts = parse_timestamps(frame["created_at"])
        bad_ts &= ~_is_missing(frame["created_at"])
        _reject(frame, bad_ts, keep, report, "created_at", "unparseable created_at",
                lambda r: f"unparseable timestamp {r['created_at']!r}")
        out["created_at"] = pd.array(np.where(_is_missing(frame["created_at"]), pd.NA, ts), dtype="Int64")
    out["attributes"] = [
        json.dumps({k: _jsonable(row[k]) for k in extra if not _missing_scalar(row[k])}, ensure_ascii=False,
                   sort_keys=True)
        for row in frame[extra].to_dict("records")
    ] if extra else "{}"

    if check_images:
        root = Path(image_root) if image_root else Path(path).parent
        for i in np.flatnonzero(keep & out["image_path"].notna().to_numpy()):
            raw = out["image_path"].iat[i]
            resolved = raw if os.path.isabs(raw) else str(root / raw)
            if _readable_image(resolved):
                out.iat[i, out.columns.get_loc("image_path")] = resolved
            else:
                report.images_removed += 1
                report.add(Issue(file, int(i) + 1, "image_path", f"unreadable image {raw!r}; item kept without image"),
                           None)
                out.iat[i, out.columns.get_loc("image_path")] = None
    out = out[keep].reset_index(drop=True)
    report.rows_kept = len(out)
    _finish(report, on_error)
    return datasets.Dataset.from_pandas(out, features=ITEM_FEATURES, preserve_index=False), report


def _missing_scalar(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _item_ids(items: datasets.Dataset | Iterable[str] | None) -> set[str] | None:
    if items is None:
        return None
    if isinstance(items, datasets.Dataset):
        return set(items["item_id"])
    return set(map(str, items))


def load_events(path: str | Path, mapping: Mapping[str, str] | None = None, *,
                items: datasets.Dataset | Iterable[str] | None = None, default_kind: str = "view",
                on_error: str = "skip") -> tuple[datasets.Dataset, LoadReport]:
    """Load an event log into an events Dataset (schema `mmrec.data.schema.EVENT_FEATURES`), sorted by time.

    Rows without a user or item id, with an unparseable timestamp, an unknown kind, or (when `items`
    is given) an item not in the catalog are skipped and reported. Timestamps may be unix seconds,
    milliseconds or ISO 8601 strings.
    """
    _check_on_error(on_error)
    if default_kind not in EVENT_KINDS:
        raise UserError(f"default_kind must be one of {', '.join(EVENT_KINDS)}")
    file = str(path)
    frame, _ = _apply_mapping(read_table(path), mapping, EVENT_FIELDS, file)
    report = LoadReport(file, rows_read=len(frame))
    for required in ("user_id", "item_id", "timestamp"):
        if required not in frame.columns:
            raise UserError(f"{file}: no {required!r} column (map yours with mapping={{'{required}': 'your_column'}})")
    keep = np.ones(len(frame), dtype=bool)
    for name in ("user_id", "item_id"):
        frame[name] = _as_str(frame[name])
        _reject(frame, _is_missing(frame[name]), keep, report, name, f"missing {name}", f"missing {name}")
    ts, bad_ts = parse_timestamps(frame["timestamp"])
    _reject(frame, bad_ts, keep, report, "timestamp", "unparseable timestamp",
            lambda r: f"unparseable timestamp {r['timestamp']!r}")
    kinds = (frame["kind"].where(~pd.Series(_is_missing(frame["kind"]), index=frame.index), default_kind)
             if "kind" in frame.columns else pd.Series(default_kind, index=frame.index)).astype(str).str.lower()
    _reject(frame, ~kinds.isin(EVENT_KINDS).to_numpy(), keep, report, "kind", "unknown kind",
            lambda r: f"unknown kind {r['kind']!r} (expected one of {', '.join(EVENT_KINDS)})")
    known = _item_ids(items)
    if known is not None:
        unknown = ~frame["item_id"].isin(known).to_numpy() & keep
        _reject(frame, unknown, keep, report, "item_id", "unknown item",
                lambda r: f"item {r['item_id']!r} is not in the catalog")
    values = pd.to_numeric(frame["value"], errors="coerce") if "value" in frame.columns else None
    if values is not None:
        bad_value = values.isna().to_numpy() & ~_is_missing(frame["value"])
        _reject(frame, bad_value, keep, report, "value", "unparseable value", lambda r: f"not a number: {r['value']!r}")
    out = pd.DataFrame({
        "user_id": frame["user_id"], "item_id": frame["item_id"], "timestamp": ts, "kind": kinds,
        "value": values if values is not None else None,
        "market": _as_str(frame["market"]) if "market" in frame.columns else None,
        "session_id": _as_str(frame["session_id"]) if "session_id" in frame.columns else None,
    })[keep]
    out = out.sort_values(["timestamp", "user_id"], kind="stable", ignore_index=True)
    report.rows_kept = len(out)
    _finish(report, on_error)
    return datasets.Dataset.from_pandas(out, features=EVENT_FEATURES, preserve_index=False), report

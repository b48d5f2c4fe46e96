"""Loading user catalogs and event logs: column mapping, validation, nothing dropped silently.

Files are real subsets of the packaged ML-100k and emoji-market data, with defects written into them.
"""
from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from mmrec import load_catalog, load_events
from mmrec.errors import UserError


@pytest.fixture()
def catalog_frame(ml100k):
    frame = ml100k.items.select(range(20)).to_pandas()
    # a shop's own column names
    return frame.rename(columns={"item_id": "sku", "title": "name"})[["sku", "name", "category"]]


def _write(frame: pd.DataFrame, path):
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_catalog_with_mapping_in_every_format(tmp_path, catalog_frame, suffix):
    path = _write(catalog_frame.assign(colour="red"), tmp_path / f"catalog{suffix}")
    items, report = load_catalog(path, {"item_id": "sku", "title": "name"})
    assert len(items) == 20 and report.rows_skipped == 0
    row = items[0]
    assert row["item_id"] == "1" and row["title"] == "Toy Story" and row["product_id"] == "1"
    assert json.loads(row["attributes"]) == {"colour": "red"}, "unmapped columns become free attributes"


def test_catalog_defects_are_reported_with_file_row_field(tmp_path, catalog_frame, caplog):
    bad = catalog_frame.copy()
    bad.loc[3, "sku"] = None  # missing id -> row 4
    bad.loc[7, "sku"] = bad.loc[2, "sku"]  # duplicate of row 3 -> row 8 skipped
    bad.loc[9, "name"] = ""  # missing title -> row 10
    path = _write(bad, tmp_path / "catalog.csv")
    with caplog.at_level(logging.WARNING):
        items, report = load_catalog(path, {"item_id": "sku", "title": "name"})
    assert len(items) == 17 and report.rows_read == 20 and report.rows_skipped == 3
    assert report.skipped == {"missing item_id": 1, "duplicate item_id": 1, "missing title": 1}
    messages = [str(i) for i in report.issues]
    assert f"{path}: row 4: field 'item_id': missing id" in messages
    assert any(m.startswith(f"{path}: row 8: field 'item_id': duplicate id '3' (first at row 3)") for m in messages)
    assert any("row 10: field 'title'" in m for m in messages)
    assert "skipped" in caplog.text and "3" in caplog.text, "the log counts what was skipped"
    with pytest.raises(UserError, match=r"catalog.csv: row 4: field 'item_id': missing id"):
        load_catalog(path, {"item_id": "sku", "title": "name"}, on_error="raise")


def test_unreadable_images_are_removed_but_items_kept(tmp_path, emoji_market):
    rows = emoji_market.items.select(range(4)).to_pandas()[["item_id", "title", "image_path"]]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really an image")
    rows.loc[1, "image_path"] = "broken.png"  # relative: resolved against the file's folder
    rows.loc[2, "image_path"] = "/nonexistent/x.png"
    items, report = load_catalog(_write(rows, tmp_path / "c.jsonl"))
    assert len(items) == 4 and report.images_removed == 2 and report.rows_skipped == 0
    assert items[0]["image_path"] == rows.loc[0, "image_path"]
    assert items[1]["image_path"] is None and items[2]["image_path"] is None
    assert any("row 2: field 'image_path': unreadable image 'broken.png'" in str(i) for i in report.issues)


def test_events_validation(tmp_path, ml100k):
    catalog = ml100k.items.select(range(50))
    known = set(catalog["item_id"])
    ev = ml100k.events.to_pandas()
    ev = ev[ev["item_id"].isin(known)].head(30).reset_index(drop=True)[["user_id", "item_id", "timestamp", "value"]]
    ev["timestamp"] = ev["timestamp"].astype(object)
    ev.loc[0, "timestamp"] = "2024-05-01T12:00:00Z"  # ISO is fine
    ev.loc[1, "timestamp"] = "yesterday-ish"  # unparseable -> skipped
    ev.loc[2, "item_id"] = "999999"  # unknown item -> skipped
    ev.loc[3, "timestamp"] = int(ev.loc[4, "timestamp"]) * 1000  # milliseconds are recognised
    path = _write(ev.rename(columns={"user_id": "customer", "value": "stars"}), tmp_path / "events.jsonl")
    events, report = load_events(path, {"user_id": "customer", "value": "stars"}, items=catalog, default_kind="rating")
    assert len(events) == 28 and report.skipped == {"unparseable timestamp": 1, "unknown item": 1}
    assert any(str(i) == f"{path}: row 2: field 'timestamp': unparseable timestamp 'yesterday-ish'" for i in report.issues)
    assert any("row 3: field 'item_id': item '999999' is not in the catalog" in str(i) for i in report.issues)
    stamps = list(events["timestamp"])
    assert stamps == sorted(stamps) and 1714564800 in stamps and int(ev.loc[4, "timestamp"]) in stamps
    assert set(events["kind"]) == {"rating"}


def test_bad_inputs_are_one_line_user_errors(tmp_path, catalog_frame):
    path = _write(catalog_frame, tmp_path / "c.csv")
    with pytest.raises(UserError, match="no 'item_id' column"):
        load_catalog(path)
    with pytest.raises(UserError, match=r"mapped columns \['id'\] are not in the file"):
        load_catalog(path, {"item_id": "id", "title": "name"})
    with pytest.raises(UserError, match="unknown fields"):
        load_catalog(path, {"itemid": "sku"})
    with pytest.raises(UserError, match="no such file"):
        load_catalog(tmp_path / "missing.csv")
    (tmp_path / "c.xlsx").write_bytes(b"x")
    with pytest.raises(UserError, match="unsupported file type"):
        load_catalog(tmp_path / "c.xlsx")
    (tmp_path / "bad.jsonl").write_text('{"item_id": 1, "title": "a"}\n{not json\n')
    with pytest.raises(UserError, match="cannot be read as jsonl"):
        load_catalog(tmp_path / "bad.jsonl")

"""`mmrec train`: train a checkpoint, fine-tune it on new events with --resume, and fail cleanly."""
from __future__ import annotations

import json

import pytest
import torch

from mmrec.cli import main


def _train(tmp_path, *extra: str) -> list[str]:
    return ["train", "--dataset", "ml-100k", "--max-users", "120", "--epochs", "1", "--hidden", "16",
            "--layers", "1", "--max-len", "30", "--no-progress", *extra]


def test_train_then_resume_on_new_events(tmp_path, capsys, ml100k):
    first = tmp_path / "m.pt"
    assert main(_train(tmp_path, "--out", str(first))) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert report["checkpoint"] == str(first) and 0 <= report["test_leave_one_out"]["ndcg@10"] <= 1
    ck = torch.load(first, weights_only=False)
    assert ck["config"]["hidden"] == 16 and ck["vectors_version"] and ck["id_items"]

    # new events (appended to the dataset's): users rate Toy Story (item "1")
    users = sorted(set(ml100k.events.select(range(3000))["user_id"]))[:30]
    rows = [{"user_id": u, "item_id": "1", "timestamp": 2_000_000_000 + i, "kind": "rating", "value": 5}
            for i, u in enumerate(users)]
    new_events = tmp_path / "new.jsonl"
    new_events.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    second = tmp_path / "m2.pt"
    args = ["train", "--dataset", "ml-100k", "--events", str(new_events), "--resume", str(first),
            "--out", str(second), "--epochs", "1", "--no-progress"]
    assert main(args) == 0
    ck2 = torch.load(second, weights_only=False)
    assert ck2["config"] == ck["config"] | {"n_ids": ck2["config"]["n_ids"]}
    assert set(ck["id_items"]) <= set(ck2["id_items"])  # learned IDs kept, new ones appended
    assert ck2["id_items"][: len(ck["id_items"])] == ck["id_items"]


def test_train_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--dataset", "ml-100k", "--resume", str(tmp_path / "missing.pt"),
                 "--out", str(tmp_path / "x.pt"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x.pt")]) == 2
    assert "exactly one of --dataset" in capsys.readouterr().err
    assert main(["train", "--dataset", "no-such-dataset", "--out", str(tmp_path / "x.pt")]) == 2
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "ml-100k"])  # --out is required (argparse exits)

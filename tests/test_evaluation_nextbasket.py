"""Next-basket protocol, repeat/explore metrics and the personal top-frequency baseline."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation import Histories, evaluate, next_basket_split, repeat_explore_metrics
from evaluation.baselines import PersonalTopFreq, Popularity


def _events() -> pd.DataFrame:
    rows = []
    # user a: baskets at t=10 {x, y}, 20 {x}, then after the cut (t=100): 100 {x, z}, 110 {w}
    for ts, items in ((10, "xy"), (20, "x"), (100, "xz"), (110, "w")):
        rows += [("a", i, ts) for i in items]
    # user b: 15 {y}, 30 {y, z}; no basket after the cut -> no test case
    for ts, items in ((15, "y"), (30, "yz")):
        rows += [("b", i, ts) for i in items]
    # user c: nothing before the cut -> no test case
    rows += [("c", "w", 105)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_next_basket_split_targets_the_next_basket_with_repeats_and_no_leakage() -> None:
    split = next_basket_split(_events(), t=100, valid_t=20)
    items = list(split.item_ids)
    users = list(split.user_ids)
    assert [users[u] for u in split.test.users] == ["a"]
    assert sorted(items[i] for i in split.test.targets(0)) == ["x", "z"]  # x is a repeat and stays a target
    assert sorted(items[i] for i in split.test.histories[0]) == ["x", "x", "y"]
    assert split.test.histories.timestamps.max() < 100
    assert split.train.timestamp.max() < 20  # training ends at the validation cut
    # validation: a's first basket at/after 20 is {x}; b's is {y, z}
    vt = {users[u]: sorted(items[i] for i in split.valid.targets(j)) for j, u in enumerate(split.valid.users)}
    assert vt == {"a": ["x"], "b": ["y", "z"]}


def test_next_basket_validation_targets_never_lie_in_the_test_period() -> None:
    """valid_t=50: a's first basket at/after 50 is at 100 = the test cut, so it is no validation case (it
    would pick the early-stopping epoch on the test basket); b has nothing after 50."""
    split = next_basket_split(_events(), t=100, valid_t=50)
    assert split.valid is None or len(split.valid) == 0
    split = next_basket_split(_events(), t=101, valid_t=50)  # a's basket at 100 is now before the test cut
    assert [list(split.user_ids)[u] for u in split.valid.users] == ["a"]


def test_repeat_explore_metrics_split_hits_by_history() -> None:
    split = next_basket_split(_events(), t=100)
    x, z = (list(split.item_ids).index(c) for c in "xz")
    y = list(split.item_ids).index("y")
    recs = np.array([[x, y, z]])
    m = repeat_explore_metrics(recs, split.test, ks=(1, 3), metrics=("recall", "hit_rate"))
    assert m["recall@1"][0] == pytest.approx(0.5)
    assert m["repeat_recall@1"][0] == 1.0 and m["explore_recall@1"][0] == 0.0
    assert m["explore_recall@3"][0] == 1.0
    assert m["repeat_share@3"][0] == pytest.approx(2 / 3)
    only_new = np.array([[z, -1, -1]])
    m = repeat_explore_metrics(only_new, split.test, ks=(1,), metrics=("recall",))
    assert m["repeat_recall@1"][0] == 0.0 and m["explore_recall@1"][0] == 1.0


def test_personal_topfreq_orders_by_frequency_then_recency_then_popularity() -> None:
    split = next_basket_split(_events(), t=100)
    ids = list(split.item_ids)
    model = PersonalTopFreq().fit(split.train)
    # history x, y, x (two baskets with x), then y once more at the end: x (2) > y (2, but ... ) tie broken by recency
    h = Histories(indptr=np.array([0, 4]), items=np.array([ids.index(c) for c in "xyxy"]),
                  timestamps=np.array([1, 1, 2, 3]))
    top = model.recommend(h, 4, exclude_seen=False).items[0]
    assert [ids[i] for i in top[:2]] == ["y", "x"]  # both bought twice; y more recently
    # one basket holding x twice counts once per basket; popularity pads after the user's own items
    h2 = Histories(indptr=np.array([0, 3]), items=np.array([ids.index(c) for c in "xxw"]),
                   timestamps=np.array([5, 5, 6]))
    top2 = model.recommend(h2, 4, exclude_seen=False).items[0]
    assert [ids[i] for i in top2[:2]] == ["w", "x"]  # 1 basket each: w more recent
    pop_order = np.argsort(-np.bincount(split.train.item, minlength=len(ids)), kind="stable")
    rest = [i for i in pop_order if ids[i] not in ("w", "x")]
    assert ids[top2[2]] == ids[rest[0]]
    assert PersonalTopFreq(count="events").fit(split.train).recommend(h2, 1, exclude_seen=False).items[0, 0] == ids.index("x")


def test_topfreq_beats_popularity_when_users_rebuy() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        staples = rng.choice(40, 3, replace=False)
        for b in range(8):
            basket = set(staples[rng.random(3) < 0.8]) | set(rng.choice(40, 2).tolist())
            rows += [(f"u{u}", f"i{i}", 1000 * b + u) for i in basket]
    split = next_basket_split(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]), t=7000)
    tf = evaluate(PersonalTopFreq(), split, ks=(5,), exclude_seen=False, progress=False)
    pop = evaluate(Popularity(), split, ks=(5,), exclude_seen=False, progress=False)
    assert tf.mean("recall@5") > pop.mean("recall@5") + 0.2


def test_sasrec_time_budget_is_checked_within_an_epoch() -> None:
    from evaluation.baselines.sasrec import SASRec, SASRecConfig

    split = next_basket_split(_events(), t=100)
    model = SASRec(SASRecConfig(max_epochs=5, max_train_seconds=0.0, progress=False, hidden=8, max_len=5))
    model.fit(split.train)
    assert model.stopped_ == "time budget" and len(model.log_) == 1 and model.log_[0].get("partial")


def test_cli_next_basket_reports_repeat_and_explore(tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    rng = np.random.default_rng(0)
    items = [{"item_id": f"i{i}", "title": f"product {i}"} for i in range(40)]
    events = []
    for u in range(40):
        staples = rng.choice(40, 3, replace=False)
        for b in range(6):
            for i in set(staples[rng.random(3) < 0.8].tolist()) | {int(rng.integers(40))}:
                events.append({"user_id": f"u{u}", "item_id": f"i{i}", "timestamp": 1_000_000 + 1000 * b + u,
                               "kind": "purchase"})
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(r) for r in items))
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(r) for r in events))
    mmrec = str(Path(sys.executable).with_name("mmrec"))
    base = [mmrec, "evaluate", "--items", str(tmp_path / "items.jsonl"), "--events", str(tmp_path / "events.jsonl"),
            "--protocol", "next-basket", "--ks", "5", "--no-plots"]
    out = subprocess.run(base + ["--models", "personal-topfreq,popularity", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    models = json.loads((tmp_path / "r" / "report.json").read_text())["models"]
    for m in ("personal-topfreq", "popularity"):
        assert {"repeat_recall@5", "explore_recall@5", "repeat_share@5"} <= set(models[m]["metrics"])
    ndcg = {m: models[m]["metrics"]["ndcg@5"]["mean"] for m in models}
    assert ndcg["personal-topfreq"] > ndcg["popularity"]
    np.savez(tmp_path / "v.npz", item_ids=np.array([r["item_id"] for r in items]), vectors=rng.normal(size=(40, 8)))
    out = subprocess.run(base + ["--models", "mmrec", "--item-vectors", str(tmp_path / "v.npz"), "--mmrec-checkpoint",
                                 str(tmp_path / "none.pt"), "--out", str(tmp_path / "r2")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_cli_evaluates_a_next_basket_checkpoint_and_refuses_one_that_saw_the_test_period(tmp_path) -> None:
    """`mmrec train --split next-basket` then `mmrec evaluate --mmrec-checkpoint` on the same data: accepted
    (training ended before the cut); a leave-one-out checkpoint, trained on events after the cut, is refused."""
    import json

    from mmrec.cli import main

    rng = np.random.default_rng(0)
    items = [{"item_id": f"i{i}", "title": f"product {i}"} for i in range(30)]
    events = [{"user_id": f"u{u}", "item_id": f"i{i}", "timestamp": 1_000_000 + 1000 * b + u, "kind": "purchase"}
              for u in range(30) for b in range(6) for i in {int(x) for x in rng.choice(30, 2)}]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(r) for r in items))
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(r) for r in events))
    data = ["--items", str(tmp_path / "items.jsonl"), "--events", str(tmp_path / "events.jsonl")]
    train = ["train", *data, "--vectors", "text:use-m3", "--epochs", "1", "--hidden", "16", "--layers", "1",
             "--max-len", "10", "--no-progress"]
    assert main([*train, "--split", "next-basket", "--repeat-purchases", "on", "--out", str(tmp_path / "nb.pt")]) == 0
    assert main([*train, "--out", str(tmp_path / "loo.pt")]) == 0
    evaluate = ["evaluate", *data, "--protocol", "next-basket", "--ks", "5", "--no-plots", "--models", "mmrec",
                "--item-vectors", "text:use-m3"]
    assert main([*evaluate, "--mmrec-checkpoint", str(tmp_path / "nb.pt"), "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "repeat_recall@5" in report["models"]["mmrec"]["metrics"]
    assert main([*evaluate, "--mmrec-checkpoint", str(tmp_path / "loo.pt"), "--out", str(tmp_path / "r2")]) == 2

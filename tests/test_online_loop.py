"""Issue #18, the loop closed: exploration wired into the service (per-item impression and click counts
from the interaction log, `mmrec serve --explore`, `explored` on every result), fine-tuning a checkpoint
on what a service logged (`mmrec train --resume --events-since`), and the closed-loop simulator's smoke run."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mmrec.data.schema import Event
from mmrec.serving.interaction_log import Attributed, Impression, Shown
from redis_support import RedisServer, needs_redis
from service_support import REPO, Server, catalog_items, serve_env


def _shown(rid: str, items: list[str], user: str = "u1", surface: str = "recommend") -> Impression:
    return Impression(rid, time.time(), surface, "a", "model.pt", user, "de",
                      tuple(Shown(i, p, 1.0) for p, i in enumerate(items, 1)))


def _fill(log) -> None:
    log.log_impression(_shown("r1", ["x", "y"], user="u1"))
    log.log_impression(_shown("r2", ["x", "z"], user="u2"))
    log.log_impression(_shown("s1", ["x", "y", "z"], user="u2", surface="search"))  # not a /recommend slot
    log.append([Attributed(Event("u1", "x", 10, kind="click"), "r1", 1),
                Attributed(Event("u2", "x", 11, kind="click"), "r2"),
                Attributed(Event("u2", "z", 12, kind="purchase"), "r2"),  # not a click
                Event("u2", "y", 13, kind="click")])  # not attributed: not a click on a shown list


def _check_counts(log, erased: bool = False) -> None:
    shown, clicks = log.item_counts(["x", "y", "z", "never"])
    if erased:  # u2's impression and events are gone
        assert shown.tolist() == [1, 1, 0, 0] and clicks.tolist() == [1, 0, 0, 0]
    else:
        assert shown.tolist() == [2, 1, 1, 0] and clicks.tolist() == [2, 0, 0, 0]


def test_item_counts_file_log_survive_reopen_and_follow_erasure(tmp_path):
    from mmrec.serving.event_log import FileEventLog
    from mmrec.serving.interaction_log import InteractionLog

    log = FileEventLog(tmp_path / "events.jsonl")
    _fill(log)
    _check_counts(log)
    assert InteractionLog.item_counts(log, ["x", "y", "z", "never"])[0].tolist() == [2, 1, 1, 0]  # the recount
    log.close()
    log = FileEventLog(tmp_path / "events.jsonl")
    _check_counts(log)
    log.erase_user("u2")
    _check_counts(log, erased=True)
    log.close()


def test_item_counts_memory_log():
    from mmrec.serving.memory_log import MemoryEventLog

    log = MemoryEventLog()
    _fill(log)
    _check_counts(log)
    log.erase_user("u2")
    _check_counts(log, erased=True)


@needs_redis
def test_item_counts_redis_log(tmp_path):
    from mmrec.serving.redis_log import RedisEventLog

    server = RedisServer(tmp_path / "redis")
    try:
        log = RedisEventLog(server.url)
        _fill(log)
        _check_counts(log)
        log.close()
        assert RedisEventLog(server.url).item_counts(["x", "y"])[0].tolist() == [2, 1]  # shared by replicas
    finally:
        server.stop()


# --- exploration through a real `mmrec serve` ------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained fusion transformer over the test service's vector space (text only, USE-m3)."""
    from mmrec.embedding.item_encoder import EncoderConfig, load_item_encoder
    from mmrec.model import FusionConfig, FusionTransformer, save_checkpoint
    from service_support import TEXT_ENCODER

    encoder = load_item_encoder(EncoderConfig(text_encoder=TEXT_ENCODER, image_encoder=None, adapter=None))
    try:
        dim, space = encoder.dim, encoder.space
    finally:
        encoder.close()
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", FusionTransformer(FusionConfig(content_dim=dim)),
                           id_items=[], vectors_version=space)


@pytest.mark.slow
def test_explore_flag_gives_new_items_bounded_slots_in_one_variant(tmp_path, checkpoint):
    """Two arms of one checkpoint, `--explore explore=0.5`: only that arm's pages carry explored results,
    at most floor(0.5 * k) per page, each below every result the model chose; the other arm never explores."""
    srv = Server(tmp_path / "data", "--image-encoder", "none", "--adapter", "none",
                 "--variant", f"explore={checkpoint}:0.5", "--variant", f"plain={checkpoint}:0.5",
                 "--experiment", "loop", "--explore", "explore=0.5", "--explore-new-below", "1000")
    try:
        assert srv.client.post("/items", json={"items": catalog_items()}).status_code == 200
        explored_pages = {"explore": 0, "plain": 0}
        served = {"explore": 0, "plain": 0}
        for n in range(24):
            user = f"loop-{n}"
            srv.client.post("/events", json={"events": [{"user_id": user, "item_id": "coffee:en"}]})
            answer = srv.client.post("/recommend", json={"user_id": user, "k": 4}).json()
            results = answer["results"]
            assert len(results) == 4 and all(isinstance(r["explored"], bool) for r in results)
            flags = [r["explored"] for r in results]
            served[answer["variant"]] += 1
            explored_pages[answer["variant"]] += any(flags)
            assert sum(flags) <= 2
            chosen = [r["score"] for r in results if not r["explored"]]
            assert all(r["score"] <= min(chosen) for r in results if r["explored"])
        assert served["explore"] and served["plain"]
        assert explored_pages["plain"] == 0
        assert explored_pages["explore"] >= 1  # every item is new (no impressions yet): Thompson draws explore
        health = srv.client.get("/healthz").json()
        assert health["status"] == "ok"
    finally:
        srv.stop()


@pytest.mark.parametrize("flags,message", [
    (["--explore", "1.5"], "max_share"),
    (["--explore", "nope=0.2"], "names no variant"),
    (["--explore", "x"], "[VARIANT=]SHARE"),
    ([], "needs a model"),
])
def test_explore_flag_errors_are_one_line(tmp_path, capsys, flags, message):
    from mmrec.cli import main

    base = ["serve", "--data-dir", str(tmp_path / "data"), "--image-encoder", "none", "--port", "0"]
    if message != "needs a model":
        base += ["--variant", "a=content:0.5", "--variant", f"b={tmp_path / 'm.pt'}:0.5"]
        (tmp_path / "m.pt").write_bytes(b"")
    else:
        flags = ["--explore", "0.2"]
    assert main([*base, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.strip().count("\n") == 0


# --- incremental training from the loop ------------------------------------------------------------------

def test_train_resume_events_since_fine_tunes_on_the_logged_events(tmp_path, capsys, ml100k):
    """A checkpoint trained on ML-100K, then fine-tuned on what a service logged after T: only the users
    active since T are read (with their earlier logged events as context), items first seen then get ID
    rows, the learned ones stay, and the vector space is the checkpoint's (no --vectors given)."""
    from mmrec.cli import main
    from mmrec.serving.event_log import FileEventLog

    first = tmp_path / "m.pt"
    assert main(["train", "--dataset", "ml-100k", "--max-users", "120", "--epochs", "1", "--hidden", "16",
                 "--layers", "1", "--max-len", "30", "--no-progress", "--out", str(first)]) == 0
    ck = torch.load(first, weights_only=False)
    capsys.readouterr()
    cold = sorted(set(ml100k.items["item_id"]) - set(ck["id_items"]), key=int)[:3]  # items the checkpoint lacks
    warm = ck["id_items"][:6]
    data = tmp_path / "service"
    log = FileEventLog(data / "events.jsonl")
    t0 = 1_900_000_000
    old = [Event(f"old-{u}", warm[(u + j) % 6], t0 - 1000 + j, kind="click") for u in range(10) for j in range(4)]
    new = [Event(f"new-{u}", i, t0 + 10 * u + j, kind="click")
           for u in range(12) for j, i in enumerate([warm[u % 6], cold[u % 3], warm[(u + 1) % 6], cold[(u + 1) % 3]])]
    before = [Event(f"new-{u}", warm[(u + 2) % 6], t0 - 500 + j, kind="view") for u in range(12) for j in range(3)]
    log.append(old + before + new)  # a running service keeps its lock: the trainer reads beside it
    second = tmp_path / "m2.pt"
    assert main(["train", "--dataset", "ml-100k", "--resume", str(first), "--events-since", str(t0),
                 "--data-dir", str(data), "--context", "2", "--epochs", "1", "--no-progress",
                 "--out", str(second)]) == 0
    log.close()
    ck2 = torch.load(second, weights_only=False)
    assert ck2["vectors_version"] == ck["vectors_version"]
    assert ck2["id_items"][: len(ck["id_items"])] == ck["id_items"]
    assert set(cold) <= set(ck2["id_items"])  # the new items now have learned rows
    assert ck2["extra"]["events_since"]["events"] == len(new) + 12 * 2  # 2 context events per active user
    assert ck2["extra"]["recipe"] == ck["extra"]["recipe"]


def test_events_since_errors_are_one_line(tmp_path, capsys):
    from mmrec.cli import main

    assert main(["train", "--dataset", "ml-100k", "--events-since", "7d", "--out", str(tmp_path / "x.pt")]) == 2
    assert "give --resume" in capsys.readouterr().err
    (tmp_path / "m.pt").write_bytes(b"")
    assert main(["train", "--dataset", "ml-100k", "--resume", str(tmp_path / "none.pt"), "--events-since", "7d",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- the closed-loop simulator ---------------------------------------------------------------------------

@pytest.mark.slow
def test_online_sim_quick_run_writes_the_comparisons(tmp_path):
    out = tmp_path / "online_sim.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "online_sim.py"), "--quick", "--out", str(out)],
                          check=False, capture_output=True, text=True, env=serve_env(), timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["label"] == "SIMULATION" and "SIMULATION" in done.stdout
    comparisons = result["comparisons"]
    assert set(comparisons) >= {"model_vs_contentknn", "exploration", "retrained_vs_frozen"}
    for comparison in comparisons.values():
        for arm in comparison["arms"].values():
            for metric in ("ctr", "cvr"):
                rate = arm[metric]
                assert rate["n"] > 0 and rate["low"] <= rate["rate"] <= rate["high"]
        for metric in ("ctr", "cvr"):
            diff = comparison["difference"][metric]
            assert diff["low"] <= diff["diff"] <= diff["high"]
    assert 0 <= result["new_products"]["explore"]["share_sold"] <= 1
    assert result["regret"]["model"]["per_impression"] >= 0
    assert np.isfinite(result["regret"]["model"]["per_impression"])

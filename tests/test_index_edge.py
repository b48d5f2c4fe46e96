"""Edge-only behaviour: persistence across processes, kill -9 durability, the directory lock, HNSW build."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from index import CollectionSchema, Filter, Point, SchemaError, StoreLockedError, open_store

SCHEMA = CollectionSchema(text_dim=16, image_dim=8, fused_dim=16)
REPO = Path(__file__).resolve().parents[1]


def _points(n: int, seed: int = 0, dim: int = 16, prefix: str = "item") -> list[Point]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim))
    return [
        Point(f"{prefix}{i}", {"fused": centers[i % 20] + 0.3 * rng.normal(size=dim)},
              {"market": ["de", "fr", "us", "jp", "br"][i % 5], "in_stock": i % 2 == 0, "price": float(i % 50)})
        for i in range(n)
    ]


def _run_child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_acknowledged_upserts_survive_kill_9(tmp_path):
    """A child writes batches forever and reports each acknowledged batch; we SIGKILL it mid-stream and
    every acknowledged item must be there after reopening (the engine replays its WAL)."""
    child = _run_child(
        """
        import sys, numpy as np
        from index import CollectionSchema, Point, open_store
        store = open_store("edge", path=sys.argv[1], schema=CollectionSchema(text_dim=16, image_dim=8, fused_dim=16))
        rng = np.random.default_rng(0)
        batch = 0
        while True:
            store.upsert([Point(f"b{batch}-{j}", {"fused": rng.normal(size=16)}, {"market": "de"}) for j in range(25)])
            print(batch, flush=True)  # acknowledged
            batch += 1
        """,
        str(tmp_path / "store"),
    )
    acked = -1
    try:
        deadline = time.monotonic() + 60
        while acked < 30 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acked = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert acked >= 30, child.stderr.read()
    assert child.returncode == -signal.SIGKILL
    with open_store("edge", path=tmp_path / "store") as store:
        expected = [f"b{b}-{j}" for b in range(acked + 1) for j in range(25)]
        assert len(store.get(expected)) == len(expected)
        assert store.count() >= len(expected)  # batches after the last ack may or may not be there
        assert store.count(Filter(markets=["de"])) == store.count()  # payload index replayed too


def test_second_opener_gets_a_clear_lock_error(tmp_path):
    path = tmp_path / "store"
    store = open_store("edge", path=path, schema=SCHEMA)
    with pytest.raises(StoreLockedError, match="already open.*one process per store directory"):
        open_store("edge", path=path)
    child = _run_child(
        """
        import sys
        from index import StoreLockedError, open_store
        try:
            open_store("edge", path=sys.argv[1])
        except StoreLockedError as exc:
            print("locked:", exc)
        """,
        str(path),
    )
    out, err = child.communicate(timeout=60)
    assert out.startswith("locked: edge store"), err
    store.close()
    open_store("edge", path=path).close()  # released on close


def test_reopen_in_another_process_sees_data(tmp_path):
    path = tmp_path / "store"
    with open_store("edge", path=path, schema=SCHEMA) as store:
        store.upsert(_points(300))
        store.delete(["item0"])
    child = _run_child(
        """
        import sys, numpy as np
        from index import Filter, open_store
        with open_store("edge", path=sys.argv[1]) as store:
            print(store.count(), store.count(Filter(markets=["de"], in_stock=True)), len(store.get(["item0", "item1"])))
        """,
        str(path),
    )
    out, err = child.communicate(timeout=60)
    assert out.split() == ["299", "29", "1"], err


def test_build_index_builds_hnsw_with_high_recall(tmp_path):
    """With a tiny indexing threshold a few thousand points get a real HNSW graph; its answers, filtered or
    not, must agree with exact search."""
    store = open_store("edge", path=tmp_path / "store", schema=SCHEMA, indexing_threshold_kb=10,
                       full_scan_threshold_kb=1)
    points = _points(4000, dim=16)
    store.upsert(points, batch_size=500)
    assert store.info()["indexed_vectors"] == 0
    store.build_index()
    assert store.info()["indexed_vectors"] >= 4000
    rng = np.random.default_rng(3)
    recalls = []
    for i in range(30):
        q = rng.normal(size=16)
        flt = Filter(markets=["de"]) if i % 2 else None
        exact = {h.item_id for h in store.search(q, k=10, filter=flt, exact=True)}
        approx = {h.item_id for h in store.search(q, k=10, filter=flt, hnsw_ef=128)}
        recalls.append(len(exact & approx) / 10)
    assert np.mean(recalls) >= 0.95
    store.close()
    with open_store("edge", path=tmp_path / "store") as again:  # the graph is persisted
        assert again.info()["indexed_vectors"] >= 4000


def test_int8_quantization_and_flush_on_write(tmp_path):
    store = open_store("edge", path=tmp_path / "store", schema=SCHEMA, quantization="int8", flush_on_write=True,
                       indexing_threshold_kb=10)
    points = _points(2000)
    store.upsert(points, batch_size=500)
    store.build_index()
    q = points[7].vectors["fused"]
    assert store.search(q, k=1)[0].item_id == "item7"
    store.close()


def test_schema_file_problems_are_clear(tmp_path):
    with pytest.raises(SchemaError, match="pass a CollectionSchema"):
        open_store("edge", path=tmp_path / "none")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "schema.json").write_text("{not json")
    with pytest.raises(SchemaError, match="not a valid store schema"):
        open_store("edge", path=bad)
    with open_store("edge", path=tmp_path / "ok", schema=SCHEMA):
        pass
    assert json.loads((tmp_path / "ok" / "schema.json").read_text())["fused_dim"] == 16
    with pytest.raises(SchemaError, match="holds vectors"):
        open_store("edge", path=tmp_path / "ok", schema=CollectionSchema(text_dim=16, image_dim=8, fused_dim=32))


def test_concurrent_reads_and_writes_from_threads(tmp_path):
    """The service calls the store from a thread pool."""
    store = open_store("edge", path=tmp_path / "store", schema=SCHEMA)
    store.upsert(_points(500))
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for j in range(40):
                store.search(rng.normal(size=16), k=5, filter=Filter(markets=["fr"]))
                store.upsert(_points(5, seed=seed * 100 + j, prefix=f"t{seed}-{j}-"))
                store.recommend(["item1"], k=3)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert store.count() == 500 + 4 * 40 * 5
    store.close()


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 50, 4), dim))
    x = centres[rng.integers(0, len(centres), size=n)] + 0.5 * rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_int8_quantization_with_rescoring_matches_exact_search(tmp_path):
    """Qdrant's recipe (int8 copy for the graph and the first pass, originals for the final scores): the
    graph's top 10 must be exact search's top 10, scored with the original vectors. Without rescoring the
    scores are the int8 estimates, which is how we know the option reaches the engine."""
    x = _clustered(3000, 32, seed=5)
    schema = CollectionSchema(text_dim=32, image_dim=32, fused_dim=32)
    points = [Point(f"p{i}", {"fused": x[i]}, {"market": ["de", "fr"][i % 2]}) for i in range(len(x))]
    queries = _clustered(40, 32, seed=6)
    deviations = {}
    for rescore in (True, False):
        store = open_store("edge", path=tmp_path / f"store-{rescore}", schema=schema, quantization="int8",
                           quantization_rescore=rescore, indexing_threshold_kb=10, full_scan_threshold_kb=1)
        store.upsert(points, batch_size=1000)
        store.build_index()
        assert store.info()["indexed_vectors"] >= len(x)
        recalls, deviation = [], 0.0
        for q in queries:
            exact = store.search(q, k=10, exact=True)
            approx = store.search(q, k=10)
            recalls.append(len({h.item_id for h in exact} & {h.item_id for h in approx}) / 10)
            truth = {f"p{i}": float(x[i] @ q) for i in range(len(x))}
            deviation = max(deviation, max(abs(h.score - truth[h.item_id]) for h in approx))
            # exact search ignores the int8 copy: the true top 10 with the true scores
            assert {h.item_id for h in exact} == set(sorted(truth, key=truth.get, reverse=True)[:10])
            assert max(abs(h.score - truth[h.item_id]) for h in exact) < 1e-5
        deviations[rescore] = deviation
        if rescore:
            assert np.mean(recalls) >= 0.98
        store.close()
    assert deviations[True] < 1e-4 < deviations[False]


def test_indexing_threads_option(tmp_path):
    with open_store("edge", path=tmp_path / "auto", schema=SCHEMA) as store:
        assert store.indexing_threads == len(os.sched_getaffinity(0))  # 0 = one per CPU this process may use
    with pytest.raises(SchemaError, match="indexing_threads"):
        open_store("edge", path=tmp_path / "bad", schema=SCHEMA, indexing_threads=-1)
    store = open_store("edge", path=tmp_path / "one", schema=SCHEMA, indexing_threads=1, indexing_threshold_kb=10)
    store.upsert(_points(1500), batch_size=500)
    store.build_index()
    assert store.indexing_threads == 1 and store.info()["indexed_vectors"] >= 1500
    store.close()

"""Scale-out on real engines, on one machine: `mmrec embed --engine ray` through a real local Ray (vectors
equal to the single-process path, resumable by content hash, upserted into a real edge store), and
`mmrec train --ddp 2` through torchrun with 2 gloo processes (same optimisation as 1 process with the same
global batch; its checkpoint serves through the service's two-stage ranker)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmrec.cli import main
from mmrec.embedding.parts import KEY_COLUMN, EmbedOutput

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ Ray embedding

def _part(path: Path, ids: list[str], keys: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(2 * len(ids), dtype=np.float32)), 2)
    pq.write_table(pa.table({"item_id": ids, "fused_vector": vectors, KEY_COLUMN: keys}), path)


def test_parts_keep_the_newest_row_of_each_current_listing(tmp_path):
    """reconcile: a listing re-embedded in a later run keeps only its newest row, listings gone from the
    catalog lose theirs, an unreadable part (a crash) is deleted, and the keys left are what a run skips."""
    out = EmbedOutput.open(tmp_path / "out", {"space": "s1", "encoder": "e", "recipe": "r", "dim": 2})
    _part(out.root / "run-0001" / "a.parquet", ["a", "b", "c"], ["ka", "kb", "kc"])
    _part(out.root / "run-0002" / "a.parquet", ["b"], ["kb2"])  # b changed, re-embedded
    (out.root / "run-0002" / "torn.parquet").write_bytes(b"PAR1 not a parquet file")
    assert out.next_run().name == "run-0003"
    done = out.reconcile(pa.array(["a", "b", "d"]))  # c left the catalog, d is new
    assert done == {"ka", "kb2"}
    table = out.read(order=["d", "b", "a"])
    assert table["item_id"].to_pylist() == ["b", "a"] and KEY_COLUMN not in table.column_names
    assert not (out.root / "run-0002" / "torn.parquet").exists()
    assert pd.read_parquet(out.root)["item_id"].sort_values().tolist() == ["a", "b"]  # any reader sees one table
    with pytest.raises(Exception, match="space s1"):
        EmbedOutput.open(out.root, {"space": "s2"})


def test_import_mmrec_does_not_import_ray():
    code = "import sys, mmrec, mmrec.embedding.embed, mmrec.commands.embed; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_ray_engine_refuses_other_outputs_in_one_line(tmp_path, capsys):
    assert main(["embed", "emoji-market", "--out", str(tmp_path / "x.jsonl"), "--engine", "ray"]) == 2
    assert "directory of Parquet parts" in capsys.readouterr().err
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert main(["embed", "emoji-market", "--out", str(tmp_path / "foreign"), "--engine", "ray", "--no-images"]) == 2
    assert "no `mmrec embed --engine ray` wrote" in capsys.readouterr().err


def test_a_ray_worker_with_another_item_encoder_than_the_driver_refuses():
    """Each Ray actor builds its item encoder on its own node: one whose space is not the driver's (e.g. a node
    that tuned its own default e5, not bit-identical across machines) must not write under the driver's name."""
    from mmrec.embedding.distributed import EmbedBatches
    from mmrec.embedding.item_encoder import EncoderConfig
    from mmrec.errors import UserError

    config = EncoderConfig(text_encoder="use-m3", image_encoder=None)
    ok = EmbedBatches(config, batch_size=8, threads=1, cache_dir=False, done=[])
    try:
        with pytest.raises(UserError, match="not the driver's"):
            EmbedBatches(config, batch_size=8, threads=1, cache_dir=False, done=[], space=ok.encoder.space + "x")
    finally:
        ok.encoder.close()


def _vectors(frame: pd.DataFrame, column: str) -> np.ndarray:
    return np.stack(frame[column].to_numpy()).astype(np.float64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.slow
def test_embed_on_ray_equals_single_process_and_resumes(tmp_path, capsys, emoji_market):
    catalog = tmp_path / "catalog.jsonl"
    emoji_market.items.select(range(500)).to_json(str(catalog), lines=True, force_ascii=False)
    local, ray_out = tmp_path / "B.parquet", tmp_path / "A.parquet"
    # The default space with its e5 on ONNX fp32: dynamic int8 (the default) scales activations per call, so
    # its vectors depend slightly on how a run batches (cosine ~0.995); fp32 is batch-independent, so any
    # difference here is the engine's, not the quantiser's.
    text = ["--text-encoder", "default:onnx"]
    assert main(["embed", str(catalog), "--out", str(local), "--no-images", "--cache-dir", str(tmp_path / "c1"), *text]) == 0
    assert main(["embed", str(catalog), "--out", str(ray_out), "--no-images", "--engine", "ray",
                 "--cache-dir", str(tmp_path / "c2"), *text]) == 0  # its own cache: the vectors are made on Ray
    assert "500 embedded on Ray, 0 already in" in capsys.readouterr().out
    a, b = pd.read_parquet(ray_out), pd.read_parquet(local)
    assert sorted(a["item_id"]) == sorted(b["item_id"]) and len(a) == 500
    a = a.set_index("item_id").loc[b["item_id"]]
    for column in ("text_vector", "fused_vector"):
        assert _cosines(_vectors(a, column), _vectors(b, column)).min() >= 0.9999
    assert a["image_vector"].isna().all()

    # The Python API on Ray: a Dataset in catalog order, like engine="local" returns
    import mmrec
    from mmrec.embedding.distributed import RayConfig

    head = emoji_market.items.select(range(20))
    ds = mmrec.embed(head, text_encoder="default:onnx", image_encoder=None, engine="ray", ray=RayConfig(workers=1), cache_dir=False, progress=False)
    assert ds["item_id"] == head["item_id"] and KEY_COLUMN not in ds.column_names
    assert _cosines(np.asarray(ds["fused_vector"], np.float64), _vectors(b.iloc[:20], "fused_vector")).min() >= 0.9999

    # Resume: one listing edited, one removed, one added, and one part torn by a "crash": only those
    # listings are embedded again; the rest keep their vectors bit for bit. --store upserts them all.
    first = a.copy()
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    edited, removed = rows[0]["item_id"], rows[1]["item_id"]
    rows[0]["title"] = "a completely different listing title"
    added = dict(rows[2], item_id="new-listing", title="brand new listing")
    rows = [rows[0], *rows[2:], added]
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    torn = sorted((ray_out / "run-0001").glob("*.parquet"))[-1]
    torn_ids = set(pq.read_table(torn, columns=["item_id"])["item_id"].to_pylist()) - {edited, removed}
    torn.write_bytes(torn.read_bytes()[:100])
    store = tmp_path / "service"
    assert main(["embed", str(catalog), "--out", str(ray_out), "--no-images", "--engine", "ray",
                 "--cache-dir", str(tmp_path / "c3"), "--store", str(store), "--workers", "1", *text]) == 0
    again = 2 + len(torn_ids)
    assert f"{again} embedded on Ray, {500 - again} already in" in capsys.readouterr().out
    c = pd.read_parquet(ray_out).set_index("item_id")
    assert len(c) == 500 and c.index.is_unique and removed not in c.index and "new-listing" in c.index
    kept = [i for i in first.index if i not in {edited, removed} | torn_ids]
    assert np.array_equal(_vectors(c.loc[kept], "fused_vector"), _vectors(first.loc[kept], "fused_vector"))
    torn_ids = sorted(torn_ids)  # embedded again, in other batches: the same vectors up to float rounding
    assert _cosines(_vectors(c.loc[torn_ids], "fused_vector"), _vectors(first.loc[torn_ids], "fused_vector")).min() >= 0.9999
    assert c.loc[edited, KEY_COLUMN] != first.loc[edited, KEY_COLUMN]
    assert _cosines(_vectors(c.loc[[edited]], "fused_vector"), _vectors(first.loc[[edited]], "fused_vector"))[0] < 0.99

    from mmrec.store.catalog_store import CatalogConfig, CatalogStore

    catalog_store = CatalogStore.open(store, CatalogConfig(text_encoder="default:onnx", image_encoder=None, adapter=None))
    try:
        assert catalog_store.count() == 500
        stored = catalog_store.item_vectors([edited, "new-listing"])
        for item_id, (vector, _) in stored.items():
            assert _cosines(vector[None, :].astype(np.float64), _vectors(c.loc[[item_id]], "fused_vector"))[0] >= 0.9999
    finally:
        catalog_store.close()


# ------------------------------------------------------------------------------------------ DDP training

def test_each_global_batch_is_split_across_ranks_exactly_once():
    from mmrec.model.distributed import DistContext, without_option

    rows = np.arange(11)
    shares = [DistContext(rank, 3).shard(rows) for rank in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == rows.tolist()
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert DistContext().shard(rows) is rows
    assert without_option(["train", "--ddp", "2", "--out", "m.pt", "--ddp=3"], "--ddp") == ["train", "--out", "m.pt"]


TRAIN = ["train", "--dataset", "ml-100k", "--max-users", "300", "--epochs", "3", "--batch-size", "32", "--hidden", "16",
         "--layers", "1", "--max-len", "30", "--dropout", "0", "--id-dropout", "0", "--no-progress"]


@pytest.mark.slow
def test_ddp_two_processes_train_like_one_and_the_checkpoint_serves(tmp_path, ml100k):
    """Same global batch (32), same seed; dropout off so the only differences are the ranks' float
    summation order: the per-epoch training loss and the validation NDCG@10 agree. Then the 2-process
    checkpoint is served by the service's two-stage ranker and fine-tuned on 1 process."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    assert main([*TRAIN, "--out", str(one)]) == 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "mmrec", *TRAIN, "--ddp", "2", "--out", str(two)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 processes (DDP)" in proc.stdout
    r1, r2 = (torch.load(p, weights_only=True)["extra"] for p in (one, two))
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    e1, e2 = r1["report"]["epochs"], r2["report"]["epochs"]
    assert len(e1) == len(e2) == 3
    for a, b in zip(e1, e2):
        assert abs(a["loss"] - b["loss"]) <= 1e-3 * a["loss"], (e1, e2)
        assert abs(a["valid_ndcg@10"] - b["valid_ndcg@10"]) <= 0.005, (e1, e2)
    assert e1[-1]["loss"] < e1[0]["loss"]  # it did learn

    from index import CollectionSchema, Point, open_store
    from mmrec.model.vectors import catalog_vectors
    from mmrec.serving.two_stage import TwoStageRecommender

    vectors = catalog_vectors(ml100k.items, "text:use-m3", progress=False)
    store = open_store("edge", path=tmp_path / "store", schema=CollectionSchema(
        text_dim=vectors.dim, image_dim=vectors.dim, fused_dim=vectors.dim))
    try:
        store.upsert([Point(str(i), {"fused": v}, {"product_id": str(i), "in_stock": True})
                      for i, v in zip(vectors.item_ids, vectors.vectors)])
        ranker = TwoStageRecommender.from_checkpoint(two, store, expect_vectors_version=vectors.version)
        history = [str(i) for i in ml100k.events.select(range(20))["item_id"]]
        recs, used = ranker.recommend(history, k=10)
        assert len(recs) == 10 and used and not {r.item_id for r in recs} & set(history)
    finally:
        store.close()
    # resume on another world size: the 2-process checkpoint fine-tuned by 1 process
    assert main([*TRAIN, "--epochs", "1", "--resume", str(two), "--out", str(tmp_path / "three.pt")]) == 0


@pytest.mark.slow
def test_ddp_failure_is_one_line(tmp_path, capfd):
    """A rank's UserError ends `mmrec train --ddp` with its one-line message and one line from the launcher,
    not the launcher's traceback (capfd: the ranks' output too)."""
    assert main(["train", "--ddp", "2", "--dataset", "no-such-dataset", "--out", str(tmp_path / "m.pt")]) == 2
    err = capfd.readouterr().err
    assert "mmrec: error: training failed on rank" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ deploy/
# Docker and a Kubernetes API server are not available here: these check what can be checked without
# them, against the real code, so the files cannot drift from the CLI they run.

def _serve_args(argv: list[str]):
    from mmrec.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.command == "serve" and args.host == "0.0.0.0" and args.data_dir == "/data"
    return args


def test_compose_runs_replicas_of_a_real_serve_command_behind_the_proxy():
    import yaml

    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"qdrant", "redis", "mmrec", "proxy"} <= set(services)
    args = _serve_args(services["mmrec"]["command"])
    assert args.store == "qdrant://qdrant:6333" and args.events == "redis://redis:6379/0"
    assert services["mmrec"]["deploy"]["replicas"] >= 2
    assert "MMREC_API_KEY" in services["mmrec"]["environment"]  # a non-loopback service needs a key
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendfsync") + 1] == "always"  # mmrec refuses a Redis that can lose events
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server mmrec:8000" in nginx and "proxy_pass http://mmrec;" in nginx


def test_kubernetes_deployment_service_and_qdrant_values_fit_together():
    import yaml

    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "mmrec.yaml").read_text())}
    deployment, service = docs["Deployment"], docs["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = _serve_args(container["args"])
    assert args.store == "qdrant://qdrant:6333" and args.events == "redis://redis:6379/0"
    assert {p["name"] for p in container["ports"]} >= {service["spec"]["ports"][0]["targetPort"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    redis = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "redis.yaml").read_text())}
    assert redis["Service"]["metadata"]["name"] == "redis"
    qdrant = yaml.safe_load((ROOT / "deploy" / "k8s" / "qdrant-values.yaml").read_text())
    assert qdrant["replicaCount"] >= 3 and qdrant["config"]["cluster"]["enabled"] is True


def test_dockerfile_copies_every_package_and_runs_a_real_command():
    import tomllib

    text = (ROOT / "Dockerfile").read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in packages:
        assert f"COPY {package.rstrip('*')} ./{package.rstrip('*')}" in text, package
    cmd = json.loads(next(line for line in text.splitlines() if line.startswith("CMD ")).removeprefix("CMD "))
    _serve_args(cmd)

"""Embedding and indexing stream in bounded chunks (issue #16: peak memory must not grow with the catalog):
the chunked paths give exactly the vectors of the all-in-memory path, read their input lazily, keep no
per-item state in the process, and stay resumable."""
from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from encoders import BatchEmbedder, MultimodalEncoder, load_text_encoder

TITLES = ["t-shirt", "camiseta", "pizza", "Fußball", "ギター", "口红", "зонтик", "kamera", "chaussettes",
          "banana", "clé", "ombrello", "노트북", "sapato", "guitarra", "Regenschirm", "peluche"]


@pytest.fixture(scope="module")
def use():
    return load_text_encoder("use-m3")


def _rows(titles):
    return [{"item_id": f"i{k}", "product_id": f"p{k}", "title": t, "description": None if k % 3 else "rot",
             "language": "xx", "market": "XX"} for k, t in enumerate(titles)]


def test_embed_batches_reads_its_input_lazily(use, tmp_path):
    """Only about one batch of input is pulled ahead of what was yielded: nothing collects the catalog."""
    pulled = []

    def inputs():
        for t in TITLES:
            pulled.append(t)
            yield (t, None)

    emb = BatchEmbedder(use, batch_size=4, cache_dir=tmp_path, progress=False)
    gen = emb.embed_batches(inputs(), total=len(TITLES))
    first = next(gen)
    assert first["fused"].shape == (4, 512) and len(pulled) == 4
    rest = list(gen)
    assert [len(b["fused"]) for b in rest] == [4, 4, 4, 1] and len(pulled) == len(TITLES)
    assert emb.stats.items == len(TITLES) and emb.stats.embedded == len(TITLES)
    emb.close()


def test_chunked_catalog_gives_the_same_vectors_as_the_in_memory_path(use, tmp_path):
    from mmrec.embedding.embed import embed_catalog, embedded_tables
    from mmrec.embedding.item_encoder import ItemEncoder

    rows = _rows(TITLES)
    rows[5]["title"] = None  # no text, no image: null vectors, the run goes on
    ds = datasets.Dataset.from_list(rows)
    # the reference: every vector in one in-memory array (what embed_catalog built before it streamed)
    ref = ItemEncoder(MultimodalEncoder(use), cache_dir=False, batch_size=64).embed(rows)
    # chunks of 3 rows over batches of 4 items: chunk and batch borders do not line up
    enc = ItemEncoder(MultimodalEncoder(use), cache_dir=tmp_path / "c", batch_size=4)
    out = embed_catalog(ds, enc, chunk=3)
    assert out.column_names == ds.column_names + ["text_vector", "image_vector", "fused_vector"]
    assert out["item_id"] == ds["item_id"]
    for k in range(len(ds)):
        if k == 5:
            assert out[k]["text_vector"] is None and out[k]["fused_vector"] is None
            continue
        np.testing.assert_allclose(out[k]["text_vector"], ref["text"][k], atol=1e-6)
        np.testing.assert_allclose(out[k]["fused_vector"], ref["fused"][k], atol=1e-6)
        assert out[k]["image_vector"] is None
    tables = list(embedded_tables(ds, enc, chunk=5))
    assert [t.num_rows for t in tables] == [8, 8, 1]  # whole batches of 4 until >= 5 rows are held
    assert [i for t in tables for i in t.column("item_id").to_pylist()] == ds["item_id"]
    enc.close()


def test_cli_writes_every_format_chunk_by_chunk_with_the_api_vectors(tmp_path, monkeypatch):
    import mmrec
    from mmrec.cli import main

    monkeypatch.setenv("MMREC_CACHE", str(tmp_path / "cache"))
    rows = _rows(TITLES)
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    api = mmrec.embed(datasets.Dataset.from_list(rows), text_encoder="use-m3", image_encoder=None, progress=False,
                      cache_dir=False)
    expected = np.array(api["fused_vector"], dtype=np.float32)
    for name in ("v.parquet", "v.jsonl", "v.csv"):
        out = tmp_path / name
        assert main(["embed", str(catalog), "--out", str(out), "--text-encoder", "use-m3", "--no-images",
                     "--batch-size", "4"]) == 0
        if name.endswith("parquet"):
            back = datasets.Dataset.from_parquet(str(out))
            got, images = back["fused_vector"], back["image_vector"]
        elif name.endswith("jsonl"):
            back = [json.loads(line) for line in out.read_text().splitlines()]
            got, images = [r["fused_vector"] for r in back], [r["image_vector"] for r in back]
        else:
            import pandas as pd

            back = pd.read_csv(out, keep_default_na=False)  # "null" cells are JSON, not missing
            got = [json.loads(v) for v in back["fused_vector"]]
            images = [json.loads(v) for v in back["image_vector"]]
        assert len(got) == len(rows) and images == [None] * len(rows)
        np.testing.assert_allclose(np.array(got, dtype=np.float32), expected, atol=1e-6, err_msg=name)
        assert not (tmp_path / (name + ".tmp")).exists()


def test_index_catalog_streams_keeps_no_vectors_and_resumes(tmp_path):
    from mmrec.embedding.item_encoder import load_item_encoder
    from mmrec.store.catalog_store import CatalogConfig, CatalogStore
    from mmrec.store.indexing import index_catalog, stored_vectors

    config = CatalogConfig(text_encoder="use-m3", image_encoder=None, adapter=None)
    ds = datasets.Dataset.from_list(_rows(TITLES))
    encoder = load_item_encoder(config, cache_dir=tmp_path / "cache")
    catalog = CatalogStore.open(tmp_path / "data", config, encoder=encoder)
    try:
        assert index_catalog(catalog, ds.select(range(7)), batch_size=3, chunk=4, progress=False) == 7
        # a grown catalog: only the new listings are embedded (blocks of 4 checked against the store)
        assert index_catalog(catalog, ds, batch_size=3, chunk=4, progress=False) == len(TITLES) - 7
        assert catalog.count() == len(TITLES)
        got, _ = catalog.vectors.get_many(ds["item_id"])
        assert got == {}  # a bulk load leaves the serving cache empty: no per-item state in the process
        stored = stored_vectors(catalog, np.array(ds["item_id"]), chunk=5)
        direct = encoder.embed(ds)["fused"]
        np.testing.assert_allclose(stored, direct / np.linalg.norm(direct, axis=1, keepdims=True), atol=1e-5)
        hits = catalog.search_vector(stored[3], k=1, filter=None)
        assert hits[0].hits[0].item_id == "i3"
    finally:
        catalog.close()

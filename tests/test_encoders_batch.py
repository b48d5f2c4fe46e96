"""Batch embedding: the content-hash cache (second run embeds nothing, a changed input is re-embedded, a crash
keeps finished batches), bad images survived, Dataset in / Dataset out through the item recipe, and
`mmrec embed` on the CLI."""
from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from encoders import BatchEmbedder, MultimodalEncoder, load_text_encoder

TITLES = ["t-shirt", "camiseta", "pizza", "Fußball", "ギター", "口红", "зонтик", "kamera", "chaussettes",
          "banana", "clé", "ombrello", "노트북", "ساعت", "sapato", "guitarra", "Regenschirm", "peluche",
          "tazza", "koltuk"]


@pytest.fixture(scope="module")
def use():
    return load_text_encoder("use-m3")  # fast; the cache logic does not depend on the encoder


def _inputs(titles):
    return [(t, None) for t in titles]  # (text, image): what a recipe made of each item


def _rows(titles):
    return [{"item_id": f"i{k}", "title": t, "description": None} for k, t in enumerate(titles)]


def test_second_run_embeds_nothing_and_changed_item_is_reembedded(use, tmp_path):
    first = BatchEmbedder(use, batch_size=8, cache_dir=tmp_path, progress=False)
    a = first.embed(_inputs(TITLES))
    assert first.stats.embedded == 20 and first.stats.cache_hits == 0
    np.testing.assert_allclose(a["text"], use.encode(TITLES), atol=1e-6)  # same as a direct call
    first.close()

    second = BatchEmbedder(use, batch_size=8, cache_dir=tmp_path, progress=False)
    b = second.embed(_inputs(TITLES))
    assert second.stats.embedded == 0 and second.stats.cache_hits == 20
    np.testing.assert_array_equal(a["fused"], b["fused"])

    changed = list(TITLES)
    changed[3] = "ballon de football"
    inputs = _inputs(changed)
    inputs[5] = (f"{changed[5]}. matte, long-lasting", None)  # a new description changes the recipe's text too
    c = second.embed(inputs)
    assert second.stats.embedded == 2 and second.stats.cache_hits == 18
    assert not np.allclose(c["text"][3], a["text"][3])
    np.testing.assert_allclose(c["text"][3], use.encode(["ballon de football"])[0], atol=1e-6)


def test_another_encoder_never_reads_these_vectors(use, tmp_path):
    BatchEmbedder(use, cache_dir=tmp_path, progress=False).embed(_inputs(TITLES[:4]))
    other = BatchEmbedder(load_text_encoder("0.5*use-m3+0.5*use-m3"), cache_dir=tmp_path, progress=False)
    other.embed(_inputs(TITLES[:4]))
    assert other.stats.embedded == 4


class _CrashAfter:
    """Fault injection: a real encoder that dies on its n-th call, like a killed process mid-run."""

    def __init__(self, inner, calls: int):
        self.inner, self.left = inner, calls
        self.name, self.dim, self.version = inner.name, inner.dim, inner.version

    def encode(self, texts, *, kind="passage"):
        if self.left == 0:
            raise RuntimeError("simulated crash")
        self.left -= 1
        return self.inner.encode(texts, kind=kind)


def test_crash_keeps_finished_batches(use, tmp_path):
    crashing = BatchEmbedder(_CrashAfter(use, calls=2), batch_size=5, cache_dir=tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.embed(_inputs(TITLES))
    resumed = BatchEmbedder(use, batch_size=5, cache_dir=tmp_path, progress=False)
    resumed.embed(_inputs(TITLES))
    assert resumed.stats.cache_hits == 10 and resumed.stats.embedded == 10


def test_dataset_in_dataset_out_with_missing_text(use, tmp_path):
    from mmrec.data.catalog import as_dataset
    from mmrec.embedding.embed import embed_catalog
    from mmrec.embedding.item_encoder import ItemEncoder
    from mmrec.errors import UserError

    rows = _rows(TITLES[:6])
    rows[2]["title"] = None  # no title, no image: it gets no vectors, and the run goes on
    ds = datasets.Dataset.from_list(rows)
    out = embed_catalog(ds, ItemEncoder(MultimodalEncoder(use), cache_dir=tmp_path))
    assert {"text_vector", "image_vector", "fused_vector"} <= set(out.column_names)
    assert out.column_names[: len(ds.column_names)] == ds.column_names
    assert out[2]["text_vector"] is None and out[0]["image_vector"] is None
    assert len(out[0]["fused_vector"]) == 512
    with pytest.raises(UserError, match="title"):
        as_dataset(datasets.Dataset.from_list([{"name": "x"}]))
    with pytest.raises(ValueError):
        BatchEmbedder(use, batch_size=0)


def test_bad_images_are_counted_and_survived(tmp_path):
    """A multimodal run: a good PNG, corrupt bytes on disk, a missing file. Every item keeps text + fused."""
    from PIL import Image

    from encoders import ModalityMix, load_image_encoder

    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    rows = [("red square", str(good)), ("broken", str(corrupt)), ("missing", str(tmp_path / "nope.png")),
            ("no image at all", None)]
    mm = MultimodalEncoder(load_text_encoder("use-m3"), load_image_encoder("efficientnet-lite0"),
                           mix=ModalityMix(bridge_weight=1.0))
    emb = BatchEmbedder(mm, batch_size=4, cache_dir=tmp_path / "cache", progress=False)
    out = emb.embed(rows)
    assert emb.stats.image_errors == 2 and sorted(out["image_errors"]) == [1, 2]
    assert out["has_image"].tolist() == [True, False, False, False]
    assert np.isfinite(out["text"]).all() and np.isfinite(out["fused"]).all()
    assert not np.allclose(out["fused"][0], out["text"][0])  # the image took part in the fused vector
    np.testing.assert_allclose(out["fused"][1], out["text"][1], atol=1e-6)
    again = BatchEmbedder(mm, batch_size=4, cache_dir=tmp_path / "cache", progress=False)
    again.embed(rows)
    assert again.stats.embedded == 0 and again.stats.image_errors == 2  # still reported from the cache


def test_mmrec_embed_api_and_cli(tmp_path, monkeypatch):
    import mmrec
    from mmrec.cli import main

    monkeypatch.setenv("MMREC_CACHE", str(tmp_path / "cache"))
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("\n".join(json.dumps({"item_id": f"i{k}", "title": t}, ensure_ascii=False)
                                 for k, t in enumerate(TITLES[:5])))
    ds = mmrec.embed(datasets.Dataset.from_list(_rows(TITLES[:5])), text_encoder="use-m3", image_encoder=None,
                     progress=False)
    assert len(ds[0]["text_vector"]) == 512

    out = tmp_path / "vectors.parquet"
    assert main(["embed", str(catalog), "--out", str(out), "--text-encoder", "use-m3", "--no-images"]) == 0
    back = datasets.Dataset.from_parquet(str(out))
    assert len(back) == 5 and len(back[0]["fused_vector"]) == 512
    np.testing.assert_allclose(back[0]["text_vector"], ds[0]["text_vector"], atol=1e-6)
    assert main(["embed", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2

"""One item path: `mmrec embed` (API and CLI), `POST /items` and the training vectors give the same vectors for
the same item (description and category set, with an image), for the default recipe and for one that adds
the category; and a store or checkpoint from another recipe is refused in one line."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from mmrec.embedding.recipe import DEFAULT_FIELDS, FIELDS

TEXT, IMAGE = "use-m3", "efficientnet-lite0"  # fast real encoders; adapter None = the class-name bridge


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("item-path")
    png = root / "boot.png"
    Image.new("RGB", (96, 96), (150, 60, 20)).save(png)
    items = [
        {"item_id": "de-1", "product_id": "p1", "title": "Rote Wanderstiefel", "description": "wasserdicht, Größe 42",
         "category": "Schuhe/Wandern", "language": "de", "market": "DE", "image_path": str(png)},
        {"item_id": "ja-1", "product_id": "p1", "title": "赤いハイキングブーツ", "description": "防水",
         "category": "靴", "language": "ja", "market": "JP", "image_path": str(png)},
        {"item_id": "en-2", "product_id": "p2", "title": "Espresso cup", "description": "porcelain, 80 ml",
         "category": "Kitchen/Cups", "language": "en", "market": "US", "image_path": None},
    ]
    return root, items


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


@pytest.mark.parametrize("recipe", [DEFAULT_FIELDS, FIELDS], ids=["default-recipe", "with-category"])
def test_embed_post_items_and_training_vectors_agree(catalog, recipe, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    import mmrec
    from mmrec.cli import main
    from mmrec.model.vectors import store_vectors
    from mmrec.serving.app import open_service
    from mmrec.store.catalog_store import CatalogConfig

    monkeypatch.setenv("MMREC_CACHE", str(tmp_path / "cache"))  # nothing shared through the cache
    root, items = catalog
    # 1. mmrec.embed, the Python API
    embedded = mmrec.embed(items, text_encoder=TEXT, image_encoder=IMAGE, adapter=None, recipe=recipe,
                           progress=False, cache_dir=False)
    api = np.array(embedded["fused_vector"], dtype=np.float32)
    assert embedded[0]["image_vector"] is not None and embedded[2]["image_vector"] is None
    # 2. `mmrec embed` on the command line, from a catalog file
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in items))
    out = tmp_path / "vectors.parquet"
    assert main(["embed", str(path), "--out", str(out), "--text-encoder", TEXT, "--image-encoder", IMAGE,
                 "--adapter", "none", "--text-fields", ",".join(recipe)]) == 0
    import datasets

    cli = np.array(datasets.Dataset.from_parquet(str(out))["fused_vector"], dtype=np.float32)
    # 3. POST /items on the service, images as base64 (the server reads no client-named path)
    data = tmp_path / "data"
    config = CatalogConfig(text_encoder=TEXT, image_encoder=IMAGE, adapter=None, recipe=recipe)
    body = []
    for r in items:
        row = {k: r[k] for k in ("item_id", "product_id", "title", "description", "category", "language", "market")}
        if r["image_path"]:
            row["image_base64"] = base64.b64encode(open(r["image_path"], "rb").read()).decode()
        body.append(row)
    with TestClient(open_service(data, config), base_url="http://127.0.0.1") as client:
        reply = client.post("/items", json={"items": body})
        assert reply.status_code == 200, reply.text
    # 4. the training vectors (`mmrec train --vectors service:DIR`): read back from that store, never re-embedded
    stored = mmrec.catalog_vectors(items, f"service:{data}", progress=False)
    for name, vecs in (("cli", cli), ("service store", stored.vectors)):
        cos = _cos(api, vecs)
        assert (cos >= 0.9999).all(), (name, cos)
    # items the store lacks are embedded by the store's own encoder, in the same space
    extra = dict(items[2], item_id="en-3")
    both = store_vectors([items[0], extra], data, progress=False)
    assert (_cos(both.vectors, api[[0, 2]]) >= 0.9999).all() and both.version == stored.version


def test_text_vectors_for_training_equal_text_only_embed(catalog, tmp_path, monkeypatch):
    import mmrec
    from mmrec.embedding.recipe import ItemRecipe
    from mmrec.model.vectors import text_vectors

    monkeypatch.setenv("MMREC_CACHE", str(tmp_path / "cache"))
    _, items = catalog
    embedded = mmrec.embed(items, text_encoder=TEXT, image_encoder=None, recipe=FIELDS, progress=False)
    train = text_vectors(items, TEXT, recipe=ItemRecipe(FIELDS), progress=False)
    assert (_cos(np.array(embedded["fused_vector"], dtype=np.float32), train.vectors) >= 0.9999).all()
    # the recipe is part of the space: the same encoder with another recipe is another version
    other = text_vectors(items, TEXT, progress=False)
    assert other.version != train.version


def test_store_and_checkpoint_from_another_recipe_are_refused(catalog, tmp_path, monkeypatch):
    from mmrec.errors import UserError
    from mmrec.model import FusionConfig, FusionTransformer, save_checkpoint
    from mmrec.model.vectors import store_vectors
    from mmrec.serving.two_stage import load_ranker
    from mmrec.data.schema import Item
    from mmrec.store.catalog_store import CatalogConfig, CatalogStore

    monkeypatch.setenv("MMREC_CACHE", str(tmp_path / "cache"))
    _, items = catalog
    records = [Item(item_id=r["item_id"], title=r["title"], description=r["description"],
                          category=r["category"], product_id=r["product_id"], market=r["market"]) for r in items]
    plain = CatalogConfig(text_encoder=TEXT, image_encoder=None, adapter=None)
    with_category = CatalogConfig(text_encoder=TEXT, image_encoder=None, adapter=None, recipe=FIELDS)
    for name, config in (("a", plain), ("b", with_category)):
        store = CatalogStore.open(tmp_path / name, config)
        store.upsert_items(records)
        store.close()
    vectors = store_vectors(items, tmp_path / "a", progress=False)
    ckpt = save_checkpoint(tmp_path / "model.pt", FusionTransformer(FusionConfig(content_dim=vectors.dim)),
                           id_items=[], vectors_version=vectors.version)
    same = CatalogStore.open(tmp_path / "a", plain)
    try:
        assert load_ranker(ckpt, same).vectors_version == vectors.version  # served on its own space
    finally:
        same.close()
    other = CatalogStore.open(tmp_path / "b", with_category)
    try:
        with pytest.raises(UserError) as refused:
            load_ranker(ckpt, other)
        assert "\n" not in str(refused.value) and "recipe" in str(refused.value)
    finally:
        other.close()
    with pytest.raises(ValueError, match="recipe"):  # reopening a store with another recipe
        CatalogStore.open(tmp_path / "a", with_category)


def test_mmrec_index_fills_a_data_dir_with_the_same_vectors(catalog, tmp_path, monkeypatch, capsys):
    import mmrec
    from mmrec.cli import main
    from mmrec.model.vectors import store_vectors

    monkeypatch.setenv("MMREC_CACHE", str(tmp_path / "cache"))
    _, items = catalog
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in items))
    args = ["index", str(path), "--data-dir", str(tmp_path / "data"), "--text-encoder", TEXT, "--image-encoder", "none",
            "--no-progress"]
    assert main(args) == 0 and "3 listings embedded" in capsys.readouterr().out
    assert main(args) == 0 and "0 listings embedded and indexed, 3 already" in capsys.readouterr().out  # resumable
    embedded = mmrec.embed(items, text_encoder=TEXT, image_encoder=None, progress=False)
    stored = store_vectors(items, tmp_path / "data", progress=False)
    assert (_cos(np.array(embedded["fused_vector"], dtype=np.float32), stored.vectors) >= 0.9999).all()
    assert main([*args[:-1], "--text-fields", "title,category"]) == 2  # another recipe: refused, one line
    # `mmrec serve` on that data dir takes the recipe it was built with unless told otherwise
    import argparse

    from mmrec.commands.serve import _recipe

    other = tmp_path / "other"
    assert main(["index", str(path), "--data-dir", str(other), "--text-encoder", TEXT, "--image-encoder", "none",
                 "--text-fields", "title,category", "--no-progress"]) == 0
    assert _recipe(argparse.Namespace(text_fields=None, data_dir=str(other))) == ("title", "category")
    assert _recipe(argparse.Namespace(text_fields="title", data_dir=str(other))) == ("title",)


def test_train_drops_events_of_items_the_catalog_lacks(capsys):
    import datasets

    from mmrec.commands.train import _known_items_only

    items = datasets.Dataset.from_list([{"item_id": "a"}, {"item_id": "b"}])
    events = datasets.Dataset.from_list([{"user_id": "u", "item_id": i} for i in ("a", "x", "b", "x", "y")])
    kept = _known_items_only(events, items)
    assert kept["item_id"] == ["a", "b"]
    assert "dropped 3 events naming 2 item ids" in capsys.readouterr().out

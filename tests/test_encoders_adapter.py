"""The image->text adapter, the class-name bridge and fusion, on real emoji renders and real text encoders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.adapter import AdapterConfig, ImageTextAdapter
from encoders.adapter_training import catalog_image_features, train_adapter
from encoders.augment import augment, render_views
from encoders.base import ImageDecodeError
from encoders.bridge import ClassNameBridge
from encoders.multimodal import ModalityMix, MultimodalEncoder
from encoders.image import load_image_encoder

LANGS = ("en", "de", "ja", "ru")


@pytest.fixture(scope="module")
def text_encoder():
    from encoders.text import load_text_encoder

    return load_text_encoder("use-m3")


@pytest.fixture(scope="module")
def image_encoder():
    return load_image_encoder("efficientnet-lite0")


@pytest.fixture(scope="module")
def catalog():
    """120 real emoji-market products (seeded choice): image path + titles in 4 languages."""
    from mmrec import datasets
    from mmrec.embedding.image_adapter import catalog_products

    items = datasets.load("emoji-market").items.filter(lambda r: r["language"] in LANGS)
    products = catalog_products(items)
    if not products:
        pytest.skip("emoji-market has no images here (Debian fonts-noto-color-emoji missing)")
    rng = np.random.default_rng(0)
    return [products[i] for i in sorted(rng.choice(len(products), 120, replace=False))]


@pytest.fixture(scope="module")
def lang_titles(catalog):
    """product key -> {language: title} (catalog products keep each distinct title once)."""
    from mmrec import datasets

    keys = {p.key for p in catalog}
    out: dict[str, dict[str, str]] = {}
    for row in datasets.load("emoji-market").items:
        if row["product_id"] in keys and row["language"] in LANGS:
            out.setdefault(row["product_id"], {})[row["language"]] = row["title"]
    return out


@pytest.fixture(scope="module")
def views(catalog, image_encoder, tmp_path_factory):
    return catalog_image_features(catalog, image_encoder, augment_views=1, seed=0,
                                  cache_dir=tmp_path_factory.mktemp("views"), progress=False)


@pytest.fixture(scope="module")
def trained(catalog, views, text_encoder):
    """An adapter trained on the first 90 products; the last 30 are held out."""
    titles = [t for p in catalog[:90] for t in p.titles]
    owner = np.array([i for i, p in enumerate(catalog[:90]) for _ in p.titles])
    vmask = views["view_product"] < 90
    orig = views["is_original"] & vmask
    adapter = train_adapter(views["features"][vmask], views["view_product"][vmask], text_encoder.encode(titles), owner,
                            image_encoder="efficientnet-lite0", text_encoder=text_encoder.name,
                            config=AdapterConfig(steps=200, augment_views=1), descriptors=views["descriptors"][orig],
                            descriptor_product=views["view_product"][orig], progress=False)
    return adapter


def test_views_are_cached_and_seeded(catalog, image_encoder, views, tmp_path):
    assert views["features"].shape == (240, 1280) and views["descriptors"].shape[0] == 240
    assert views["is_original"].sum() == 120 and views["ok"].all()
    a, _ = render_views([Image.open(catalog[0].image)], 2, seed=7)
    b, _ = render_views([Image.open(catalog[0].image)], 2, seed=7)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[1]), np.asarray(a[2]))  # two different random views
    # a second call with the same images hits the cache file (no image is decoded by the encoder)
    first = catalog_image_features(catalog[:3], image_encoder, augment_views=0, seed=0, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("views-*.npz"))) == 1

    class Exploding:
        name = image_encoder.name

        def encode_full(self, *_a, **_k):
            raise AssertionError("cache miss")

    again = catalog_image_features(catalog[:3], Exploding(), augment_views=0, seed=0, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(first["features"], again["features"])


def test_adapter_maps_into_text_space_and_ranks_held_out_images(catalog, views, trained, text_encoder, lang_titles):
    assert trained.out_dim == text_encoder.dim and trained.in_dim == 1280 and trained.has_memory
    rows = np.flatnonzero(views["is_original"])
    held = np.arange(90, 120)
    feats, descs = views["features"][rows][held], views["descriptors"][rows][held]
    for vecs in (trained.transform(feats), trained.recall(descs), trained.to_text_space(feats, descs)):
        assert vecs.shape == (30, text_encoder.dim)
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    images = trained.to_text_space(feats, descs)
    recalls = []
    for lang in LANGS:
        queries = text_encoder.encode([lang_titles[catalog[i].key][lang] for i in held])
        sim = queries @ images.T
        rank = (sim > np.diag(sim)[:, None]).sum(1)
        recalls.append((rank < 5).mean())
    # random would find the right image in the top 5 of 30 for 1/6 of the queries
    assert np.mean(recalls) > 2 * 5 / 30, recalls


def test_save_load_roundtrip_and_compatibility(trained, views, tmp_path):
    path = trained.save(tmp_path / "adapter")
    assert path.suffix == ".pt" and path.with_suffix(".json").exists()
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["text_encoder"] == "use-m3" and info["config"]["steps"] == 200 and info["memory_size"] == 90
    loaded = ImageTextAdapter.load(tmp_path / "adapter.json")
    feats, descs = views["features"][:5], views["descriptors"][:5]
    np.testing.assert_allclose(loaded.transform(feats), trained.transform(feats), atol=1e-6)
    np.testing.assert_allclose(loaded.recall(descs), trained.recall(descs), atol=1e-6)
    with pytest.raises(ValueError, match="retrain"):
        loaded.check_compatible(text_encoder="e5-small")
    with pytest.raises(ValueError, match="expects"):
        loaded.transform(np.zeros((2, 7), np.float32))
    with pytest.raises(FileNotFoundError):
        ImageTextAdapter.load(tmp_path / "missing")


def test_training_is_reproducible(views, text_encoder, catalog):
    titles = [t for p in catalog[:20] for t in p.titles]
    owner = np.array([i for i, p in enumerate(catalog[:20]) for _ in p.titles])
    vmask = views["view_product"] < 20
    tv = text_encoder.encode(titles)
    runs = [train_adapter(views["features"][vmask], views["view_product"][vmask], tv, owner, image_encoder="e",
                          text_encoder="t", config=AdapterConfig(steps=20, seed=3), progress=False) for _ in range(2)]
    np.testing.assert_allclose(runs[0].transform(views["features"][:4]), runs[1].transform(views["features"][:4]),
                               atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 products"):
        train_adapter(views["features"][:2], np.array([0, 0]), tv[:2], np.array([0, 0]), image_encoder="e",
                      text_encoder="t", progress=False)


def test_bridge_puts_a_shirt_near_shirt_words(image_encoder, text_encoder, catalog):
    shirt = next(p for p in catalog if p.titles[0] in ("t-shirt", "shirt")) if any(
        p.titles[0] in ("t-shirt", "shirt") for p in catalog) else None
    if shirt is None:
        from mmrec import datasets

        row = next(r for r in datasets.load("emoji-market").items if r["title"] == "t-shirt")
        image = row["image_path"]
    else:
        image = shirt.image
    bridge = ClassNameBridge(text_encoder, image_encoder.class_names())
    vec = bridge.transform(image_encoder.encode_full([image]).probs)[0]
    words = text_encoder.encode(["shirt", "banana", "guitar", "car"])
    assert np.argmax(words @ vec) == 0
    with pytest.raises(ValueError, match="class probabilities"):
        bridge.transform(np.ones((1, 10)))


def test_fusion_without_images_with_bad_images_and_image_only(trained, text_encoder, image_encoder, catalog):
    enc = MultimodalEncoder(text_encoder, image_encoder, trained, ModalityMix())
    good = catalog[100].image
    titles = [catalog[100].titles[0], "red apple", catalog[101].titles[-1], None]
    images = [good, None, b"definitely not an image", catalog[102].image]
    out = enc.encode(titles, images, errors="skip")
    assert out["has_image"].tolist() == [True, False, False, True]
    assert set(out["image_errors"]) == {2} and "image #2" in out["image_errors"][2]
    assert np.isnan(out["image"][[1, 2]]).all() and np.isnan(out["image_features"][[1, 2]]).all()
    assert np.isnan(out["text"][3]).all()  # no title
    np.testing.assert_allclose(out["fused"][1], out["text"][1], atol=1e-6)  # text only
    np.testing.assert_allclose(out["fused"][2], out["text"][2], atol=1e-6)  # bad image -> text only
    np.testing.assert_allclose(out["fused"][3], out["image"][3], atol=1e-6)  # image only
    both = ModalityMix().text_weight * out["text"][0] + ModalityMix().image_weight * out["image"][0]
    np.testing.assert_allclose(out["fused"][0], both / np.linalg.norm(both), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["fused"], axis=1), 1.0, atol=1e-5)
    with pytest.raises(ImageDecodeError, match="image #2"):
        enc.encode(titles, images)
    with pytest.raises(ValueError, match="neither a title nor"):
        enc.encode([None], [None])
    text_only = MultimodalEncoder(text_encoder).encode(["cup of tea"])
    assert not text_only["has_image"].any() and np.isfinite(text_only["fused"]).all()


def test_a_product_image_listed_many_times_is_encoded_once(trained, text_encoder, image_encoder, catalog):
    # emoji-market lists each product in 14 languages with one picture: the backbone must see it once
    enc = MultimodalEncoder(text_encoder, image_encoder, trained, ModalityMix())
    seen = []
    real = enc.image_vectors
    enc.image_vectors = lambda images, progress=False: (seen.append(len(images)), real(images))[1]
    a, b = catalog[100], catalog[101]
    titles = a.titles[:3] + b.titles[:2]
    out = enc.encode(titles, [a.image] * 3 + [b.image] * 2)
    assert seen == [2]  # two distinct pictures in one backbone batch
    np.testing.assert_array_equal(out["image"][0], out["image"][2])
    again = enc.encode([a.titles[0]], [a.image])  # seen before: served from the cache
    assert seen == [2]
    np.testing.assert_array_equal(again["image"][0], out["image"][0])
    fresh = MultimodalEncoder(text_encoder, image_encoder, trained, ModalityMix()).encode(titles[3:], [b.image] * 2)
    np.testing.assert_allclose(fresh["image"][0], out["image"][3], atol=1e-5)  # same as encoding it alone


def test_fusion_checks_adapter_matches_encoders(trained, image_encoder):
    from encoders.text import load_text_encoder

    other = load_text_encoder("minilm")
    with pytest.raises(ValueError, match="retrain"):
        MultimodalEncoder(other, image_encoder, trained)
    bridge_only = MultimodalEncoder(other, image_encoder, None, ModalityMix(bridge_weight=1.0))
    out = bridge_only.encode(["mug"], [Image.new("RGB", (64, 64), "white")])
    assert out["image"].shape == (1, other.dim) and np.isfinite(out["image"]).all()


def test_open_clip_native_space_needs_no_adapter():
    clip = load_image_encoder("open_clip:ViT-S-32")
    enc = MultimodalEncoder(clip.text_encoder(), clip)
    assert enc.native and enc.dim == clip.dim
    out = enc.encode(["a cup"], [Image.new("RGB", (40, 40), "red")])
    np.testing.assert_allclose(out["image"], clip.encode([Image.new("RGB", (40, 40), "red")]), atol=1e-5)


def test_augment_keeps_size_ratio_and_is_rgb():
    rng = np.random.default_rng(0)
    img = Image.new("RGB", (128, 128), "white")
    img.paste((200, 30, 30), (40, 40, 90, 90))
    views = [augment(img, rng) for _ in range(5)]
    assert all(v.mode == "RGB" and v.size[0] == v.size[1] for v in views)


def test_cli_train_adapter_on_a_small_catalog_file(tmp_path, catalog, capsys):
    from mmrec.cli import main

    rows = [{"item_id": f"{p.key}:{i}", "product_id": p.key, "title": t, "image_path": str(p.image)}
            for p in catalog[:6] for i, t in enumerate(p.titles)]
    file = tmp_path / "catalog.jsonl"
    file.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    out = tmp_path / "mine"
    assert main(["train-adapter", "--catalog", str(file), "--text-encoder", "use-m3", "--out", str(out),
                 "--steps", "5", "--views", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["products"] == 6 and Path(report["saved"]).exists()
    adapter = ImageTextAdapter.load(out)
    assert adapter.text_encoder == "use-m3" and adapter.meta["memory_products"] == 6
    assert main(["train-adapter", "--catalog", str(tmp_path / "nope.jsonl"), "--text-encoder", "use-m3",
                 "--out", str(out)]) == 2
    assert "neither a built-in dataset" in capsys.readouterr().err

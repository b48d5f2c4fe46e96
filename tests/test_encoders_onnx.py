"""ONNX Runtime paths (encoders.onnx): vectors close to torch's, exports cached and keyed by their source,
offline (everything is exported from local files), threads fixed per session, specs routed, bad input refused.

Thresholds (cosine to the torch vectors, per text or image):
  e5 fp32: min >= 0.9999        e5 int8 (dynamic, per-channel): min >= 0.98, mean >= 0.995
  EfficientNet-Lite0 fp32: features and descriptors min >= 0.9999, probs within 1e-4, same top-1 class
  EfficientNet-Lite0 int8: shapes and meaning only (dynamic int8 convolutions are far from fp32; see the module)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from encoders.image import load_image_encoder, open_image
from encoders.text import SentenceTransformerEncoder, TextEncoderError, load_text_encoder

SKLEARN_IMAGES = Path(__import__("sklearn").__file__).parent / "datasets" / "images"
TEXTS = ["red apple", "manzana roja", "ノートパソコン", "کفش ورزشی", "Стиральная машина для белья", "🍕", "",
         "  padded with spaces  ", "A long product description: waterproof hiking boots with a rubber sole. " * 3]
NAMES = {  # one product in several languages per row (a cross-lingual sanity check that int8 keeps)
    "t-shirt": ["t-shirt", "camiseta", "T-Shirt", "футболка", "Tシャツ", "تی‌شرت"],
    "pizza": ["pizza", "pizza", "Pizza", "пицца", "ピザ", "پیتزا"],
    "umbrella": ["umbrella", "paraguas", "Regenschirm", "зонт", "傘", "چتر"],
    "key": ["key", "llave", "Schlüssel", "ключ", "鍵", "کلید"],
}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


# --------------------------------------------------------------------------------- a tiny model, fast


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A 2-layer random XLM-R (e5's tokenizer, mean pooling, e5's prompts) written like the e5 rebuild."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    from encoders.e5 import rebuilt_e5_dir, save_model_dir

    torch.manual_seed(0)
    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(rebuilt_e5_dir() / "tokenizer.json"), model_max_length=64)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2)
    model = XLMRobertaModel(config, add_pooling_layer=False).eval()
    return save_model_dir(model, tokenizer, tmp_path_factory.mktemp("tiny") / "tiny-e5",
                          prompts={"query": "query: ", "passage": "passage: "}, info_file="tiny.json", info={})


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    """One export cache for the tiny-model tests (each export costs seconds on a busy 2-core box)."""
    return tmp_path_factory.mktemp("onnx-cache")


def test_tiny_export_matches_torch_in_both_kinds(tiny_dir, tiny_cache):
    from encoders.onnx import OnnxTextEncoder

    torch_enc = SentenceTransformerEncoder(str(tiny_dir))
    onnx_enc = OnnxTextEncoder(tiny_dir, cache_dir=tiny_cache, batch_size=4)  # several length-sorted batches
    assert onnx_enc.dim == torch_enc.dim == 32 and onnx_enc.name == "tiny-e5:onnx"
    long = ["word " * 200]  # past max_seq_length (64): truncated alike
    for kind in ("passage", "query"):
        got, want = onnx_enc.encode(TEXTS + long, kind=kind), torch_enc.encode(TEXTS + long, kind=kind)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert cosines(got, want).min() >= 0.9999, cosines(got, want)
    assert onnx_enc.encode([]).shape == (0, 32)
    with pytest.raises(TypeError):
        onnx_enc.encode("one string")
    with pytest.raises(ValueError):
        onnx_enc.encode(["x"], kind="document")


def test_tiny_export_is_cached_and_keyed_by_the_source(tiny_dir, tiny_cache, monkeypatch):
    import encoders.onnx as onnx_mod

    first = onnx_mod.OnnxTextEncoder(tiny_dir, precision="int8", cache_dir=tiny_cache)
    folder = first.model_file.parent
    assert sorted(p.name for p in folder.iterdir()) == ["model-int8.onnx", "model.onnx", "source.json"]  # no temp files
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although cached")

    monkeypatch.setattr(onnx_mod, "export_text_model", no_export)
    monkeypatch.setattr(onnx_mod, "quantize_int8", no_export)
    again = onnx_mod.OnnxTextEncoder(tiny_dir, precision="int8", cache_dir=tiny_cache)
    assert again.model_file == first.model_file
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    np.testing.assert_array_equal(again.encode(TEXTS), first.encode(TEXTS))
    # a rewritten source (e.g. re-tuned into the same directory) gets a new export, never the stale one
    weights = tiny_dir / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert onnx_mod.export_dir("tiny-e5", tiny_dir, tiny_cache) != folder


def test_a_new_export_removes_the_stale_ones_of_its_source(tiny_dir, tiny_cache, tmp_path):
    """Re-tuning into the same directory exports anew and removes the old export (hundreds of MB for e5);
    exports of another source or for another onnxruntime, and folders without a source record, stay."""
    import shutil

    from encoders.onnx import OnnxTextEncoder

    other_dir = shutil.copytree(tiny_dir, tmp_path / "other-e5")
    other = OnnxTextEncoder(other_dir, cache_dir=tiny_cache).model_file.parent
    old = OnnxTextEncoder(tiny_dir, cache_dir=tiny_cache).model_file.parent
    legacy = tiny_cache / "onnx" / "tiny-e5-000000000000"
    legacy.mkdir()
    other_runtime = tiny_cache / "onnx" / "tiny-e5-111111111111"  # the same model exported by another onnxruntime
    other_runtime.mkdir()
    record = json.loads((old / "source.json").read_text())
    (other_runtime / "source.json").write_text(json.dumps({**record, "onnxruntime": "0.1"}))
    weights = tiny_dir / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 2_000_000_000))
    new = OnnxTextEncoder(tiny_dir, cache_dir=tiny_cache).model_file.parent
    assert new != old and new.exists() and not old.exists()
    assert other.exists() and legacy.exists() and other_runtime.exists()


def test_threads_are_fixed_per_session(tiny_dir, tiny_cache):
    from encoders.onnx import OnnxTextEncoder

    enc = OnnxTextEncoder(tiny_dir, cache_dir=tiny_cache, threads=1)
    session = enc.session
    enc.set_threads(1)  # what BatchEmbedder does on every embed(): nothing changes
    assert enc.session is session
    enc.set_threads(2)
    assert enc.session is not session and enc.threads == 2
    assert enc.session.get_session_options().intra_op_num_threads == 2


def test_only_mean_pooling_models_are_exported(tiny_dir, tmp_path):
    import shutil

    from encoders.onnx import OnnxTextEncoder

    cls_dir = tmp_path / "cls"
    shutil.copytree(tiny_dir, cls_dir)
    pooling = cls_dir / "1_Pooling" / "config.json"
    cfg = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**cfg, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    with pytest.raises(TextEncoderError, match="mean pooling"):
        OnnxTextEncoder(cls_dir, cache_dir=tmp_path)


def test_specs_route_and_fail_clearly(tiny_dir, tiny_cache, tmp_path):
    enc = load_text_encoder(f"{tiny_dir}:onnx-int8", cache_dir=tiny_cache, reuse=False)
    assert enc.name == "tiny-e5:onnx-int8" and enc.precision == "int8"
    with pytest.raises(TextEncoderError, match="local model directory"):
        load_text_encoder("some-org/some-model:onnx", reuse=False)
    with pytest.raises(TextEncoderError, match="local model directory"):
        load_text_encoder(str(tmp_path / "missing") + ":onnx", reuse=False)


def test_int8_queries_do_not_depend_on_their_batch(tiny_dir, tiny_cache):
    """Dynamic int8 scales activations per call: passages may move with their batch-mates, but a query is
    encoded alone, so a /search answer never depends on concurrent queries."""
    enc = load_text_encoder(f"{tiny_dir}:onnx-int8", cache_dir=tiny_cache, reuse=False)
    texts = ["banana", "केला", "a much longer query about red waterproof hiking boots for winter", "Gummistiefel"]
    together = enc.encode(texts, kind="query")
    alone = np.concatenate([enc.encode([t], kind="query") for t in texts])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- the real models


@pytest.fixture(scope="module")
def e5_paths():
    return load_text_encoder("e5-small"), load_text_encoder("e5-small:onnx"), load_text_encoder("e5-small:onnx-int8")


def test_e5_onnx_vectors_are_close_to_torch(e5_paths):
    torch_enc, fp32, int8 = e5_paths
    assert (fp32.name, int8.name) == ("e5-small:onnx", "e5-small:onnx-int8")
    assert len({torch_enc.version, fp32.version, int8.version}) == 3  # caches never mix their vectors
    texts = TEXTS + [n for row in NAMES.values() for n in row]
    for kind in ("passage", "query"):
        want = torch_enc.encode(texts, kind=kind)
        assert cosines(fp32.encode(texts, kind=kind), want).min() >= 0.9999
        c = cosines(int8.encode(texts, kind=kind), want)
        assert c.min() >= 0.98 and c.mean() >= 0.995, c


def test_e5_int8_keeps_cross_lingual_matches(e5_paths):
    """Each product's name in one language finds the same product among the others, as with torch."""
    def accuracy(enc) -> float:
        vecs = enc.encode([n for row in NAMES.values() for n in row]).reshape(len(NAMES), -1, enc.dim)
        hits = [(vecs[:, a] @ vecs[:, b].T).argmax(1) == np.arange(len(NAMES))
                for a in range(vecs.shape[1]) for b in range(vecs.shape[1]) if a != b]
        return float(np.mean(hits))

    torch_enc, _, int8 = e5_paths
    assert accuracy(int8) >= accuracy(torch_enc) - 0.05


def test_tuned_directory_spec_keeps_its_name(tmp_path):
    """A tuned e5 directory (tune.json) runs under its tuned name; the export lands in the given cache."""
    from encoders.e5 import rebuilt_e5_dir

    tuned = tmp_path / "my-tuned"
    tuned.mkdir()
    for f in rebuilt_e5_dir().iterdir():  # links, not copies: the weights are 470 MB
        if f.is_file():
            (tuned / f.name).symlink_to(f)
        else:
            (tuned / f.name).symlink_to(f, target_is_directory=True)
    (tuned / "tune.json").write_text(json.dumps({"name": "e5-small-tuned[test]", "digest": "abc", "version": "v-test"}))
    enc = load_text_encoder(f"{tuned}:onnx", cache_dir=tmp_path / "cache", reuse=False)
    assert enc.name == "e5-small-tuned[test]:onnx" and enc.version.startswith("e5-small-tuned[test]/v-test")
    assert enc.model_file.is_relative_to(tmp_path / "cache" / "onnx")


@pytest.fixture(scope="module")
def photos() -> list:
    from PIL import Image

    images = [open_image(str(SKLEARN_IMAGES / "china.jpg")), open_image(str(SKLEARN_IMAGES / "flower.jpg"))]
    rng = np.random.default_rng(0)
    images += [Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)),
               Image.new("RGB", (40, 300), (200, 30, 30))]
    return images


def test_efficientnet_onnx_matches_encode_full(photos):
    torch_enc = load_image_encoder("efficientnet-lite0")
    fp32 = load_image_encoder("efficientnet-lite0:onnx", batch_size=3)
    assert fp32.name == "efficientnet-lite0:onnx" and fp32.class_names() == torch_enc.class_names()
    want, got = torch_enc.encode_full(photos), fp32.encode_full(photos)
    for field in ("features", "probs", "descriptors"):
        assert getattr(got, field).shape == getattr(want, field).shape
    assert cosines(got.features, want.features).min() >= 0.9999
    assert cosines(got.descriptors, want.descriptors).min() >= 0.9999
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-4)
    assert (got.probs.argmax(1) == want.probs.argmax(1)).all()
    np.testing.assert_allclose(np.linalg.norm(got.features, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(fp32.encode(photos), got.features)


def test_efficientnet_int8_has_the_same_outputs_shape_and_meaning(photos):
    int8 = load_image_encoder("efficientnet-lite0:onnx-int8")
    out = int8.encode_full(photos[:2])
    assert int8.name == "efficientnet-lite0:onnx-int8"
    assert out.features.shape == (2, int8.dim) and out.descriptors.shape == (2, int8.descriptor_dim)
    np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(out.features, axis=1), 1.0, atol=1e-5)


def test_multimodal_encoder_runs_on_onnx_towers(e5_paths, photos):
    """The ONNX towers drop into MultimodalEncoder (bridge only here: no adapter training in a unit test)."""
    from encoders.multimodal import MultimodalEncoder

    _, _, int8 = e5_paths
    mm = MultimodalEncoder(int8, load_image_encoder("efficientnet-lite0:onnx"))
    out = mm.encode(["Chinese palace", "a flower"], photos[:2])
    assert out["fused"].shape == (2, 384) and out["has_image"].all()
    torch_mm = MultimodalEncoder(load_text_encoder("e5-small"), load_image_encoder("efficientnet-lite0"),
                                 bridge=mm.bridge)  # the identity never reads the bridge: skip its 1,000 encodes
    assert mm.identity() != torch_mm.identity()


# ------------------------------------------------------------------- backends of a text space, the defaults


@pytest.fixture(scope="module")
def tiny_space(tiny_dir, tmp_path_factory) -> Path:
    """A text space over the tiny e5 and USE, with a stand-in for USE and two projected-out directions."""
    from encoders.text import save_text_space

    rng = np.random.default_rng(0)
    directions = np.linalg.qr(rng.normal(size=(32 + 512, 2)))[0].T.astype(np.float32)
    return save_text_space(tmp_path_factory.mktemp("space") / "tiny-space", [(0.4, str(tiny_dir)), (0.6, "use-m3")],
                           stand_ins={1: (0, rng.normal(size=(32, 512)).astype(np.float32))},
                           directions=directions, info={"name": "tiny-space"})


def test_backend_suffixes_parse():
    from encoders.text import split_backend

    assert split_backend("e5-small:onnx-int8") == ("e5-small", "onnx-int8")
    assert split_backend("/m/space:ONNX") == ("/m/space", "onnx")
    assert split_backend("/m/space:torch") == ("/m/space", "torch")
    assert split_backend("e5-small:int8") == ("e5-small:int8", None)  # torch's own int8, not a backend
    assert split_backend("open_clip:ViT-B-32") == ("open_clip:ViT-B-32", None)


def test_text_space_runs_its_e5_part_by_the_backend_it_is_given(tiny_space, tiny_cache):
    """SPACE:onnx / :onnx-int8 swap the e5 part only; :torch and the bare directory load it as saved; the
    stand-in and the directions are the saved ones in every case, and the vectors stay torch's."""
    from encoders.onnx import OnnxTextEncoder

    saved = load_text_encoder(str(tiny_space), cache_dir=tiny_cache, reuse=False)
    torch_twin = load_text_encoder(f"{tiny_space}:torch", cache_dir=tiny_cache, reuse=False)
    fp32 = load_text_encoder(f"{tiny_space}:onnx", cache_dir=tiny_cache, reuse=False)
    int8 = load_text_encoder(f"{tiny_space}:onnx-int8", cache_dir=tiny_cache, reuse=False)
    assert isinstance(saved.parts[0][1], SentenceTransformerEncoder)
    assert isinstance(torch_twin.parts[0][1], SentenceTransformerEncoder)
    assert isinstance(fp32.parts[0][1], OnnxTextEncoder) and fp32.parts[0][1].precision == "fp32"
    assert isinstance(int8.parts[0][1], OnnxTextEncoder) and int8.parts[0][1].precision == "int8"
    for enc in (torch_twin, fp32, int8):
        assert enc.parts[1][1].name == "use-m3" and [w for w, _ in enc.parts] == [w for w, _ in saved.parts]
        np.testing.assert_array_equal(enc.stand_ins[1][1], saved.stand_ins[1][1])
        np.testing.assert_array_equal(enc.directions, saved.directions)
    assert saved.version == torch_twin.version and len({saved.version, fp32.version, int8.version}) == 3
    texts = TEXTS + [n for row in NAMES.values() for n in row]  # Persian rows take the stand-in
    want = saved.encode(texts)
    assert cosines(fp32.encode(texts), want).min() >= 0.9999
    with pytest.raises(TextEncoderError, match="backend"):
        from encoders.text import load_text_space

        load_text_space(tiny_space, backend="onnx-fp16")


def test_default_specs_resolve_to_the_onnx_int8_space_and_its_torch_twin():
    from mmrec.embedding.text_model import DEFAULT_BACKEND, resolve_text_spec

    assert DEFAULT_BACKEND == "onnx-int8"
    space = resolve_text_spec("e5-use-aligned:torch")  # the directory as saved (builds the space on first use)
    assert Path(space).is_dir() and not space.endswith((":torch", ":onnx", ":onnx-int8"))
    assert resolve_text_spec("default") == resolve_text_spec("e5-use-aligned") == f"{space}:onnx-int8"
    assert resolve_text_spec("default:torch") == space
    assert resolve_text_spec("E5-use-aligned:onnx") == f"{space}:onnx"
    assert resolve_text_spec("0.5*e5-use-aligned:torch+0.5*use-m3") == f"0.5*{space}+0.5*use-m3"
    assert not resolve_text_spec("e5-small-tuned").endswith("onnx-int8")  # the tuned e5 alone stays torch
    from mmrec.errors import UserError

    with pytest.raises(UserError, match="unknown backend 'fp16'"):
        resolve_text_spec("default:fp16")


def test_default_text_space_on_onnx_int8_stays_close_to_its_torch_twin():
    """The default runs the tuned e5 through ONNX int8 inside the same fitted space (same stand-in, same
    directions); per text its vectors stay close to the torch twin's, Persian (stand-in) rows included."""
    from encoders.onnx import OnnxTextEncoder
    from mmrec.embedding.text_model import load_text_encoder as load_default

    default, twin = load_default("default"), load_default("default:torch")
    assert isinstance(default.parts[0][1], OnnxTextEncoder) and default.parts[0][1].precision == "int8"
    assert isinstance(twin.parts[0][1], SentenceTransformerEncoder)
    np.testing.assert_array_equal(default.directions, twin.directions)
    texts = TEXTS[:-1] + [n for row in NAMES.values() for n in row]
    for kind in ("passage", "query"):
        c = cosines(default.encode(texts, kind=kind), twin.encode(texts, kind=kind))
        assert c.min() >= 0.97 and c.mean() >= 0.99, c


def test_default_image_encoder_is_onnx_fp32_and_shares_torch_adapters():
    from encoders.adapter import AdapterConfig
    from encoders.adapter_training import train_adapter
    from encoders.image import DEFAULT_IMAGE_ENCODER, EfficientNetLiteEncoder
    from encoders.multimodal import MultimodalEncoder
    from mmrec.embedding.item_encoder import EncoderConfig

    assert EncoderConfig().image_encoder == DEFAULT_IMAGE_ENCODER == "efficientnet-lite0:onnx"
    default = load_image_encoder("default")
    assert default.name == "efficientnet-lite0:onnx" and default.weights_name == "efficientnet-lite0"
    torch_enc = load_image_encoder("efficientnet-lite0:torch")
    assert type(torch_enc) is EfficientNetLiteEncoder and torch_enc.weights_name == torch_enc.name
    int8 = load_image_encoder("efficientnet-lite0:onnx-int8")
    assert int8.weights_name == "efficientnet-lite0:onnx-int8"  # its features are not torch's
    assert load_image_encoder("efficientnet-lite0:ONNX").name == default.name  # suffixes ignore case, as text's
    from encoders.image import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="lite0:onnx-fp16"):  # an unknown suffix: one line
        load_image_encoder("efficientnet-lite0:onnx-fp16")
    use = load_text_encoder("use-m3")
    rng = np.random.default_rng(0)
    adapter = train_adapter(rng.normal(size=(8, 1280)).astype(np.float32), np.arange(8),
                            use.encode([f"product {i}" for i in range(8)]), np.arange(8),
                            image_encoder=torch_enc.weights_name, text_encoder=use.name,
                            config=AdapterConfig(steps=2, memory=False), progress=False)
    MultimodalEncoder(use, default, adapter)  # trained on torch features: serves the ONNX fp32 twin
    with pytest.raises(ValueError, match="retrain"):
        MultimodalEncoder(use, int8, adapter)


def test_default_adapter_paths_keep_the_whole_version():
    """Versions with dots ("use-m3/0.2.1") once lost their hash in Path.with_suffix: two text spaces on the
    same tuned e5 shared one cached adapter. Each (text version, image weights) now has its own file."""
    from types import SimpleNamespace

    from mmrec.embedding.image_adapter import default_adapter_path

    image = SimpleNamespace(name="efficientnet-lite0:onnx", weights_name="efficientnet-lite0")
    base = "0.4000*e5-small-tuned/rebuild1-79d4806c5b-0b16e14ce0:onnx-int8/export1+0.6000*use-m3/0.2.1|space:"
    a = default_adapter_path(SimpleNamespace(name="default", version=base + "aaaa"), image)
    b = default_adapter_path(SimpleNamespace(name="default", version=base + "bbbb"), image)
    assert a.with_suffix(".pt") != b.with_suffix(".pt") and a.with_suffix(".pt").name == a.name + ".pt"
    torch_image = SimpleNamespace(name="efficientnet-lite0", weights_name="efficientnet-lite0")
    assert default_adapter_path(SimpleNamespace(name="default", version=base + "aaaa"), torch_image) == a

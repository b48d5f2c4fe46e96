"""Image encoders on real photos and real emoji renders; decoding errors; open_clip plumbing (random weights)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.base import ImageDecodeError
from encoders.image import (EfficientNetLiteEncoder, ModelUnavailableError, OpenClipEncoder, load_image_encoder,
                            open_image)

SKLEARN_IMAGES = Path(__import__("sklearn").__file__).parent / "datasets" / "images"
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")


@pytest.fixture(scope="module")
def effnet() -> EfficientNetLiteEncoder:
    return load_image_encoder("efficientnet-lite0")


def render_emoji(char: str) -> Image.Image:
    """A real Noto Color Emoji render, transparent background (as a user's RGBA packshot would be)."""
    from PIL import ImageDraw, ImageFont

    if not EMOJI_FONT.exists():
        pytest.skip("Debian fonts-noto-color-emoji is not installed (make setup installs it)")
    font = ImageFont.truetype(str(EMOJI_FONT), 109)
    canvas = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    return canvas.crop(canvas.getbbox())


def top_classes(encoder: EfficientNetLiteEncoder, images, k: int = 5) -> list[list[str]]:
    names = encoder.class_names()
    probs = encoder.encode_full(images).probs
    return [[names[i] for i in np.argsort(-p)[:k]] for p in probs]


def test_real_photos_are_recognised(effnet):
    china, flower = SKLEARN_IMAGES / "china.jpg", SKLEARN_IMAGES / "flower.jpg"
    tops = top_classes(effnet, [str(china), str(flower)])
    assert {"palace", "monastery", "bell cote", "pagoda", "castle"} & set(tops[0][:3]), tops[0]
    assert "daisy" in tops[1], tops[1]


def test_features_are_normalised_and_input_kinds_agree(effnet):
    path = SKLEARN_IMAGES / "flower.jpg"
    raw = path.read_bytes()
    vecs = effnet.encode([str(path), raw, Image.open(path), path])
    assert vecs.shape == (4, 1280) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vecs, np.repeat(vecs[:1], 4, axis=0), atol=1e-5)
    # different photos are different vectors
    other = effnet.encode([str(SKLEARN_IMAGES / "china.jpg")])[0]
    assert float(vecs[0] @ other) < 0.9


def test_emoji_render_transparent_background_is_white_and_classified(effnet):
    shirt = render_emoji("\U0001F455")  # t-shirt
    assert shirt.mode == "RGBA"
    on_white = Image.alpha_composite(Image.new("RGBA", shirt.size, (255, 255, 255, 255)), shirt).convert("RGB")
    a, b = effnet.encode([shirt, on_white])
    assert float(a @ b) > 0.999  # transparency composited on white, not black
    assert {"jersey", "sweatshirt", "T-shirt"} & set(top_classes(effnet, [shirt], k=3)[0])


def test_batch_size_does_not_change_vectors(effnet):
    images = [render_emoji(c) for c in "\U0001F34E\U0001F455\U0001F3B8"]
    one = EfficientNetLiteEncoder(batch_size=1).encode(images)
    np.testing.assert_allclose(one, effnet.encode(images), atol=1e-4)


def test_corrupt_and_missing_images_raise_naming_the_item(effnet, tmp_path):
    good = (SKLEARN_IMAGES / "flower.jpg").read_bytes()
    with pytest.raises(ImageDecodeError, match=r"image #1 \(9 bytes\)"):
        effnet.encode([good, b"not a png"])
    truncated = good[: len(good) // 3]
    with pytest.raises(ImageDecodeError, match="image #0"):
        effnet.encode([truncated])
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageDecodeError, match="nope.png"):
        open_image(str(missing))
    with pytest.raises(ImageDecodeError):
        open_image(12345)  # type: ignore[arg-type]
    # PNG header then garbage
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    with pytest.raises(ImageDecodeError):
        open_image(buf.getvalue()[:40] + b"\x00" * 40)


def test_unknown_specs_fail_clearly():
    with pytest.raises(ModelUnavailableError, match="unknown image encoder"):
        load_image_encoder("resnet-9000")
    with pytest.raises(ModelUnavailableError, match="unknown open_clip model"):
        load_image_encoder("open_clip:NoSuchModel")
    with pytest.raises(ModelUnavailableError, match="no weights|unknown"):
        load_image_encoder("efficientnet-lite7")


# ------------------------------------------------------------------------------- open_clip (plumbing only)


def test_open_clip_random_model_plumbing_and_checkpoint_roundtrip(tmp_path):
    """Randomly initialised ViT-S-32: shapes, normalisation, shared text tower, checkpoint loading.
    Random weights: nothing here says anything about retrieval quality."""
    import torch

    enc = load_image_encoder("open_clip:ViT-S-32")
    assert isinstance(enc, OpenClipEncoder) and enc.name == "open_clip:ViT-S-32"
    images = [SKLEARN_IMAGES / "flower.jpg", (SKLEARN_IMAGES / "china.jpg").read_bytes()]
    img = enc.encode([str(images[0]), images[1]])
    text_enc = enc.text_encoder()
    txt = text_enc.encode(["a flower", "ein Palast", "宫殿"])
    assert img.shape == (2, enc.dim) and txt.shape == (3, enc.dim) and text_enc.dim == enc.dim
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ImageDecodeError, match="image #0"):
        enc.encode([b"\x89PNG broken"])

    ckpt = tmp_path / "vit-s-32.pt"
    torch.save(enc.model.state_dict(), ckpt)
    again = load_image_encoder(f"open_clip:ViT-S-32:{ckpt}")
    assert again.model is not enc.model
    np.testing.assert_allclose(again.encode([str(images[0])]), img[:1], atol=1e-5)
    np.testing.assert_allclose(again.text_encoder().encode(["a flower"]), txt[:1], atol=1e-5)


def test_open_clip_pretrained_tag_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as err:
        load_image_encoder("open_clip:ViT-S-32:no-such-tag")
    assert "\n" not in str(err.value) and "no-such-tag" in str(err.value)
    with pytest.raises(ModelUnavailableError) as err:  # a real tag whose weights are not on this machine
        load_image_encoder("open_clip:RN50:openai")
    message = str(err.value)
    assert "\n" not in message and "could not be loaded" in message and "checkpoint" in message

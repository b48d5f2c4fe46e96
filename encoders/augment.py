"""Augmented views of a product image: what stands in for the several photos a real catalog would have, when
an image->text adapter is trained on one packshot per product.

Pure PIL driven by a numpy Generator, so a seed reproduces the same views on any machine.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random view of a packshot-like RGB image: background, zoom/shift, rotation, colour.

    No mirroring and only small hue shifts: direction and colour tell products apart (chart up vs down,
    green vs red apple).

    Pure PIL driven by a numpy Generator, so a seed reproduces the same views on any machine.
    """
    image = image.convert("RGB")
    w, h = image.size
    if rng.random() < 0.5:  # new background: flood the border-connected near-white region from the corners
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        image = image.copy()
        for xy in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)):
            if min(image.getpixel(xy)) > 235:
                ImageDraw.floodfill(image, xy, colour, thresh=24)
    background = image.getpixel((0, 0))
    angle = float(rng.uniform(-25, 25))
    image = image.rotate(angle, resample=Image.BICUBIC, expand=False, fillcolor=background)
    scale = float(rng.uniform(0.6, 1.25))  # < 1: object smaller on a larger canvas; > 1: zoomed-in crop
    side = max(8, round(max(w, h) / scale))
    canvas = Image.new("RGB", (side, side), background)
    dx = int(rng.integers(-abs(side - w) // 2 - 1, abs(side - w) // 2 + 1)) // 2
    dy = int(rng.integers(-abs(side - h) // 2 - 1, abs(side - h) // 2 + 1)) // 2
    canvas.paste(image, ((side - w) // 2 + dx, (side - h) // 2 + dy))
    image = canvas
    for enhancer, spread in ((ImageEnhance.Brightness, 0.3), (ImageEnhance.Contrast, 0.3), (ImageEnhance.Color, 0.5)):
        image = enhancer(image).enhance(float(rng.uniform(1 - spread, 1 + spread)))
    if rng.random() < 0.3:  # hue shift
        hsv = np.asarray(image.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(-10, 11))) % 256
        image = Image.fromarray(hsv, "HSV").convert("RGB")
    if rng.random() < 0.1:
        image = ImageOps.grayscale(image).convert("RGB")
    return image


def render_views(images: Sequence[Image.Image], n_augmented: int, seed: int = 0) -> tuple[list[Image.Image], np.ndarray]:
    """Each image as-is plus `n_augmented` random views; returns (views, index of the source image per view)."""
    rng = np.random.default_rng(seed)
    views, source = [], []
    for i, image in enumerate(images):
        views.append(image)
        source.append(i)
        for _ in range(n_augmented):
            views.append(augment(image, rng))
            source.append(i)
    return views, np.asarray(source)

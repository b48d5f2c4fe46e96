"""The small interfaces every encoder implements. Knows nothing of Qdrant, recommendation or mmrec."""
from __future__ import annotations

from typing import Protocol, Sequence, Union, runtime_checkable

import numpy as np
from PIL import Image

# An image given as a file path, raw encoded bytes, or an already decoded PIL image.
ImageInput = Union[str, bytes, "Image.Image"]


class TextEncoderError(RuntimeError):
    """A text encoder spec cannot be loaded; the message is one line and says why."""


class ImageDecodeError(ValueError):
    """One image could not be read or decoded; batch embedding counts these and goes on."""


@runtime_checkable
class TextEncoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str], *, kind: str = "passage") -> np.ndarray:
        """(n, dim) float32, L2-normalised. `kind` is "passage" for catalog text, "query" for searches
        (encoders that need prefixes, like e5, apply them; others ignore it)."""
        ...


@runtime_checkable
class ImageEncoder(Protocol):
    name: str
    dim: int

    def encode(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(n, dim) float32, L2-normalised. Raises ImageDecodeError naming the bad item."""
        ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); all-zero rows stay zero. Cosine search expects unit vectors."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode() takes a list of strings, not one string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, not str")
    return out

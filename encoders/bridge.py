"""The training-free image->text bridge: ImageNet class names embedded as text, weighted by the classifier.

An image whose classifier says 60% "jersey", 20% "sweatshirt" becomes 0.6*T("jersey") + 0.2*T("sweatshirt")
+ ... in the text encoder's space. It needs no training data, so it knows product TYPES the adapter never
saw (cold start), but it only knows the 1,000 ImageNet concepts: it is the baseline the adapter must beat,
and a safety net the default combines with the adapter.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from encoders.base import TextEncoder


class ClassNameBridge:
    """probs (n, C) -> normalised (n, D) vectors in `text_encoder`'s space."""

    def __init__(self, text_encoder: TextEncoder, class_names: Sequence[str] | None = None):
        if class_names is None:
            from encoders.image import imagenet_class_names

            class_names = imagenet_class_names()
        self.class_names = list(class_names)
        self.text_encoder = text_encoder.name
        self.class_vectors = np.asarray(text_encoder.encode(self.class_names, kind="passage"), dtype=np.float32)
        self.dim = self.class_vectors.shape[1]

    def transform(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim != 2 or probs.shape[1] != len(self.class_names):
            raise ValueError(f"bridge expects (n, {len(self.class_names)}) class probabilities, got {probs.shape}")
        out = probs @ self.class_vectors
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

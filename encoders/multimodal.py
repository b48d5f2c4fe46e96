"""One vector per item in the shared (text) space, plus the per-modality vectors it was made from.

`MultimodalEncoder.encode(titles, images)` returns
  "text"           (n, D) title vectors (NaN rows where an item has no title)
  "image"          (n, D) the image mapped into the text space (NaN rows where no usable image)
  "image_features" (n, d) the image backbone's own features (NaN rows likewise): visual look-alikes
  "fused"          (n, D) normalise(text_weight * text + image_weight * image), from whatever is present
  "has_image"      (n,) bool; "image_errors": {row: message} for images that could not be decoded.
The image->text mapping mixes three parts (weights in ModalityMix): the adapter's trained network, the
adapter's memory of its training catalog (what look-alike products are called), and the training-free
ImageNet class-name bridge. The bridge keeps product types the adapter never saw from collapsing onto the
nearest trained ones (measured with whole Unicode subgroups held out: bridge alone R@10 0.38, adapter
network alone 0.24, the default mix 0.43; bench/encoders_crossmodal.py).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from cachetools import LRUCache

from encoders.adapter import ImageTextAdapter
from encoders.base import ImageDecodeError, ImageEncoder, ImageInput, TextEncoder, l2_normalize
from encoders.bridge import ClassNameBridge
from encoders.image import OpenClipEncoder, OpenClipTextEncoder, open_image


def _pixel_digest(image: Any) -> bytes:
    """Identity of a decoded PIL image's content: mode, size and pixels."""
    h = hashlib.blake2b(f"{image.mode}{image.size}".encode(), digest_size=16)
    h.update(image.tobytes())
    return h.digest()


def _source_key(image: Any) -> Any:
    """What identifies an undecoded image within one call (a path or its bytes); None for a PIL image."""
    if isinstance(image, (str, os.PathLike)):
        return ("path", os.fspath(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(image))
    return None


@dataclass
class ModalityMix:
    """How an item's text and image vectors become one.

    text_weight, image_weight: weights of the two (L2-normalised) modality vectors in the fused sum; an item
      missing one modality gets the other alone. Text carries the precise product identity, the image the
      look; text counts double by default.
    network_weight, memory_weight, bridge_weight: how the image's text-space vector is made: the adapter's
      network output, its memory recall and the ImageNet class-name bridge, each normalised, summed with these
      weights, normalised (no adapter = bridge only). Chosen on emoji-market held-out folds.
    normalize: L2-normalise the fused vector (cosine search); False keeps the weighted sum's length.
    text_kind: "passage" (catalog text) or "query" for encoders that prefix (e5).
    """

    text_weight: float = 1.0
    image_weight: float = 0.5
    network_weight: float = 0.5
    memory_weight: float = 1.0
    bridge_weight: float = 1.0
    normalize: bool = True
    text_kind: str = "passage"

    def __post_init__(self) -> None:
        for name in ("text_weight", "image_weight", "network_weight", "memory_weight", "bridge_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"ModalityMix.{name} must be >= 0")
        if self.text_weight == 0 and self.image_weight == 0:
            raise ValueError("ModalityMix: text_weight and image_weight cannot both be 0")
        if self.text_kind not in ("passage", "query"):
            raise ValueError("ModalityMix.text_kind must be 'passage' or 'query'")

    def to_dict(self) -> dict:
        return asdict(self)


class MultimodalEncoder:
    """Text encoder + image encoder + image->text mapping + fusion, behind one `encode(titles, images)`.

    With an open_clip image encoder whose text tower IS the text encoder, images are already in the text
    space and need no adapter. With EfficientNet-Lite, an adapter trained for this exact (image encoder,
    text encoder) pair and/or the class-name bridge maps them.
    """

    IMAGE_CACHE_SIZE = 4096  # distinct images kept (~10 KB each with EfficientNet-Lite0 features)

    def __init__(self, text_encoder: TextEncoder, image_encoder: ImageEncoder | None = None,
                 adapter: ImageTextAdapter | None = None, mix: ModalityMix | None = None,
                 bridge: ClassNameBridge | None = None):
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.adapter = adapter
        self.mix = mix or ModalityMix()
        self.dim = int(text_encoder.dim)
        self.native = (isinstance(image_encoder, OpenClipEncoder) and isinstance(text_encoder, OpenClipTextEncoder)
                       and text_encoder._clip.model is image_encoder.model)
        self.bridge = None
        self._use_adapter = False
        # image pixels digest -> (vector, features): a product listed in 14 languages shares one image,
        # which is encoded once, not 14 times (the image backbone is most of the cost of embedding)
        self._image_cache: LRUCache[bytes, tuple[np.ndarray, np.ndarray]] = LRUCache(self.IMAGE_CACHE_SIZE)
        if image_encoder is None or self.native:
            return
        if adapter is not None:
            # by the weights behind the features: an adapter for torch EfficientNet serves its ONNX fp32 twin
            adapter.check_compatible(image_encoder=getattr(image_encoder, "weights_name", image_encoder.name),
                                     text_encoder=text_encoder.name)
            if adapter.out_dim != self.dim:
                raise ValueError(f"adapter outputs {adapter.out_dim}-d vectors, text encoder {text_encoder.name} "
                                 f"is {self.dim}-d")
        use_adapter = adapter is not None and (self.mix.network_weight > 0 or
                                               (self.mix.memory_weight > 0 and adapter.has_memory))
        self._use_adapter = use_adapter
        wants_bridge = self.mix.bridge_weight > 0 or not use_adapter
        if wants_bridge and hasattr(image_encoder, "encode_full"):
            self.bridge = bridge or ClassNameBridge(text_encoder, image_encoder.class_names())
        if not use_adapter and self.bridge is None:
            raise ValueError(f"{image_encoder.name} has no path into {text_encoder.name}'s space: give an adapter "
                             f"(mmrec train-adapter) or use an image encoder with ImageNet outputs")

    @property
    def name(self) -> str:
        img = self.image_encoder.name if self.image_encoder is not None else "none"
        return f"{self.text_encoder.name}|{img}"

    def describe(self) -> dict[str, Any]:
        """What produced the vectors (for caches and payloads): encoders, adapter provenance, fusion weights."""
        return {"text_encoder": self.text_encoder.name,
                "image_encoder": self.image_encoder.name if self.image_encoder is not None else None,
                "adapter": None if self.adapter is None else {
                    "image_encoder": self.adapter.image_encoder, "text_encoder": self.adapter.text_encoder,
                    "config": self.adapter.config.to_dict(), "catalog": self.adapter.meta.get("catalog")},
                "native_clip": self.native, "fusion": self.mix.to_dict()}

    def identity(self) -> str:
        """A hash of everything that determines the vectors: encoder versions, the adapter's weights, the
        mix. Equal identities give equal vectors for equal inputs (embedding caches key on it)."""
        desc = self.describe()
        desc["text_version"] = str(getattr(self.text_encoder, "version", None) or self.text_encoder.name)
        if self.image_encoder is not None:
            desc["image_version"] = str(getattr(self.image_encoder, "version", None) or self.image_encoder.name)
        if self.adapter is not None:
            desc["adapter_weights"] = self.adapter.weights_digest()
        return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------------ images
    def image_vectors(self, images: Sequence[ImageInput], *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Decoded images -> (vectors in the text space (n, D), backbone features (n, d))."""
        enc = self.image_encoder
        if enc is None:
            raise ValueError("this MultimodalEncoder has no image encoder")
        if self.native:
            feats = enc.encode(images, progress=progress)
            return feats, feats
        if hasattr(enc, "encode_full"):
            out = enc.encode_full(images, progress=progress)
            feats, probs, descs = out.features, out.probs, out.descriptors
        else:
            feats, probs, descs = enc.encode(images, progress=progress), None, None
        bridge = self.bridge.transform(probs) if self.bridge is not None and probs is not None else None
        cfg = self.mix
        if not self._use_adapter:
            return bridge, feats
        if descs is not None and self.adapter.has_memory and descs.shape[1] != self.adapter.key_dim:
            descs = None
        vec = self.adapter.to_text_space(feats, descs, bridge, network_weight=cfg.network_weight,
                                         memory_weight=cfg.memory_weight, bridge_weight=cfg.bridge_weight)
        return vec, feats

    def _cached_image_vectors(self, images: Sequence[Any], *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """`image_vectors` for decoded images, each distinct picture (by pixel digest) encoded once, and
        recently seen ones not again: identical pixels give identical vectors, so this changes no result."""
        keys = [_pixel_digest(img) for img in images]
        found = {k: self._image_cache[k] for k in dict.fromkeys(keys) if k in self._image_cache}
        todo = [k for k in dict.fromkeys(keys) if k not in found]
        if todo:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            vecs, feats = self.image_vectors([images[first[k]] for k in todo], progress=progress)
            for k, v, f in zip(todo, vecs, feats):
                found[k] = self._image_cache[k] = (v, f)
        return np.stack([found[k][0] for k in keys]), np.stack([found[k][1] for k in keys])

    # ---------------------------------------------------------------------------------------- encode
    def encode(self, titles: Sequence[str | None], images: Sequence[ImageInput | None] | None = None, *,
               errors: str = "raise", progress: bool = False) -> dict[str, Any]:
        """Vectors for n items (see module docstring). `errors="skip"` turns an undecodable image into
        "no image" (recorded in "image_errors") instead of raising ImageDecodeError."""
        if errors not in ("raise", "skip"):
            raise ValueError("errors must be 'raise' or 'skip'")
        n = len(titles)
        if images is None:
            images = [None] * n
        if len(images) != n:
            raise ValueError(f"{n} titles but {len(images)} images")
        cfg = self.mix
        text = np.full((n, self.dim), np.nan, dtype=np.float32)
        has_text = np.array([isinstance(t, str) and t.strip() != "" for t in titles])
        if has_text.any():
            idx = np.flatnonzero(has_text)
            text[idx] = self.text_encoder.encode([titles[i] for i in idx], kind=cfg.text_kind)

        decoded, errs = {}, {}
        if self.image_encoder is not None:
            by_source: dict[Any, Any] = {}  # a product listed in 14 languages: its one file is decoded once here
            for i, img in enumerate(images):
                if img is None:
                    continue
                source = _source_key(img)
                if source is not None and source in by_source:
                    decoded[i] = by_source[source]
                    continue
                try:
                    decoded[i] = open_image(img, index=i)
                    if source is not None:
                        by_source[source] = decoded[i]
                except ImageDecodeError as exc:
                    if errors == "raise":
                        raise
                    errs[i] = str(exc)
        has_image = np.zeros(n, dtype=bool)
        image = np.full((n, self.dim), np.nan, dtype=np.float32)
        feat_dim = getattr(self.image_encoder, "dim", 0) if self.image_encoder is not None else 0
        features = np.full((n, feat_dim), np.nan, dtype=np.float32)
        if decoded:
            idx = np.array(sorted(decoded))
            vecs, feats = self._cached_image_vectors([decoded[i] for i in idx], progress=progress)
            image[idx], features[idx] = vecs, feats
            has_image[idx] = True

        if not (has_text | has_image).all():
            missing = np.flatnonzero(~(has_text | has_image))
            if errors == "raise":
                raise ValueError(f"item #{int(missing[0])} has neither a title nor a usable image")
        fused = np.zeros((n, self.dim), dtype=np.float32)
        both = has_text & has_image
        fused[both] = cfg.text_weight * text[both] + cfg.image_weight * image[both]
        fused[has_text & ~has_image] = text[has_text & ~has_image]  # one modality: that modality alone
        fused[has_image & ~has_text] = image[has_image & ~has_text]
        if cfg.normalize:
            fused = l2_normalize(fused)
        fused[~(has_text | has_image)] = np.nan
        return {"text": text, "image": image, "image_features": features, "fused": fused,
                "has_image": has_image, "image_errors": errs}

"""The ONE item encoder: recipe + text encoder + image encoder + adapter + modality mix, through one cache.

Every path that turns items into vectors goes through `ItemEncoder` (`mmrec embed`, `POST /items`, the
catalog store, training vectors, the demo), and `load_item_encoder` is the one factory that knows every
spec: text encoders ("default", e5-small, use-m3, weighted combinations, any sentence-transformers name or
directory, a tuned e5), image encoders (EfficientNet-Lite, any open_clip model + pretrained tag or local
checkpoint, which then brings its own text tower), adapters ("default", a saved file, None).

`ItemEncoder.space` names the vector space: the recipe's id and the encoders' identity (versions, adapter
weights, mix). The store records it and checkpoints carry it, so serving a model on vectors from another
recipe or encoder is refused instead of silently ranking garbage.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from encoders.batch import BatchEmbedder, EmbedStats
from encoders.image import DEFAULT_IMAGE_ENCODER
from encoders.multimodal import ModalityMix, MultimodalEncoder
from mmrec.embedding.recipe import DEFAULT_FIELDS, ItemRecipe
from mmrec.errors import UserError

DEFAULT_IMAGE = DEFAULT_IMAGE_ENCODER  # EfficientNet-Lite0 run by ONNX Runtime (fp32: torch's features, faster)


@dataclass
class EncoderConfig:
    """What turns items into vectors.

    text_encoder: a text spec (see `mmrec.load_text_encoder`; "default" is the measured best, its tuned e5 run
      by ONNX Runtime in int8; "default:torch" runs that e5 with torch).
    image_encoder: an image spec ("default" = efficientnet-lite0:onnx, efficientnet-lite0 for torch,
      open_clip:MODEL[:TAG]) or None for text only.
    adapter: "default" (trained on emoji-market for these encoders into the cache on first use, ~1-2 min), a
      file from `mmrec train-adapter`, or None (images reach the text space through the training-free
      ImageNet class-name bridge only).
    mix: `encoders.ModalityMix` fields (text/image weights of the fused vector, adapter parts).
    recipe: the item fields that make the text (see `mmrec.embedding.recipe`).
    """

    text_encoder: Any = "default"
    image_encoder: Any = DEFAULT_IMAGE
    adapter: Any = "default"
    mix: dict[str, Any] = field(default_factory=dict)
    recipe: tuple[str, ...] = DEFAULT_FIELDS


class ItemEncoder:
    """Items in, named vectors out: {"text", "image", "fused"} (n, D) float32 (NaN rows where a modality is
    missing), "has_image" (n,), "image_errors" {row: message}. All calls go through the content-hash cache.

    Not re-entrant: torch models run one call at a time (callers that share one across threads, like the
    catalog store, hold a lock around it)."""

    def __init__(self, encoder: MultimodalEncoder, recipe: ItemRecipe | None = None, *,
                 cache_dir: str | Path | None | bool = None, batch_size: int = 64, threads: int | None = None,
                 progress: bool = False) -> None:
        self.multimodal = encoder
        self.recipe = recipe or ItemRecipe()
        self.embedder = BatchEmbedder(encoder, batch_size=batch_size, threads=threads, cache_dir=cache_dir,
                                      progress=progress)
        self.space = hashlib.sha256(f"{self.recipe.id}|{self.embedder.identity}".encode()).hexdigest()[:16]

    # ---------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        return self.multimodal.name

    @property
    def dim(self) -> int:
        return int(self.multimodal.dim)

    @property
    def text_encoder(self) -> Any:
        return self.multimodal.text_encoder

    @property
    def image_encoder(self) -> Any:
        return self.multimodal.image_encoder

    @property
    def stats(self) -> EmbedStats:
        """Counts of the last `embed` run (items, cache hits, bad images, items/s)."""
        return self.embedder.stats

    def describe(self) -> dict[str, Any]:
        return {"space": self.space, "recipe": self.recipe.id, **self.multimodal.describe()}

    # ---------------------------------------------------------------- items
    def inputs(self, items: Iterable[Any]) -> list[tuple[str | None, Any]]:
        """What the encoders see of each item: (recipe text, image or None)."""
        with_images = self.image_encoder is not None
        return [(self.recipe.text(it), self.recipe.image(it) if with_images else None) for it in items]

    def encode(self, items: Sequence[Any], *, errors: str = "raise") -> dict[str, Any]:
        """One batch of items. errors="raise": an undecodable image raises `encoders.ImageDecodeError`
        (naming the item) and an item with neither text nor image raises ValueError, before anything is
        cached; "skip": such items get text-only (or NaN) vectors."""
        pairs = self.inputs(items)
        return self.embedder.embed_batch([t for t, _ in pairs], [i for _, i in pairs], errors=errors)

    def embed(self, items: Iterable[Any], *, total: int | None = None) -> dict[str, Any]:
        """Many items in batches, with a progress bar (if the encoder was made with progress=True) and the
        run's counts in `stats`; bad images are counted and survived."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        return self.embedder.embed(self._pairs(items), total=total)

    def embed_batches(self, items: Iterable[Any], *, total: int | None = None) -> Iterator[dict[str, Any]]:
        """`embed`, one batch at a time (what a large catalog needs: memory stays flat, see
        `BatchEmbedder.embed_batches`); each batch is cached before it is yielded."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        return self.embedder.embed_batches(self._pairs(items), total=total)

    def _pairs(self, items: Iterable[Any]) -> Iterator[tuple[str | None, Any]]:
        with_images = self.image_encoder is not None
        return ((self.recipe.text(it), self.recipe.image(it) if with_images else None) for it in items)

    # ---------------------------------------------------------------- queries
    def encode_query(self, text: str) -> np.ndarray:
        """A search query in the same space (e5 and similar encoders prefix queries differently)."""
        return self.text_encoder.encode([text], kind="query")[0]

    def encode_image(self, image: Any) -> np.ndarray:
        """An image in the shared space. Raises ImageDecodeError for undecodable input, ValueError without
        an image encoder."""
        vectors, _ = self.multimodal.image_vectors([image])
        return vectors[0]

    def close(self) -> None:
        self.embedder.close()


def load_item_encoder(config: EncoderConfig | None = None, *, cache_dir: str | Path | None | bool = None,
                      batch_size: int = 64, threads: int | None = None, progress: bool = False) -> ItemEncoder:
    """The item encoder a config names (a config field may also hold an encoder or adapter object instead of
    a spec). Model weights come from installed packages only; a spec that cannot load is a UserError."""
    from encoders.adapter import ImageTextAdapter
    from encoders.image import ModelUnavailableError, OpenClipEncoder, load_image_encoder
    from encoders.text import TextEncoderError
    from mmrec.embedding.image_adapter import default_adapter
    from mmrec.embedding.text_model import load_text_encoder

    config = config or EncoderConfig()
    text_spec, image_spec, adapter_spec = config.text_encoder, config.image_encoder, config.adapter
    try:
        mix = ModalityMix(**config.mix)
        recipe = ItemRecipe(tuple(config.recipe))
    except (TypeError, ValueError) as exc:
        raise UserError(f"encoder config: {exc}") from None
    try:
        image = load_image_encoder(image_spec) if isinstance(image_spec, str) else image_spec
        if isinstance(image, OpenClipEncoder):  # CLIP brings its own text tower: no adapter
            if text_spec not in ("clip", "default"):
                raise UserError(f"{image.name} pairs with its own text tower (text encoder 'clip'), not {text_spec}")
            encoder = MultimodalEncoder(image.text_encoder(), image, None, mix)
        else:
            text = load_text_encoder(text_spec)
            if image is not None and adapter_spec == "default":
                adapter_spec = default_adapter(text, image, progress=progress)
            elif image is not None and isinstance(adapter_spec, (str, Path)):
                adapter_spec = ImageTextAdapter.load(adapter_spec)
            encoder = MultimodalEncoder(text, image, adapter_spec if image is not None else None, mix)
    except (TextEncoderError, ModelUnavailableError, FileNotFoundError, ValueError) as exc:
        raise UserError((str(exc).splitlines() or [type(exc).__name__])[0]) from None
    return ItemEncoder(encoder, recipe, cache_dir=cache_dir, batch_size=batch_size, threads=threads,
                       progress=progress)

"""Image->text adapters for catalogs: the default one (trained on emoji-market) and your own.

The default adapter is NOT shipped as a file: it is trained into the cache the first time it is needed
(`$MMREC_CACHE/adapters/`), seeded, from the built-in `emoji-market` catalog and whichever text encoder is
in use (an adapter only makes sense for the text space it was trained into, so there is one per text
encoder). Its weights plus memory are several MB, over what belongs in git; training is reproducible and
takes about 1-2 minutes on 2 cores, almost all of it image features of the augmented views, which are
cached separately so that retraining for another text encoder takes seconds.
`mmrec train-adapter --catalog YOURS.jsonl --out my-adapter` trains one on your own catalog.
"""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any, Iterable

from encoders.adapter import AdapterConfig, ImageTextAdapter
from encoders.adapter_training import CatalogProduct, fit_catalog_adapter
from encoders.image import DEFAULT_IMAGE_ENCODER, load_image_encoder
from encoders.text import encoder_version
from mmrec.data.catalog import group_products, load_catalog_items
from mmrec.errors import UserError
from mmrec.paths import cache_dir
from mmrec.embedding.text_model import load_text_encoder

log = logging.getLogger(__name__)

DEFAULT_CATALOG = "emoji-market"


def _slug(text: str) -> str:
    # no dots: the adapter's files are NAME.pt / NAME.json, and Path.with_suffix would cut a name at its last dot
    return re.sub(r"[^A-Za-z0-9+-]+", "_", text)[:80]


def catalog_products(items: Iterable[dict]) -> list[CatalogProduct]:
    """Products with an image and a title (see `group_products`): what an image->text adapter trains on."""
    return [p for p in group_products(items) if p.image is not None and p.titles]


def train_catalog_adapter(catalog: str = DEFAULT_CATALOG, *, text_encoder: Any = "default",
                          image_encoder: Any = DEFAULT_IMAGE_ENCODER, config: AdapterConfig | None = None,
                          progress: bool = True) -> ImageTextAdapter:
    """Train an adapter on a catalog (built-in name or file); encoders given as specs or objects."""
    products = catalog_products(load_catalog_items(catalog))  # the cheap checks first
    if len(products) < 2:
        raise UserError(f"{catalog}: adapter training needs at least 2 products with an image and a title")
    text = load_text_encoder(text_encoder)
    image = load_image_encoder(image_encoder) if isinstance(image_encoder, str) else image_encoder
    log.info("training an image->text adapter on %s (%d products) for %s", catalog, len(products), text.name)
    return fit_catalog_adapter(products, text, image, config=config, cache_dir=cache_dir("adapters", "views"),
                               meta={"catalog": catalog if not Path(catalog).exists() else str(Path(catalog).resolve()),
                                     "text_version": encoder_version(text)}, progress=progress)


def default_adapter_path(text_encoder: Any, image_encoder: Any, catalog: str = DEFAULT_CATALOG,
                         config: AdapterConfig | None = None) -> Path:
    config = config or AdapterConfig()
    version = encoder_version(text_encoder)  # slugged for reading, hashed so that a cut-off slug cannot collide
    tag = hashlib.sha256(version.encode()).hexdigest()[:8]
    image = getattr(image_encoder, "weights_name", image_encoder.name)  # torch and ONNX fp32 share one adapter
    name = f"{_slug(str(catalog))}--{_slug(image)}--{_slug(version)}-{tag}--{config.digest()}"
    return cache_dir("adapters") / name


def default_adapter(text_encoder: Any = "default", image_encoder: Any = DEFAULT_IMAGE_ENCODER, *,
                    catalog: str = DEFAULT_CATALOG, retrain: bool = False, progress: bool = True) -> ImageTextAdapter:
    """The adapter for (image encoder, text encoder), trained on `catalog` into the cache on first use."""
    text = load_text_encoder(text_encoder)
    image = load_image_encoder(image_encoder) if isinstance(image_encoder, str) else image_encoder
    path = default_adapter_path(text, image, catalog)
    if not retrain and path.with_suffix(".pt").exists():
        return ImageTextAdapter.load(path)
    adapter = train_catalog_adapter(catalog, text_encoder=text, image_encoder=image, progress=progress)
    adapter.save(path)
    return adapter

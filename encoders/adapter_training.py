"""Training the image->text adapter: multi-positive InfoNCE on precomputed image features (backbones frozen),
and the whole-catalog recipe (augmented views of every product image, every title in every language as a
positive). Extracting the views' features is the slow part, so it is cached on disk.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from encoders.adapter import AdapterConfig, AdapterNet, ImageTextAdapter
from encoders.augment import render_views
from encoders.base import l2_normalize
from encoders.cache import image_digest

log = logging.getLogger(__name__)


def _multi_positive_infonce(img: torch.Tensor, txt: torch.Tensor, owner: torch.Tensor, scale: torch.Tensor
                            ) -> torch.Tensor:
    """Symmetric InfoNCE where image i's positives are ALL texts with owner == i.

    image->text: mean over each image's positives of log-softmax over all texts in the batch;
    text->image: each text against the batch's images (one positive).
    """
    logits = scale * img @ txt.T  # (B, M)
    pos = owner[None, :] == torch.arange(img.shape[0], device=img.device)[:, None]  # (B, M)
    log_p_i2t = logits.log_softmax(dim=1)
    i2t = -(log_p_i2t * pos).sum(1) / pos.sum(1).clamp(min=1)
    t2i = torch.nn.functional.cross_entropy(logits.T, owner)
    return 0.5 * (i2t.mean() + t2i)


def train_adapter(image_features: np.ndarray, image_product: np.ndarray, text_vectors: np.ndarray,
                  text_product: np.ndarray, *, image_encoder: str, text_encoder: str,
                  config: AdapterConfig | None = None, descriptors: np.ndarray | None = None,
                  descriptor_product: np.ndarray | None = None, base_vectors: np.ndarray | None = None,
                  meta: dict | None = None, progress: bool = True) -> ImageTextAdapter:
    """Train an adapter from precomputed vectors.

    image_features: (V, d) features of every view of every product image (several views per product are
    fine and encouraged); image_product: (V,) product of each view. text_vectors: (T, D) title vectors from
    `text_encoder`; text_product: (T,) product of each title. Products are any ints. descriptors /
    descriptor_product: one look-alike descriptor per product image for the memory (config.memory).
    base_vectors: optional (V, D) vectors the network learns to correct instead of replacing.
    Deterministic for a given config.seed.
    """
    from tqdm.auto import tqdm

    config = config or AdapterConfig()
    image_features = np.asarray(image_features, dtype=np.float32)
    text_vectors = np.asarray(text_vectors, dtype=np.float32)
    image_product, text_product = np.asarray(image_product), np.asarray(text_product)
    if len(image_features) != len(image_product) or len(text_vectors) != len(text_product):
        raise ValueError("features and their product indices differ in length")
    products = np.intersect1d(np.unique(image_product), np.unique(text_product))
    if len(products) < 2:
        raise ValueError(f"need at least 2 products with both an image and a title, got {len(products)}")
    views = {p: np.flatnonzero(image_product == p) for p in products}
    texts = {p: np.flatnonzero(text_product == p) for p in products}

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    in_dim, out_dim = image_features.shape[1], text_vectors.shape[1]

    keys = values = None
    if config.memory and descriptors is not None:
        descriptors = np.asarray(descriptors, dtype=np.float32)
        descriptor_product = np.asarray(descriptor_product)
        rows = np.flatnonzero(np.isin(descriptor_product, products))
        if len(rows) > config.memory_max_products:
            rows = np.sort(rng.choice(rows, size=config.memory_max_products, replace=False))
        keys = l2_normalize(descriptors[rows])
        values = l2_normalize(np.stack([text_vectors[texts[p]].mean(0) for p in descriptor_product[rows]]))
    net = AdapterNet(in_dim, out_dim, config.hidden_dim, config.dropout,
                     0 if keys is None else keys.shape[1], 0 if keys is None else len(keys))
    if keys is not None:
        net.memory_keys.copy_(torch.from_numpy(keys))
        net.memory_values.copy_(torch.from_numpy(values))
    used = np.concatenate([views[p] for p in products])
    net.input_mean.copy_(torch.from_numpy(image_features[used].mean(0)))
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)),
                                   requires_grad=config.learn_temperature)
    params = list(net.parameters()) + ([log_scale] if config.learn_temperature else [])
    opt = torch.optim.AdamW([{"params": list(net.parameters())},
                             {"params": [log_scale] if config.learn_temperature else [], "weight_decay": 0.0}],
                            lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(config.steps, 1), pct_start=0.1)
    feats_t, texts_t = torch.from_numpy(image_features), torch.from_numpy(text_vectors)
    base_t = None if base_vectors is None else torch.from_numpy(np.asarray(base_vectors, dtype=np.float32))
    if base_t is not None:  # start from the base: the network learns a correction
        torch.nn.init.zeros_(net.net[-1].weight)
        torch.nn.init.zeros_(net.net[-1].bias)
    batch = min(config.batch_products, len(products))
    started, losses = time.time(), []
    net.train()
    for _ in tqdm(range(config.steps), desc="training adapter", unit="step", disable=not progress):
        chosen = rng.choice(products, size=batch, replace=False)
        view_idx = np.array([rng.choice(views[p]) for p in chosen])
        text_idx = np.concatenate([texts[p] for p in chosen])
        owner = np.concatenate([np.full(len(texts[p]), i) for i, p in enumerate(chosen)])
        z = net(feats_t[view_idx], None if base_t is None else base_t[view_idx])
        loss = _multi_positive_infonce(z, texts_t[text_idx], torch.from_numpy(owner), log_scale.exp().clamp(max=100))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    info = {"products": int(len(products)), "views": int(len(used)),
            "titles": int(sum(len(t) for t in texts.values())), "memory_products": 0 if keys is None else len(keys),
            "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "temperature": float(1 / log_scale.detach().exp()), "train_seconds": round(time.time() - started, 2),
            **(meta or {})}
    return ImageTextAdapter(net, config, image_encoder, text_encoder, in_dim, out_dim, info)


# ------------------------------------------------------------------------------------ a whole catalog


@dataclass
class CatalogProduct:
    """One product for adapter training: an image (path, bytes or PIL) and all its titles, any languages."""

    key: str
    image: Any
    titles: list[str]


def catalog_image_features(products: Sequence[CatalogProduct], image_encoder: Any, *, augment_views: int,
                           seed: int, cache_dir: str | Path | None = None, progress: bool = True
                           ) -> dict[str, np.ndarray]:
    """Features of each product image and its augmented views: {"features", "probs", "descriptors", "view_product",
    "ok"} (ok: products whose image decoded). Cached under `cache_dir` by (encoder, views, seed, image bytes)."""
    from encoders.base import ImageDecodeError
    from encoders.image import open_image

    decoded, ok = [], np.zeros(len(products), dtype=bool)
    # keyed by the weights the features come from: torch and ONNX fp32 EfficientNet share one entry
    weights = getattr(image_encoder, "weights_name", image_encoder.name)
    digest = hashlib.sha256(f"{weights}|{augment_views}|{seed}".encode())
    for i, prod in enumerate(products):
        try:
            decoded.append(open_image(prod.image, index=i))
            ok[i] = True
            digest.update(image_digest(prod.image).encode())
        except (ImageDecodeError, OSError) as exc:
            log.warning("adapter training skips product %s: %s", prod.key, exc)
    cache = Path(cache_dir) / f"views-{digest.hexdigest()[:20]}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    views, source = render_views(decoded, augment_views, seed)
    out = image_encoder.encode_full(views, progress=progress)
    result = {"features": out.features, "probs": out.probs, "descriptors": out.descriptors,
              "view_product": np.flatnonzero(ok)[source], "is_original": np.r_[True, source[1:] != source[:-1]], "ok": ok}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez(tmp, **result)
        tmp.replace(cache)
    return result


def fit_catalog_adapter(products: Sequence[CatalogProduct], text_encoder: Any, image_encoder: Any, *,
                        config: AdapterConfig | None = None, cache_dir: str | Path | None = None,
                        meta: dict | None = None, progress: bool = True) -> ImageTextAdapter:
    """Train an adapter on a catalog: augmented views of every product image, all titles as positives.

    `image_encoder` must offer `encode_full` (EfficientNet-Lite); `cache_dir` keeps the view features so that
    retraining (other text encoder, other settings) skips the slow part.
    """
    config = config or AdapterConfig()
    if not hasattr(image_encoder, "encode_full"):
        raise ValueError(f"{image_encoder.name} gives no adapter features; open_clip models need no adapter")
    products = [p for p in products if p.titles]
    views = catalog_image_features(products, image_encoder, augment_views=config.augment_views, seed=config.seed,
                                   cache_dir=cache_dir, progress=progress)
    titles = [t for p in products for t in p.titles]
    title_product = np.array([i for i, p in enumerate(products) for _ in p.titles])
    text_vectors = text_encoder.encode(titles, kind="passage")
    original = views["is_original"]
    return train_adapter(views["features"], views["view_product"], text_vectors, title_product,
                         image_encoder=getattr(image_encoder, "weights_name", image_encoder.name),
                         text_encoder=text_encoder.name, config=config,
                         descriptors=views["descriptors"][original], descriptor_product=views["view_product"][original],
                         meta={"catalog_products": len(products), "images_ok": int(views["ok"].sum()), **(meta or {})},
                         progress=progress)

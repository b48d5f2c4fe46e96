"""The image->text-space adapter: a small network trained contrastively on a catalog's image-title pairs.

No CLIP weights exist offline here, so the shared text-image space is the frozen multilingual TEXT space,
and image features are mapped into it (LiT-style: both backbones frozen, only the adapter learns).
Every title of a product, in every language, is a positive of its image (multi-positive InfoNCE), so the
adapter does not favour the language it happens to see most. Augmented views of each image (crops, scale,
rotation, colour, background) stand in for the photos a real catalog would have several of.

Alongside the trained network the adapter keeps a small MEMORY of the training catalog: each product's image
descriptor and the mean vector of its titles. A new image is also mapped to the softmax-weighted mean of its
nearest training products' titles. Held-out products measured on emoji-market: memory alone beat the trained
network on text->image (R@10 0.54 vs 0.45); the network is better image->text (0.43 vs 0.38); mixing both
with the training-free bridge is the default (see FusionConfig).

Training works on precomputed features (backbones are frozen), so it takes seconds; extracting features of
the augmented views is the slow part (`fit_catalog_adapter` caches them).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from encoders.base import l2_normalize

log = logging.getLogger(__name__)

ADAPTER_FORMAT = 1


# ------------------------------------------------------------------------------------------- augmentation


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


# ------------------------------------------------------------------------------------------------- model


@dataclass
class AdapterConfig:
    """How the adapter is shaped and trained. Defaults were chosen on emoji-market held-out product folds."""

    hidden_dim: int = 1024  # 0 = linear map
    dropout: float = 0.2
    steps: int = 600
    batch_products: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    init_temperature: float = 0.05
    learn_temperature: bool = True
    seed: int = 0
    augment_views: int = 2  # random views per product image, besides the image itself
    memory: bool = True  # keep the nearest-neighbour memory of the training products
    memory_k: int = 20
    memory_temperature: float = 0.05
    memory_max_products: int = 50_000  # a random subset beyond this (memory = products x (descriptor + text dim))

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


class AdapterNet(torch.nn.Module):
    """Centred image features -> (MLP or linear) -> L2-normalised vector in the text space; plus the memory
    (buffers, so they travel in the state dict and in any fingerprint of it)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 0, dropout: float = 0.0,
                 key_dim: int = 0, memory_size: int = 0):
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(in_dim))
        if hidden_dim:
            self.net = torch.nn.Sequential(
                torch.nn.Dropout(dropout), torch.nn.Linear(in_dim, hidden_dim), torch.nn.GELU(),
                torch.nn.Dropout(dropout), torch.nn.Linear(hidden_dim, out_dim))
        else:
            self.net = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(in_dim, out_dim))
        self.register_buffer("memory_keys", torch.zeros(memory_size, key_dim))
        self.register_buffer("memory_values", torch.zeros(memory_size, out_dim))

    def forward(self, x: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """`base` (optional, (n, out_dim)): a vector the network corrects rather than replaces."""
        y = self.net(x - self.input_mean)
        if base is not None:
            y = y + base
        return torch.nn.functional.normalize(y, dim=-1)

    def recall(self, keys: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
        """Softmax(cosine / temperature)-weighted mean of the k nearest memory values, L2-normalised."""
        sims = keys @ self.memory_keys.T
        k = min(k, sims.shape[1])
        top, idx = sims.topk(k, dim=1)
        weights = ((top - top[:, :1]) / temperature).softmax(dim=1)
        out = (weights[:, :, None] * self.memory_values[idx]).sum(1)
        return torch.nn.functional.normalize(out, dim=-1)


@dataclass
class ImageTextAdapter:
    """A trained adapter plus what it was trained for: the image encoder, the text encoder, the catalog."""

    net: AdapterNet
    config: AdapterConfig
    image_encoder: str
    text_encoder: str
    in_dim: int
    out_dim: int
    meta: dict = field(default_factory=dict)

    @property
    def has_memory(self) -> bool:
        return self.net.memory_keys.shape[0] > 0

    @property
    def key_dim(self) -> int:
        return int(self.net.memory_keys.shape[1])

    def transform(self, features: np.ndarray, *, batch: int = 4096) -> np.ndarray:
        """(n, in_dim) image features -> (n, out_dim) L2-normalised vectors in the text space (the network)."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.in_dim:
            raise ValueError(f"adapter expects (n, {self.in_dim}) features from {self.image_encoder}, "
                             f"got {features.shape}")
        self.net.eval()
        out = np.zeros((len(features), self.out_dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(features), batch):
                out[s:s + batch] = self.net(torch.from_numpy(features[s:s + batch])).numpy()
        return out

    def recall(self, descriptors: np.ndarray, *, batch: int = 1024) -> np.ndarray:
        """(n, key_dim) image descriptors -> (n, out_dim): what the nearest training products are called."""
        if not self.has_memory:
            raise ValueError("this adapter has no memory (trained with memory=False)")
        descriptors = np.asarray(descriptors, dtype=np.float32)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.key_dim:
            raise ValueError(f"adapter memory expects (n, {self.key_dim}) descriptors, got {descriptors.shape}")
        out = np.zeros((len(descriptors), self.out_dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(descriptors), batch):
                out[s:s + batch] = self.net.recall(torch.from_numpy(descriptors[s:s + batch]), self.config.memory_k,
                                                   self.config.memory_temperature).numpy()
        return out

    def to_text_space(self, features: np.ndarray, descriptors: np.ndarray | None = None,
                      bridge: np.ndarray | None = None, *, network_weight: float = 0.5, memory_weight: float = 1.0,
                      bridge_weight: float = 1.0) -> np.ndarray:
        """The weighted, normalised sum of the network, the memory (needs descriptors) and a bridge vector."""
        out = np.zeros((len(features), self.out_dim), dtype=np.float32)
        if network_weight > 0:
            out += network_weight * self.transform(features)
        if memory_weight > 0 and self.has_memory and descriptors is not None:
            out += memory_weight * self.recall(descriptors)
        if bridge_weight > 0 and bridge is not None:
            out += bridge_weight * np.asarray(bridge, dtype=np.float32)
        return l2_normalize(out)

    def check_compatible(self, *, image_encoder: str | None = None, text_encoder: str | None = None) -> None:
        """Raise ValueError if this adapter was trained for other encoders (its output would be meaningless)."""
        for what, want, have in (("image", image_encoder, self.image_encoder), ("text", text_encoder, self.text_encoder)):
            if want is not None and want != have:
                raise ValueError(f"adapter was trained for {what} encoder {have!r}, not {want!r}: "
                                 f"retrain it with `mmrec train-adapter --{what}-encoder {want}`")

    def weights_digest(self) -> str:
        """A hash of the trained weights (and memory): two adapters with equal digests map images alike."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.net.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write `<path>.pt` (weights and memory) and `<path>.json` (config, provenance); returns the .pt path."""
        path = Path(path)
        if path.suffix in (".pt", ".json"):
            path = path.with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(torch.float32).contiguous() for k, v in self.net.state_dict().items()}
        tmp = path.with_name(path.name + ".tmp.pt")
        torch.save(state, tmp)
        info = {"format": ADAPTER_FORMAT, "image_encoder": self.image_encoder, "text_encoder": self.text_encoder,
                "in_dim": self.in_dim, "out_dim": self.out_dim, "key_dim": self.key_dim,
                "memory_size": int(self.net.memory_keys.shape[0]), "config": self.config.to_dict(), "meta": self.meta}
        path.with_suffix(".json").write_text(json.dumps(info, indent=2, ensure_ascii=False))
        tmp.replace(path.with_suffix(".pt"))  # the .pt appears last: its presence means the pair is complete
        return path.with_suffix(".pt")

    @classmethod
    def load(cls, path: str | Path) -> "ImageTextAdapter":
        path = Path(path)
        if path.suffix in (".pt", ".json"):
            path = path.with_suffix("")
        if not path.with_suffix(".json").exists() or not path.with_suffix(".pt").exists():
            raise FileNotFoundError(f"no adapter at {path}(.pt/.json)")
        info = json.loads(path.with_suffix(".json").read_text())
        if info.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"{path}.json: unsupported adapter format {info.get('format')!r}")
        config = AdapterConfig(**info["config"])
        net = AdapterNet(info["in_dim"], info["out_dim"], config.hidden_dim, config.dropout,
                         info.get("key_dim", 0), info.get("memory_size", 0))
        net.load_state_dict(torch.load(path.with_suffix(".pt"), map_location="cpu", weights_only=True))
        net.eval()
        return cls(net, config, info["image_encoder"], info["text_encoder"], info["in_dim"], info["out_dim"],
                   info.get("meta", {}))


# ---------------------------------------------------------------------------------------------- training


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


# ------------------------------------------------------------------------------------ a whole catalog


@dataclass
class CatalogProduct:
    """One product for adapter training: an image (path, bytes or PIL) and all its titles, any languages."""

    key: str
    image: Any
    titles: list[str]


def _digest_image(image: Any) -> str:
    h = hashlib.sha256()
    if isinstance(image, (bytes, bytearray, memoryview)):
        h.update(bytes(image))
    elif isinstance(image, Image.Image):
        h.update(f"{image.mode}{image.size}".encode())
        h.update(image.tobytes())
    else:
        with open(image, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def catalog_image_features(products: Sequence[CatalogProduct], image_encoder: Any, *, augment_views: int,
                           seed: int, cache_dir: str | Path | None = None, progress: bool = True
                           ) -> dict[str, np.ndarray]:
    """Features of each product image and its augmented views: {"features", "probs", "descriptors", "view_product",
    "ok"} (ok: products whose image decoded). Cached under `cache_dir` by (encoder, views, seed, image bytes)."""
    from encoders.base import ImageDecodeError
    from encoders.image import open_image

    decoded, ok = [], np.zeros(len(products), dtype=bool)
    digest = hashlib.sha256(f"{image_encoder.name}|{augment_views}|{seed}".encode())
    for i, prod in enumerate(products):
        try:
            decoded.append(open_image(prod.image, index=i))
            ok[i] = True
            digest.update(_digest_image(prod.image).encode())
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
                         image_encoder=image_encoder.name, text_encoder=text_encoder.name, config=config,
                         descriptors=views["descriptors"][original], descriptor_product=views["view_product"][original],
                         meta={"catalog_products": len(products), "images_ok": int(views["ok"].sum()), **(meta or {})},
                         progress=progress)

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from encoders.base import l2_normalize

log = logging.getLogger(__name__)

ADAPTER_FORMAT = 1


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

"""Checkpoints of the fusion transformer: config + weights + ID vocabulary + the identity of the item-vector
space the weights expect. Loaded with ``weights_only=True``: a checkpoint from an untrusted path is data,
it cannot run code."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmrec.errors import UserError
from mmrec.model.transformer import FusionConfig, FusionTransformer

CHECKPOINT_FORMAT = "mmrec-fusion/1"


def save_checkpoint(path: str | Path, model: FusionTransformer, *, id_items: Sequence[str], vectors_version: str,
                    id_key: str = "item", extra: dict | None = None) -> Path:
    """Config + weights + the ID vocabulary (warm item ids, or product ids with ``id_key="product"``) + the
    item-vector version the weights expect."""
    if id_key not in ("item", "product"):
        raise ValueError(f"id_key must be 'item' or 'product', got {id_key!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.cfg.to_dict(),
        "state_dict": model.state_dict(),
        "id_items": [str(x) for x in id_items],
        "id_key": id_key,
        "vectors_version": vectors_version,
        "extra": extra or {},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


@dataclass
class Checkpoint:
    model: FusionTransformer
    id_items: list[str]
    vectors_version: str
    id_key: str = "item"  # what an ID row stands for: an item (listing) or a product (all its listings)
    extra: dict = field(default_factory=dict)


def load_checkpoint(path: str | Path, *, expect_vectors_version: str | None = None) -> Checkpoint:
    """Load a checkpoint; with ``expect_vectors_version``, refuse one trained on other item vectors
    (another encoder, adapter or item recipe puts items in a different space and the weights would be garbage)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem to fix
        raise UserError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an mmrec fusion checkpoint (expected format {CHECKPOINT_FORMAT})")
    version = payload["vectors_version"]
    if expect_vectors_version is not None and version != expect_vectors_version:
        raise UserError(
            f"checkpoint {path} was trained on vector space {version}, but these item vectors are space "
            f"{expect_vectors_version} (another encoder, adapter or item recipe): index the catalog with the "
            f"settings it was trained on, or retrain"
        )
    model = FusionTransformer(FusionConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Checkpoint(model=model, id_items=list(payload["id_items"]), vectors_version=version,
                      id_key=payload.get("id_key", "item"), extra=payload.get("extra", {}))

"""Moved in mmrec 0.2: the content vectors live in `mmrec.model.vectors`, a store's space is
`CatalogStore.encoder.space`. This alias keeps the 0.1 README and notebooks working for one release."""
from __future__ import annotations

import warnings
from typing import Any

from mmrec.model.vectors import catalog_vectors

warnings.warn("mmrec.item_vectors moved to mmrec.model.vectors (and encoder_space_version(e) is now e.space)",
              DeprecationWarning, stacklevel=2)


def encoder_space_version(encoder: Any) -> str:
    """The vector space of an item encoder: `encoder.space`."""
    return encoder.space


__all__ = ["catalog_vectors", "encoder_space_version"]

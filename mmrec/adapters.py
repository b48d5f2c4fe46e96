"""Moved in mmrec 0.2 to `mmrec.embedding.image_adapter`. This alias keeps the 0.1 README's
`mmrec.adapters.default_adapter()` working for one release."""
from __future__ import annotations

import warnings

from mmrec.embedding.image_adapter import default_adapter, train_catalog_adapter

warnings.warn("mmrec.adapters moved to mmrec.embedding.image_adapter", DeprecationWarning, stacklevel=2)

__all__ = ["default_adapter", "train_catalog_adapter"]

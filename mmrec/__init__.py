"""mmrec: multimodal, cross-lingual recommendation for cross-border e-commerce.

The public face of the project: it composes `encoders`, `index` and `evaluation`.

    from mmrec import embed                                   # batch embedding of a catalog
    from mmrec import CatalogStore, CatalogConfig, ItemRecord  # items -> vectors -> Qdrant, search
    from mmrec import FusionRecommender, FusionConfig, TrainConfig  # the fusion transformer: train, evaluate
    from mmrec import TwoStageRecommender, load_ranker         # serve it over the store: retrieve + rank
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from mmrec import datasets
from mmrec.embed import embed
from mmrec.errors import UserError
from mmrec.io import LoadReport, load_catalog, load_events
from mmrec.schema import EVENT_KINDS, Event, Item

# Heavier parts (torch, the store) load on first use, so `import mmrec` stays fast.
_LAZY = {
    "CatalogStore": "mmrec.catalog_store", "CatalogConfig": "mmrec.catalog_store", "ItemRecord": "mmrec.catalog_store",
    "FusionConfig": "mmrec.model", "FusionTransformer": "mmrec.model",
    "FusionRecommender": "mmrec.train", "TrainConfig": "mmrec.train",
    "TwoStageRecommender": "mmrec.recommender", "ServingConfig": "mmrec.recommender", "load_ranker": "mmrec.recommender",
    "catalog_vectors": "mmrec.item_vectors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmrec' has no attribute {name!r}")


__all__ = ["datasets", "embed", "UserError", "LoadReport", "load_catalog", "load_events", "EVENT_KINDS", "Event",
           "Item", *_LAZY]
__version__ = "0.1.0"

"""mmrec: multimodal, cross-lingual recommendation for cross-border e-commerce.

The public face of the project: it composes `encoders`, `index` and `evaluation`. Its sub-packages follow
the data flow, catalog -> embedding -> store -> model -> serving:

    from mmrec import load_catalog, load_events, datasets      # data: your files, the built-in datasets
    from mmrec import embed, load_text_encoder, load_item_encoder  # embedding: ONE recipe + ONE ItemEncoder
    from mmrec import CatalogStore, CatalogConfig, index_catalog  # store: items -> vectors -> Qdrant, search
    from mmrec import FusionRecommender, FusionConfig, TrainConfig  # model: the fusion transformer
    from mmrec import TwoStageRecommender, load_ranker         # serving: retrieve + rank over the store
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from mmrec.data import EVENT_KINDS, Event, Item, LoadReport, datasets, load_catalog, load_events
from mmrec.errors import UserError

# Heavier parts (torch, the store) load on first use, so `import mmrec` stays fast.
_LAZY = {
    "embed": "mmrec.embedding.embed",
    "ItemRecipe": "mmrec.embedding.recipe", "ItemEncoder": "mmrec.embedding.item_encoder",
    "EncoderConfig": "mmrec.embedding.item_encoder", "load_item_encoder": "mmrec.embedding.item_encoder",
    "load_text_encoder": "mmrec.embedding.text_model",
    "CatalogStore": "mmrec.store.catalog_store", "CatalogConfig": "mmrec.store.catalog_store",
    "ItemRecord": "mmrec.store.catalog_store",  # = Item, the 0.1 name; kept one release
    "index_catalog": "mmrec.store.indexing", "stored_vectors": "mmrec.store.indexing",
    "FusionConfig": "mmrec.model.transformer", "FusionTransformer": "mmrec.model.transformer",
    "FusionRecommender": "mmrec.model.recommender", "TrainConfig": "mmrec.model.training",
    "ItemVectors": "mmrec.model.vectors", "catalog_vectors": "mmrec.model.vectors",
    "TwoStageRecommender": "mmrec.serving.two_stage", "ServingConfig": "mmrec.serving.two_stage",
    "load_ranker": "mmrec.serving.two_stage",
    "ExplorationConfig": "mmrec.serving.exploration", "ExplorationPolicy": "mmrec.serving.exploration",
    "RecommendRequest": "mmrec.serving.two_stage",
    "BatchingConfig": "mmrec.serving.batching", "MicroBatcher": "mmrec.serving.batching",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmrec' has no attribute {name!r}")


__all__ = ["datasets", "UserError", "LoadReport", "load_catalog", "load_events", "EVENT_KINDS", "Event", "Item",
           *_LAZY]
__version__ = "0.2.0"

"""mmrec: multimodal, cross-lingual recommendation for cross-border e-commerce.

The public face of the project: it composes `encoders`, `index` and `evaluation`.
"""
from mmrec import datasets
from mmrec.embed import embed
from mmrec.errors import UserError
from mmrec.io import LoadReport, load_catalog, load_events
from mmrec.schema import EVENT_KINDS, Event, Item

__all__ = ["datasets", "embed", "UserError", "LoadReport", "load_catalog", "load_events", "EVENT_KINDS", "Event", "Item"]
__version__ = "0.1.0"

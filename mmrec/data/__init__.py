"""The data side: the item/event model, loading a user's catalog and event files, the built-in datasets."""
from mmrec.data import datasets
from mmrec.data.io import LoadReport, load_catalog, load_events
from mmrec.data.schema import EVENT_KINDS, Event, Item

__all__ = ["datasets", "LoadReport", "load_catalog", "load_events", "EVENT_KINDS", "Event", "Item"]

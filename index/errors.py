"""Errors the vector store raises on bad input or a bad environment, so callers can tell them apart."""
from __future__ import annotations


class StoreError(Exception):
    """Base class of every error raised by `index`."""


class DimensionError(StoreError, ValueError):
    """A vector has the wrong length, or is not finite, for the named vector it is given as."""


class SchemaError(StoreError, ValueError):
    """The collection does not exist and no schema was given, or it exists with a different schema."""


class PayloadError(StoreError, ValueError):
    """A payload field has the wrong type (e.g. a string price) or cannot be stored as JSON."""


class UnknownItemError(StoreError, LookupError):
    """Example items passed to recommend() are not in the store (or lack the vector asked for)."""

    def __init__(self, message: str, item_ids: list[str]):
        super().__init__(message)
        self.item_ids = item_ids

    def __str__(self) -> str:  # LookupError would quote the message like a key
        return str(self.args[0])


class StoreLockedError(StoreError):
    """The edge store directory is already open in this or another process (one writer per shard)."""

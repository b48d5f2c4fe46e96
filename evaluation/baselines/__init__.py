"""Baselines implementing `evaluation.Recommender`. SASRec (torch) is imported lazily from `.sasrec`."""
from __future__ import annotations

from .contentknn import ContentKNN
from .itemknn import ItemKNN
from .popularity import Popularity
from .topfreq import PersonalTopFreq

__all__ = ["Popularity", "PersonalTopFreq", "ItemKNN", "ContentKNN", "SASRec", "SASRecConfig"]


def __getattr__(name: str):
    # Keep `import evaluation.baselines` free of torch: SASRec loads it only when asked for.
    if name in ("SASRec", "SASRecConfig"):
        from . import sasrec

        return getattr(sasrec, name)
    raise AttributeError(name)

"""Shared fixtures. Tests use the real built-in data from the cache that `make setup` fills."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ml100k():
    from mmrec import datasets

    return datasets.load("ml-100k")


@pytest.fixture(scope="session")
def emoji_market():
    from mmrec import datasets

    return datasets.load("emoji-market")

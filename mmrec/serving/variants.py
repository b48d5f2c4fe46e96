"""Online A/B: the variants a service serves at once, and which one a user gets.

A variant is a name, a traffic share and what ranks /recommend: a fusion-transformer checkpoint or
"content" (content-based). `mmrec serve --variant name=SOURCE:SHARE` declares them (shares add up to 1).
Assignment is a pure function of the user id, the experiment name and the shares (`assign`): the same
user gets the same variant from every replica and across restarts, with no state to share; renaming the
experiment reshuffles users for a new test. A request without a user id (an ad-hoc history) is assigned by
its request id, i.e. at random.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONTENT = "content"
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SHARE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Variant:
    """`source`: "content" or a checkpoint path; `ranker`: the loaded model (None: content-based)."""

    name: str
    share: float
    source: str = CONTENT
    ranker: Any = None

    @property
    def model(self) -> str:
        """What ranks it, as impressions record it: "content" or the checkpoint's file name."""
        return CONTENT if self.source == CONTENT else Path(self.source).name


def parse_variant(spec: str) -> Variant:
    """`name=SOURCE:SHARE` (SOURCE: "content" or a checkpoint path, which may itself contain ':')."""
    name, eq, rest = spec.partition("=")
    source, colon, share_text = rest.rpartition(":")
    if not eq or not colon or not source:
        raise ValueError(f"--variant {spec!r}: expected name=SOURCE:SHARE, e.g. model=ckpt.pt:0.5 or base=content:0.5")
    if not NAME.match(name):
        raise ValueError(f"--variant {spec!r}: a name is 1-64 letters, digits, '_', '.' or '-'")
    try:
        share = float(share_text)
    except ValueError:
        raise ValueError(f"--variant {spec!r}: the share must be a number in (0, 1]") from None
    if not 0 < share <= 1:
        raise ValueError(f"--variant {spec!r}: the share must be in (0, 1]")
    return Variant(name, share, source)


def check_variants(variants: Sequence[Variant]) -> None:
    """Distinct names, shares adding up to 1."""
    names = [v.name for v in variants]
    if not variants:
        raise ValueError("no variants")
    if len(set(names)) != len(names):
        raise ValueError(f"--variant names must differ: {', '.join(names)}")
    total = sum(v.share for v in variants)
    if abs(total - 1) > SHARE_TOLERANCE:
        raise ValueError(f"--variant shares add up to {total:g}; they must add up to 1")


def unit_interval(unit: str, experiment: str) -> float:
    """A uniform number in [0, 1) fixed by (experiment, unit): SHA-256, so no process or seed changes it."""
    digest = hashlib.sha256(f"{experiment}\x00{unit}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(unit: str, shares: Sequence[tuple[str, float]], experiment: str = "default") -> str:
    """The variant `unit` (a user id) gets: the one whose slice of [0, 1) holds `unit_interval(unit, experiment)`,
    slices laid out in the order given, each as wide as its share."""
    x = unit_interval(unit, experiment)
    edge = 0.0
    for name, share in shares:
        edge += share
        if x < edge:
            return name
    return shares[-1][0]  # rounding: shares that add up to 1 - epsilon


def pick(variants: Sequence[Variant], unit: str, experiment: str) -> Variant:
    name = assign(unit, [(v.name, v.share) for v in variants], experiment)
    return next(v for v in variants if v.name == name)

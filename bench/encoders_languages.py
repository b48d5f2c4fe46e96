"""Text encoders in languages outside emoji-market's 14: CLDR names of the same products, X -> en, X -> Y and
a mixed-language gallery, every encoder side by side in one run.

emoji-market's products are emoji; Unicode CLDR (Debian `unicode-cldr-core`) names every emoji in ~100
languages. A product's CLDR short name in language X is the query; queries are the products held out from
ANY text tuning (`held_out_from_tuning`, hash fold 0 of 5: neither their titles nor their CLDR names in any
language reach the default's tuning, its stand-in or its language directions), for every encoder alike.
  X -> en    gallery = all 479 English titles; R@1 of finding the same product. Every CLDR language naming
             >= 95% of the products (77 outside the 14), plus the 13 catalog languages (their titles).
  X -> Y     gallery = all 479 products' names in language Y, mean R@1 over the 16 languages of issue 19
             (nl pl vi hi th sv uk he cs el ro hu da fi bn sw) other than X; queries in those 16.
  mixed      gallery = all 479 English titles + all 479 names in each of those 16 languages together (what an
             unfiltered /search sees: 8,143 texts); top-1 = the product's own English title outranks every
             entry of every other product (its own names in other languages are left out of the count);
             queries in the 16. "on the 14": the same with emoji-market's 14 title languages (queries: the 13
             other than English). "/search" (`mixed_gallery_top1_search`): the same galleries ranked as an
             unfiltered /search ranks them: the 200 best entries re-scored per language
             (mmrec/serving/language_rank.py; its `top` and `strength` chosen on hash fold 1, not this fold 0).
Queries are embedded as queries (kind="query", as /search embeds them), galleries as listings (kind="passage"):
frozen e5-small then reads its "query: " prompt, and the opt-in `e5-use-gated` space its query-side language gate.
Embeddings are cached on disk by encoder version and text ($MMREC_CACHE/embeddings/bench-text.sqlite), so a
rerun only embeds what changed.

    .venv/bin/python bench/encoders_languages.py     # writes "languages_outside" into bench/results/encoders.json
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "encoders.json"
MIN_SHARE = 0.95  # a CLDR language is measured when it names at least this share of the products
ISSUE_16 = ("nl", "pl", "vi", "hi", "th", "sv", "uk", "he", "cs", "el", "ro", "hu", "da", "fi", "bn", "sw")


@dataclass
class NameTable:
    """Every product's name per language (None where the language has none): the 14 catalog languages from
    emoji-market's titles, the others from CLDR."""

    pids: list[str]
    names: dict[str, list[str | None]]
    catalog: tuple[str, ...]  # emoji-market's 14 languages
    outside: tuple[str, ...]  # CLDR languages outside them

    def index(self, fold: int) -> np.ndarray:
        """Indices of the products in hash fold `fold` (0: held out from the default encoder's tuning)."""
        from mmrec.embedding.text_model import tuning_fold

        return np.array([i for i, p in enumerate(self.pids) if tuning_fold(p) == fold])


def name_table(min_share: float = MIN_SHARE) -> NameTable:
    from mmrec.data import cldr
    from mmrec.data.datasets.emoji_market import LANGUAGES, products

    prods, _ = products()
    names: dict[str, list[str | None]] = {lang: [p.names[lang] for p in prods] for lang in LANGUAGES}
    outside = []
    for lang in cldr.available_languages():
        if lang in LANGUAGES:
            continue
        ann = cldr.load_annotations(lang)
        row = [ann.names.get(cldr.cldr_key(p.char)) for p in prods]
        if sum(n is not None for n in row) >= min_share * len(prods):
            names[lang] = row
            outside.append(lang)
    return NameTable([p.product_id for p in prods], names, tuple(LANGUAGES), tuple(outside))


class DiskCached:
    """An encoder whose vectors are kept on disk by (encoder version, kind, text): reruns and combinations
    reuse them instead of running the model again."""

    def __init__(self, enc, cache):
        self.enc, self.cache = enc, cache
        self.name, self.dim, self.version = enc.name, enc.dim, getattr(enc, "version", enc.name)
        if hasattr(enc, "unsupported"):
            self.unsupported = enc.unsupported

    def encode(self, texts, *, kind: str = "passage") -> np.ndarray:
        from encoders.cache import content_key

        keys = [content_key(f"{self.version}|{kind}", t, None) for t in texts]
        found = {k: r["text"] for k, r in self.cache.get_many(keys).items()}
        todo = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in found))
        for s in range(0, len(todo), 1024):
            chunk = todo[s : s + 1024]
            vecs = self.enc.encode(chunk, kind=kind)
            batch = {content_key(f"{self.version}|{kind}", t, None): {"text": v} for t, v in zip(chunk, vecs)}
            self.cache.put_many(batch)
            found.update({k: r["text"] for k, r in batch.items()})
        return np.stack([found[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)


def embed_table(encoder, table: NameTable, langs: tuple[str, ...]) -> dict[str, np.ndarray]:
    """lang -> (P, d) vectors (NaN rows where the language has no name), one encode call for all texts."""
    texts = sorted({n for lang in langs for n in table.names[lang] if n is not None})
    vecs = encoder.encode(texts)
    row = {t: i for i, t in enumerate(texts)}
    out = {}
    for lang in langs:
        v = np.full((len(table.pids), vecs.shape[1]), np.nan, np.float32)
        have = [i for i, n in enumerate(table.names[lang]) if n is not None]
        v[have] = vecs[[row[table.names[lang][i]] for i in have]]
        out[lang] = v
    return out


_PERSIAN_ONLY = set("پچژگکی")  # the 0.3 default's USE gate: Persian letters and no Arabic-only ones
_ARABIC_ONLY = set("ةكيى")


class PersianOnlyGate:
    """USE as the previous default (0.3) gated it: kept out of Persian only (its `looks_persian`)."""

    def __init__(self, use):
        self.enc, self.name, self.dim, self.version = use, use.name, use.dim, use.version

    def unsupported(self, text: str) -> bool:
        chars = set(text)
        return bool(chars & _PERSIAN_ONLY) and not chars & _ARABIC_ONLY

    def encode(self, texts, *, kind: str = "passage") -> np.ndarray:
        return self.enc.encode(texts, kind=kind)


def side_by_side(cache) -> tuple[dict, str]:
    """name -> encoder (parts disk-cached), and the name of today's default among them."""
    from encoders.text import ConcatEncoder
    from encoders.text import load_text_encoder as load_spec
    from mmrec.embedding.text_model import GATED_SPACE, load_text_encoder, previous_tuned_e5_dir

    default = load_text_encoder("default")
    use = DiskCached(load_spec("use-m3"), cache)
    out = {"e5-small": DiskCached(load_spec("e5-small"), cache), "use-m3": use,
           "previous default (0.3): 0.4*e5-tuned-14+0.6*use-m3, fa gate":
               ConcatEncoder([(0.4, DiskCached(load_spec(str(previous_tuned_e5_dir())), cache)),
                              (0.6, PersianOnlyGate(use))])}
    if not isinstance(default, ConcatEncoder):
        out["default"] = DiskCached(default, cache)
        return out, "default"
    parts = [(w, DiskCached(enc, cache)) for w, enc in default.parts]
    tuned = parts[0][1]
    out[f"{tuned.name} (CLDR, all languages)"] = tuned
    out["tuned+use-m3, script gate (half-zero)"] = ConcatEncoder(parts)
    if default.stand_ins:
        out["+ stand-in for unreadable texts"] = ConcatEncoder(parts, stand_ins=default.stand_ins)
    name = f"default: + {len(default.directions)} language directions out" if len(default.directions) else "default"
    out[name] = ConcatEncoder(parts, stand_ins=default.stand_ins, directions=default.directions)
    gated = load_text_encoder(GATED_SPACE)  # the same parts (same versions: their cached vectors are shared)
    out[f"{GATED_SPACE}: query language gate on USE, no directions"] = ConcatEncoder(
        [(w, DiskCached(enc, cache)) for w, enc in gated.parts], stand_ins=gated.stand_ins,
        directions=gated.directions, gates=gated.gates)
    return out, name


def _r1(q: np.ndarray, gallery: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Hit (bool) per query row: its own product's gallery row scores above every other one (NaN rows never win)."""
    sims = np.nan_to_num(q @ gallery.T, nan=-np.inf)
    own = sims[np.arange(len(q)), truth]
    sims[np.arange(len(q)), truth] = -np.inf
    return own > sims.max(1)


def _language_fair(sims: np.ndarray, languages: np.ndarray) -> np.ndarray:
    """/search's ranking of a mixed gallery (mmrec/serving/language_rank.py, its default config): per query,
    the `pool` best entries re-scored by `language_fair_scores`, the rest out of reach."""
    from mmrec.serving.language_rank import LanguageRankConfig, language_fair_scores

    cfg = LanguageRankConfig()
    pool = min(max(cfg.pool, 4 * 10), sims.shape[1])  # /search asks max(pool, 4k) listings; k = 10
    out = np.full_like(sims, -np.inf)
    for r in range(len(sims)):
        top = np.argpartition(-sims[r], pool - 1)[:pool]
        top = top[np.isfinite(sims[r, top])]
        out[r, top] = language_fair_scores(sims[r, top], languages[top], cfg.top, cfg.strength)
    return out


def _mixed_top1(queries: np.ndarray, vecs: dict[str, np.ndarray], q_lang: str, q_idx: np.ndarray,
                gal_langs: tuple[str, ...], search: bool = False) -> tuple[float, float]:
    """(share of queries whose own English title outranks every gallery entry of every other product, share
    whose own product comes first in any language: the query text itself left out, as /search groups by
    product). `queries`: the (Q, d) query vectors of products `q_idx` in `q_lang`; `vecs`: the gallery's.
    search: ranked as /search ranks (`_language_fair`) instead of by plain similarity."""
    P = len(vecs["en"])
    gallery = np.concatenate([vecs[g] for g in gal_langs])              # row = language block * P + product
    owner = np.tile(np.arange(P), len(gal_langs))
    sims = np.nan_to_num(queries @ gallery.T, nan=-np.inf)              # (Q, G)
    if q_lang in gal_langs:  # the query text itself is not a candidate (its product's own listing)
        sims[np.arange(len(q_idx)), gal_langs.index(q_lang) * P + q_idx] = -np.inf
    if search:
        sims = _language_fair(sims, np.repeat(np.array(gal_langs, dtype=object), P))
    mine = owner[None, :] == q_idx[:, None]
    others_best = np.where(mine, -np.inf, sims).max(1)
    en_first = float((sims[np.arange(len(q_idx)), gal_langs.index("en") * P + q_idx] > others_best).mean())
    return en_first, float((np.where(mine, sims, -np.inf).max(1) > others_best).mean())


def measure(encoder, table: NameTable, held: np.ndarray) -> dict:
    """Every figure of one encoder (see the module docstring)."""
    queries = tuple(lang for lang in (*table.catalog, *table.outside) if lang != "en")
    full = tuple(dict.fromkeys(("en", *ISSUE_16, *table.catalog)))
    def embed(langs: tuple[str, ...], rows, kind: str) -> dict[str, np.ndarray]:
        """lang -> (P, d): the names of products `rows` embedded as `kind` (NaN rows elsewhere)."""
        texts = sorted({table.names[lang][i] for lang in langs for i in rows if table.names[lang][i]})
        vecs_all = encoder.encode(texts, kind=kind)
        row = {t: i for i, t in enumerate(texts)}
        out = {}
        for lang in langs:
            v = np.full((len(table.pids), vecs_all.shape[1]), np.nan, np.float32)
            have = [i for i in rows if table.names[lang][i]]  # the same names as `texts` (no empty ones)
            v[have] = vecs_all[[row[table.names[lang][i]] for i in have]]
            out[lang] = v
        return out

    # queries embedded as queries (as /search embeds them), galleries as catalog listings
    query = embed(queries, held, "query")
    vecs = embed(full, range(len(table.pids)), "passage")
    per = {}
    for lang in queries:
        q_idx = np.array([i for i in held if table.names[lang][i] is not None])
        q = query[lang][q_idx]
        res = {"queries": len(q_idx), "r1_to_en": float(_r1(q, vecs["en"], q_idx).mean())}
        if lang in ISSUE_16:
            res["r1_to_others"] = float(np.mean([_r1(q, vecs[y], q_idx).mean() for y in ISSUE_16 if y != lang]))
            res["mixed_top1"], res["mixed_product_first"] = _mixed_top1(q, vecs, lang, q_idx, ("en", *ISSUE_16))
            res["mixed_top1_search"], _ = _mixed_top1(q, vecs, lang, q_idx, ("en", *ISSUE_16), search=True)
        if lang in table.catalog:
            res["mixed_top1_catalog"], res["mixed_product_first_catalog"] = _mixed_top1(q, vecs, lang, q_idx,
                                                                                        table.catalog)
            res["mixed_top1_catalog_search"], _ = _mixed_top1(q, vecs, lang, q_idx, table.catalog, search=True)
        per[lang] = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}

    def mean(key: str, langs) -> float:
        return round(float(np.mean([per[lang][key] for lang in langs])), 4)

    return {"per_language": per,
            "mean_r1_to_en": mean("r1_to_en", table.outside),
            "mean_r1_to_en_issue16": mean("r1_to_en", ISSUE_16),
            "mean_r1_to_en_catalog13": mean("r1_to_en", [lang for lang in table.catalog if lang != "en"]),
            "r1_x_to_y_issue16": mean("r1_to_others", ISSUE_16),
            "mixed_gallery_top1": mean("mixed_top1", ISSUE_16),
            "mixed_gallery_top1_catalog14": mean("mixed_top1_catalog", [l for l in table.catalog if l != "en"]),
            "mixed_gallery_top1_search": mean("mixed_top1_search", ISSUE_16),
            "mixed_gallery_top1_catalog14_search": mean("mixed_top1_catalog_search",
                                                        [l for l in table.catalog if l != "en"]),
            "mixed_product_first": mean("mixed_product_first", ISSUE_16),
            "mixed_product_first_catalog14": mean("mixed_product_first_catalog",
                                                  [l for l in table.catalog if l != "en"])}


def main() -> None:
    import os

    import torch

    from encoders.cache import EmbeddingCache
    from mmrec.paths import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    table = name_table()
    held = table.index(0)
    cache = EmbeddingCache(cache_dir("embeddings") / "bench-text.sqlite")
    encoders, default_name = side_by_side(cache)
    results = {}
    for name, enc in encoders.items():
        start = time.perf_counter()
        print(f"measuring {name} ...", flush=True)
        results[name] = measure(enc, table, held)
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
    d, frozen = results[default_name], results["e5-small"]
    worse = sorted(lang for lang in (*table.outside, *(c for c in table.catalog if c != "en"))
                   if d["per_language"][lang]["r1_to_en"] < frozen["per_language"][lang]["r1_to_en"])
    per = {lang: {**d["per_language"][lang],
                  **{f"r1_to_en[{n}]": results[n]["per_language"][lang]["r1_to_en"] for n in results if n != default_name}}
           for lang in (*table.outside, *(c for c in table.catalog if c != "en"))}
    out = {
        "per_language": per,
        "mean_r1_to_en": d["mean_r1_to_en"],
        "mixed_gallery_top1": d["mixed_gallery_top1"],
        "frozen_e5_mean_r1_to_en": frozen["mean_r1_to_en"],
        "mixed_gallery_top1_catalog14": d["mixed_gallery_top1_catalog14"],
        # the same galleries ranked as an unfiltered /search ranks them (mmrec/serving/language_rank.py)
        "mixed_gallery_top1_search": d["mixed_gallery_top1_search"],
        "mixed_gallery_top1_catalog14_search": d["mixed_gallery_top1_catalog14_search"],
        "languages_worse_than_frozen_e5": worse,
        "default": default_name,
        "encoders": {n: {k: v for k, v in r.items() if k != "per_language"} for n, r in results.items()},
        "_meta": {"languages_outside": list(table.outside), "catalog_languages": list(table.catalog),
                  "held_out_query_products": len(held), "gallery_products": len(table.pids),
                  "mixed_gallery_languages": ["en", *ISSUE_16], "min_cldr_share": MIN_SHARE,
                  "protocol": "queries: products held out from any tuning (sha1(product_id) % 5 == 0); "
                              "galleries: all products", "threads": args.threads,
                  "loadavg_before": [round(x, 2) for x in load_before],
                  "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
    }
    print(f"\nLanguages outside emoji-market's 14 ({len(table.outside)} CLDR languages), {len(held)} held-out "
          f"query products, gallery = all {len(table.pids)}")
    print(f"{'encoder':58s} {'X->en':>6s} {'X->en 16':>8s} {'X->Y 16':>7s} {'mixed 16':>8s} {'/search':>7s} "
          f"{'X->en 13':>8s} {'mixed 14':>8s} {'/search':>7s} {'< e5':>5s}")
    for n, r in results.items():
        below = sum(r["per_language"][lang]["r1_to_en"] < frozen["per_language"][lang]["r1_to_en"] for lang in per)
        print(f"{n[:58]:58s} {r['mean_r1_to_en']:6.3f} {r['mean_r1_to_en_issue16']:8.3f} {r['r1_x_to_y_issue16']:7.3f} "
              f"{r['mixed_gallery_top1']:8.3f} {r['mixed_gallery_top1_search']:7.3f} {r['mean_r1_to_en_catalog13']:8.3f} "
              f"{r['mixed_gallery_top1_catalog14']:8.3f} {r['mixed_gallery_top1_catalog14_search']:7.3f} "
              f"{below:5d}{'  <- default' if n == default_name else ''}")
    print(f"\nper language, X -> en R@1 ({default_name} | frozen e5-small)")
    for lang in per:
        print(f"  {lang:4s} {per[lang]['r1_to_en']:.3f} | {per[lang]['r1_to_en[e5-small]']:.3f}")
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data["languages_outside"] = out
    RESULTS.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote languages_outside to {RESULTS}")


if __name__ == "__main__":
    main()

"""Embedding throughput: the default path (ONNX Runtime) vs today's torch path, side by side in one run, and
the retrieval quality of the default next to its torch twin on held-out products.

    .venv/bin/python bench/embed_throughput.py [--products 60] [--repeats 5] [--crossmodal-folds 0]
                                               [--skip-quality | --keep-quality] [--paths torch,default,onnx_fp32]

Catalog: emoji-market, a product-like catalog where each product has ONE image and a title in 14 languages,
i.e. 14 catalog items sharing one image. A subset of products (every k-th, all their items) keeps the run
short; the items-per-image ratio is the catalog's.
Paths (all at ONE thread, set once at start: torch.set_num_threads(1); ONNX sessions take their pool size
from it when they are made and no call changes it; USE gets 1 too):
  torch       e5-use-aligned:torch + efficientnet-lite0: the default text space with its tuned e5 in torch,
              EfficientNet-Lite0 in torch (the default before this change)
  default     "default" + "default": e5-use-aligned (its tuned e5 by ONNX Runtime, dynamic int8) +
              efficientnet-lite0:onnx (fp32)
  onnx_fp32   e5-use-aligned:onnx + efficientnet-lite0:onnx (all fp32: torch's vectors, for reference)
  onnx_int8   e5-use-aligned:onnx-int8 + efficientnet-lite0:onnx-int8 (only with --paths; int8 images are far
              from fp32's and not faster here)
Each repeat runs every path once: torch and the default back to back (which one first alternates), then the
others. The headline speedup is the median over repeats of the ratio within a repeat (two runs minutes apart
see about the same load on the shared machine); each path's best repeat and every repeat are kept too.
  text     the items' recipe texts through the text encoder, 64 per call (the BatchEmbedder batch)
  image    each distinct image once through encode_full (decode + preprocess + model)
  catalog  ItemEncoder.embed over all items: the `mmrec embed` path with no vector cache and a cold image
           cache (text + each distinct image once + adapter + bridge + fusion); items/s per catalog item.
"speedup_default_vs_torch" = catalog items/s of the default over torch's, same run, same threads.
"length_sorting": the default's ONNX e5 on the same texts with and without sorting by token length.
Quality (same splits as the retrieval benchmarks; the default vs its torch twin):
  fidelity      cosine of each ONNX path's vectors to torch's on the subset (text, its e5 part, image
                features, descriptors; ImageNet top-1 agreement); "batch_dependence": a text alone vs in
                the catalog's calls (dynamic int8 scales activations per call: not bit-reproducible)
  crosslingual  bench/encoders_text.py's protocol (all 479 products, the 90 held out from text tuning as
                queries, 182 language pairs), paired bootstrap over the query products
  languages     bench/encoders_languages.py's X -> en protocol (CLDR names of the held-out products in every
                language e5 is measured in; the stand-in is used where USE cannot read), paired bootstrap over
                the query products
  crossmodal    bench/encoders_crossmodal.py's torch-twin comparison (5 folds, paired over products) read from
                bench/results/encoders.json; or, with --crossmodal-folds N, measured here on N folds
Writes bench/results/embed_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = ROOT / "bench" / "results" / "embed_throughput.json"
ENCODERS_JSON = ROOT / "bench" / "results" / "encoders.json"
PATHS: dict[str, tuple[str, str]] = {
    "torch": ("e5-use-aligned:torch", "efficientnet-lite0"),
    "default": ("default", "default"),
    "onnx_fp32": ("e5-use-aligned:onnx", "efficientnet-lite0:onnx"),
    "onnx_int8": ("e5-use-aligned:onnx-int8", "efficientnet-lite0:onnx-int8"),
}
DEFAULT_PATHS = ("torch", "default", "onnx_fp32")
CANDIDATE = "default"
TEXT_BATCH = 64


def catalog_subset(products: int) -> tuple[list[dict], int, int]:
    """Every k-th emoji-market product with all its items: (items, products kept, products in the catalog)."""
    from mmrec import datasets

    items = datasets.load("emoji-market").items
    pids = sorted(set(items["product_id"]))
    step = max(1, len(pids) // products)
    keep = set(pids[::step][:products])
    return [row for row in items if row["product_id"] in keep], len(keep), len(pids)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------ throughput


def load_paths(names: list[str]) -> dict:
    """name -> ItemEncoder (no vector cache), with the seconds it took to load (exports happen on first use)."""
    from mmrec.embedding.item_encoder import EncoderConfig, load_item_encoder

    out = {}
    for name in names:
        text, image = PATHS[name]
        start = time.perf_counter()
        enc = load_item_encoder(EncoderConfig(text_encoder=text, image_encoder=image), cache_dir=False,
                                batch_size=TEXT_BATCH, progress=False)
        out[name] = {"encoder": enc, "load_seconds": round(time.perf_counter() - start, 1),
                     "text_model": getattr(enc.text_encoder, "version", enc.text_encoder.name),
                     "image_model": getattr(enc.image_encoder, "version", enc.image_encoder.name)}
        print(f"loaded {name}: {enc.text_encoder.name} | {enc.image_encoder.name} ({out[name]['load_seconds']} s)",
              flush=True)
    return out


def pair_order(names: list[str], rep: int) -> list[str]:
    """torch and the candidate back to back (the pair whose ratio is the bar), which one first alternating per
    repeat; the other paths after them, also alternating."""
    pair = ["torch", CANDIDATE] if rep % 2 == 0 else [CANDIDATE, "torch"]
    rest = [n for n in names if n not in pair]
    return pair + (rest if rep % 2 == 0 else rest[::-1])


def throughput(paths: dict, items: list[dict], repeats: int) -> dict:
    any_enc = next(iter(paths.values()))["encoder"]
    pairs = any_enc.inputs(items)
    texts = [t for t, _ in pairs]
    images = list(dict.fromkeys(i for _, i in pairs if i is not None))
    runs: dict[str, dict[str, list[float]]] = {n: {"text": [], "image": [], "catalog": []} for n in paths}
    names = list(paths)
    for rep in range(repeats):
        order = pair_order(names, rep)
        for name in order:
            enc = paths[name]["encoder"]
            runs[name]["text"].append(_seconds(lambda e=enc: [e.text_encoder.encode(texts[s:s + TEXT_BATCH])
                                                              for s in range(0, len(texts), TEXT_BATCH)]))
            runs[name]["image"].append(_seconds(lambda e=enc: e.image_encoder.encode_full(images)))
            enc.multimodal._image_cache.clear()  # cold: every distinct image goes through the model again
            runs[name]["catalog"].append(_seconds(lambda e=enc: e.embed(items)))
            print(f"repeat {rep} {name:10s} text {len(texts) / runs[name]['text'][-1]:7.1f}/s  image "
                  f"{len(images) / runs[name]['image'][-1]:6.1f}/s  catalog {len(items) / runs[name]['catalog'][-1]:7.1f} "
                  f"items/s", flush=True)
    counts = {"text": len(texts), "image": len(images), "catalog": len(items)}
    out = {}
    for name in names:
        row = {"text_encoder": PATHS[name][0], "image_encoder": paths[name]["encoder"].image_encoder.name,
               "text_model": paths[name]["text_model"], "load_seconds": paths[name]["load_seconds"]}
        for what, secs in runs[name].items():
            row[f"{what}_per_s"] = round(counts[what] / min(secs), 1)
            row[f"{what}_per_s_each_repeat"] = [round(counts[what] / s, 1) for s in secs]
        out[name] = row
    # the two-part cost model behind the catalog number: seconds per catalog item = text + image share
    for name in names:
        r = out[name]
        r["catalog_per_s_from_parts"] = round(1 / (1 / r["text_per_s"] + counts["image"] / counts["catalog"] / r["image_per_s"]), 1)
    for name in names:
        if name != "torch":
            each = [runs["torch"]["catalog"][i] / runs[name]["catalog"][i] for i in range(repeats)]
            out[name]["speedup_vs_torch"] = {
                what: round(out[name][f"{what}_per_s"] / out["torch"][f"{what}_per_s"], 2) for what in counts}
            out[name]["speedup_vs_torch_each_repeat"] = [round(r, 2) for r in each]
            out[name]["speedup_vs_torch_catalog_median_of_repeats"] = round(float(np.median(each)), 2)
    return {"paths": out, "counts": counts, "images_per_item": round(counts["image"] / counts["catalog"], 4)}


def length_sorting(paths: dict, items: list[dict], repeats: int) -> dict:
    """The default's ONNX e5 part on the catalog's texts, 64 per call, with and without sorting each call's
    texts by token length (the session is shared; only the order changes)."""
    enc = paths[CANDIDATE]["encoder"].text_encoder
    e5 = enc.parts[0][1] if hasattr(enc, "parts") else enc
    if not hasattr(e5, "sort_by_length"):
        return {"skipped": f"{e5.name} is not an ONNX text encoder"}
    texts = [t for t, _ in paths[CANDIDATE]["encoder"].inputs(items)]
    rng = np.random.default_rng(0)
    texts = [texts[i] for i in rng.permutation(len(texts))]  # a catalog's order: lengths mixed
    secs: dict[str, list[float]] = {"sorted": [], "unsorted": []}
    try:
        for _ in range(repeats):
            for mode in ("sorted", "unsorted"):
                e5.sort_by_length = mode == "sorted"
                secs[mode].append(_seconds(lambda: [e5.encode(texts[s:s + TEXT_BATCH])
                                                    for s in range(0, len(texts), TEXT_BATCH)]))
    finally:
        e5.sort_by_length = True
    rate = {m: round(len(texts) / min(v), 1) for m, v in secs.items()}
    return {"encoder": e5.name, "texts": len(texts), "call_size": TEXT_BATCH, "session_batch": e5.batch_size,
            "texts_per_s": rate, "speedup": round(rate["sorted"] / rate["unsorted"], 2),
            "how": "texts shuffled; best of the repeats per mode"}


# --------------------------------------------------------------------------------------------- quality


def fidelity(paths: dict, items: list[dict]) -> dict:
    """Cosine of each ONNX path's vectors to torch's (text: the combination and its e5 part; image: features,
    descriptors; ImageNet top-1 agreement)."""
    ref = paths["torch"]["encoder"]
    pairs = ref.inputs(items)
    texts = [t for t, _ in pairs][::3]
    images = list(dict.fromkeys(i for _, i in pairs if i is not None))
    want_text = ref.text_encoder.encode(texts)
    want_e5 = ref.text_encoder.parts[0][1].encode(texts)
    want_img = ref.image_encoder.encode_full(images)
    out = {}
    for name, p in paths.items():
        if name == "torch":
            continue
        enc = p["encoder"]
        text, e5 = enc.text_encoder.encode(texts), enc.text_encoder.parts[0][1].encode(texts)
        img = enc.image_encoder.encode_full(images)
        cos = {"text": (text * want_text).sum(1), "text_e5_part": (e5 * want_e5).sum(1),
               "image_features": (img.features * want_img.features).sum(1),
               "image_descriptors": (img.descriptors * want_img.descriptors).sum(1)}
        out[name] = {k: {"min": round(float(v.min()), 5), "mean": round(float(v.mean()), 5)} for k, v in cos.items()}
        out[name]["imagenet_top1_agreement"] = round(float((img.probs.argmax(1) == want_img.probs.argmax(1)).mean()), 4)
    out["_meta"] = {"texts": len(texts), "images": len(images)}
    return out


def batch_dependence(paths: dict, items: list[dict], n: int = 120) -> dict:
    """Cosine between a text's vector embedded alone and embedded in the catalog's calls of 64 (what changes
    with the batch). Dynamic int8 quantises activations with one scale per session call, so an int8 vector
    depends a little on its batch neighbours; fp32 (torch, ONNX) does not."""
    texts = [t for t, _ in paths[CANDIDATE]["encoder"].inputs(items)]
    out = {}
    for name, p in paths.items():
        enc = p["encoder"].text_encoder
        batched = np.concatenate([enc.encode(texts[s:s + TEXT_BATCH]) for s in range(0, len(texts), TEXT_BATCH)])
        pick = np.linspace(0, len(texts) - 1, n).astype(int)
        alone = np.stack([enc.encode([texts[i]])[0] for i in pick])
        c = (alone * batched[pick]).sum(1)
        out[name] = {"min": round(float(c.min()), 5), "mean": round(float(c.mean()), 5)}
    out["_meta"] = {"texts": n, "how": "each text alone vs within the calls of 64 the catalog path makes"}
    return out


def crosslingual(paths: dict) -> dict:
    """bench/encoders_text.py's protocol per path (text encoders only), paired against torch."""
    from encoders_text import LANGS, paired_bootstrap, parallel_titles, per_query_hits, recall_matrix, summarise

    from mmrec.embedding.text_model import held_out_from_tuning

    pids, titles = parallel_titles()
    held = np.array([i for i, p in enumerate(pids) if held_out_from_tuning(p)])
    flat = [t for row in titles for t in row]
    out, per_query = {}, {}
    for name, p in paths.items():
        start = time.perf_counter()
        vecs = p["encoder"].text_encoder.encode(flat).reshape(len(pids), len(LANGS), -1)
        out[name] = {**summarise(recall_matrix(vecs, held)), "text_encoder": PATHS[name][0],
                     "seconds": round(time.perf_counter() - start, 1)}
        per_query[name] = {k: np.nanmean(per_query_hits(vecs, held, k), axis=(0, 1)) for k in (1, 10)}
    for name in out:
        if name != "torch":
            out[name]["vs_torch_mean_r1"] = paired_bootstrap(per_query["torch"][1], per_query[name][1])
            out[name]["vs_torch_mean_r10"] = paired_bootstrap(per_query["torch"][10], per_query[name][10])
    out["_meta"] = {"products": len(pids), "held_out_queries": len(held), "pairs": len(LANGS) * (len(LANGS) - 1),
                    "protocol": "bench/encoders_text.py: queries held out from text tuning, gallery all products; "
                                "paired bootstrap over the query products (2000 resamples)"}
    return out


def languages(paths: dict) -> dict:
    """bench/encoders_languages.py's X -> en protocol per path (parts disk-cached as that bench does), paired
    against torch over the query products (each product's hit rate over the languages it is named in)."""
    from encoders_languages import DiskCached, _r1, embed_table, name_table

    from encoders.cache import EmbeddingCache
    from encoders.text import ConcatEncoder
    from encoders_text import paired_bootstrap
    from mmrec.paths import cache_dir

    table = name_table()
    held = table.index(0)
    langs = tuple(lang for lang in (*table.catalog, *table.outside) if lang != "en")
    cache = EmbeddingCache(cache_dir("embeddings") / "bench-text.sqlite")
    out, per_product = {}, {}
    sub = type(table)(table.pids, {lang: [n if (i in set(held) or lang == "en") else None
                                          for i, n in enumerate(table.names[lang])] for lang in ("en", *langs)},
                      table.catalog, table.outside)
    for name, p in paths.items():
        if name == "onnx_int8":
            continue
        enc = p["encoder"].text_encoder
        if isinstance(enc, ConcatEncoder):  # parts cached on disk by version, as encoders_languages.py does
            enc = ConcatEncoder([(w, DiskCached(e, cache)) for w, e in enc.parts], stand_ins=enc.stand_ins,
                                directions=enc.directions, gates=enc.gates)
        start = time.perf_counter()
        vecs = embed_table(enc, sub, ("en", *langs))
        hits = np.full((len(held), len(langs)), np.nan)
        r1 = {}
        for j, lang in enumerate(langs):
            rows = np.array([k for k, i in enumerate(held) if table.names[lang][i] is not None])
            h = _r1(vecs[lang][held[rows]], vecs["en"], held[rows])
            hits[rows, j] = h
            r1[lang] = round(float(h.mean()), 4)
        per_product[name] = np.nanmean(hits, axis=1)
        out[name] = {"mean_r1_to_en_outside": round(float(np.mean([r1[x] for x in table.outside])), 4),
                     "mean_r1_to_en_catalog13": round(float(np.mean([r1[x] for x in langs if x in table.catalog])), 4),
                     "r1_to_en": r1, "text_encoder": PATHS[name][0], "seconds": round(time.perf_counter() - start, 1)}
    for name in out:
        if name != "torch":
            out[name]["vs_torch_r1_to_en"] = paired_bootstrap(per_product["torch"], per_product[name])
            out[name]["languages_worse_than_torch_by_over_0.05"] = sorted(
                lang for lang in langs if out[name]["r1_to_en"][lang] < out["torch"]["r1_to_en"][lang] - 0.05)
    out["_meta"] = {"languages_outside": len(table.outside), "catalog_languages": len(table.catalog) - 1,
                    "held_out_query_products": len(held), "gallery": f"all {len(table.pids)} English titles",
                    "protocol": "bench/encoders_languages.py's X -> en R@1; paired bootstrap over query products "
                                "(each: mean hit over the languages naming it; 2000 resamples)"}
    return out


def crossmodal_from_encoders_json() -> dict | None:
    """The torch-twin comparison bench/encoders_crossmodal.py wrote (5 folds, paired over products)."""
    if not ENCODERS_JSON.exists():
        return None
    data = json.loads(ENCODERS_JSON.read_text())
    if "crossmodal_vs_torch_twin" not in data:
        return None
    cmp = data["crossmodal_vs_torch_twin"]
    default = data.get("crossmodal", {}).get("default", {})
    return {"from": "bench/results/encoders.json (bench/encoders_crossmodal.py)", "torch_twin": cmp.get("torch_twin"),
            "default_encoders": f"{data.get('crossmodal_setup', {}).get('text_encoder')} | "
                                f"{data.get('crossmodal_setup', {}).get('image_encoder')}",
            "paired": cmp["paired"], "within_noise": cmp["within_noise"],
            "default_t2i_r10_mean": default.get("t2i_r10_mean"), "how": cmp.get("how")}


def crossmodal(paths: dict, folds_used: int) -> dict:
    """bench/encoders_crossmodal.py's held-out-products cross-validation (default mix) on the first folds."""
    from encoders_crossmodal import LANGS, crossval, load_catalog, product_folds

    from encoders.adapter import AdapterConfig
    from encoders.adapter_training import catalog_image_features
    from encoders.bridge import ClassNameBridge
    from encoders.multimodal import ModalityMix
    from mmrec.paths import cache_dir

    products, titles, _ = load_catalog()
    config, fusion = AdapterConfig(seed=0), ModalityMix()
    folds = product_folds(len(products), 5, 0)[:folds_used]
    out = {}
    for name, p in paths.items():
        if name in ("onnx_int8", "onnx_fp32"):  # int8 images are far from torch's, fp32 equals it (see fidelity)
            continue
        text, image = p["encoder"].text_encoder, p["encoder"].image_encoder
        start = time.perf_counter()
        views = catalog_image_features(products, image, augment_views=config.augment_views, seed=config.seed,
                                       cache_dir=cache_dir("adapters", "views"), progress=False)
        title_vecs = text.encode(list(titles.reshape(-1)), kind="query").reshape(len(products), len(LANGS), -1)
        bridge = ClassNameBridge(text, image.class_names())
        bridge_vecs = bridge.transform(views["probs"][np.flatnonzero(views["is_original"])])
        res, _, _ = crossval(folds, views, title_vecs, bridge_vecs, text.name, config, fusion, all_images=True,
                                  desc=f"crossmodal {name}")
        held = res["default"]["held_out"]
        out[name] = {"t2i_r1_mean": round(held["t2i_r1_mean"], 4), "t2i_r10_mean": round(held["t2i_r10_mean"], 4),
                     "i2t_r1": round(held["i2t_r1_mean"], 4), "i2t_r10": round(held["i2t_r10_mean"], 4),
                     "all_images_t2i_r10": round(res["default"]["all_images"]["t2i_r10_mean"], 4),
                     "seconds": round(time.perf_counter() - start, 1)}
    n = int(sum(len(f) for f in folds))
    base = out["torch"]
    for name in out:
        if name != "torch":
            # binomial standard error over the held-out products (languages of one product are not independent)
            out[name]["delta_vs_torch"] = {k: round(out[name][k] - base[k], 4) for k in base if k != "seconds"}
            out[name]["se_over_products"] = {k: round(float(np.sqrt(base[k] * (1 - base[k]) / n)), 4)
                                             for k in base if k != "seconds"}
            out[name]["within_noise"] = all(abs(out[name]["delta_vs_torch"][k]) <= out[name]["se_over_products"][k]
                                            for k in out[name]["delta_vs_torch"])
    out["_meta"] = {"folds_used": f"{folds_used} of 5 (seed 0, bench/encoders_crossmodal.py's split)",
                    "held_out_products": n, "method": "default mix (ModalityMix())",
                    "noise": "binomial standard error over held-out products; within noise = |delta| <= 1 SE"}
    return out


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=60, help="emoji-market products (x14 items each)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS), help=f"of {', '.join(PATHS)}")
    parser.add_argument("--crossmodal-folds", type=int, default=0,
                        help="measure crossmodal here on this many of the 5 folds (0: read bench/encoders_crossmodal.py's "
                             "torch-twin comparison from bench/results/encoders.json)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--keep-quality", action="store_true",
                        help="skip the quality part and keep the quality keys of the existing --out file")
    parser.add_argument("--only-batch-dependence", action="store_true",
                        help="measure only fidelity.batch_dependence and merge it into the existing --out file")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    if not {"torch", CANDIDATE} <= set(names) or set(names) - set(PATHS):
        parser.error(f"--paths needs torch and {CANDIDATE}, from {', '.join(PATHS)}")

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)  # once, for the whole process: ONNX sessions read it when they are made
    # numpy's BLAS too (the class-name bridge, the adapter's memory): at its default 2 threads a (5, 1000) @
    # (1000, 896) product took ~30 ms instead of ~2 ms on the busy 2-core box, in every path alike
    blas = threadpool_limits(1, user_api="blas")  # noqa: F841 (kept for the whole run)
    started, load_before = time.time(), os.getloadavg()
    items, n_products, n_all = catalog_subset(args.products)
    print(f"catalog: {len(items)} emoji-market items = {n_products} of {n_all} products x their languages, "
          f"one shared image per product", flush=True)
    paths = load_paths(names)
    for p in paths.values():
        p["encoder"].text_encoder.set_threads(1)  # USE keeps its own pool; ONNX: no new session (already 1)
    if args.only_batch_dependence:
        data = json.loads(Path(args.out).read_text())
        data.setdefault("fidelity", {})["batch_dependence"] = batch_dependence(paths, items)
        data["fidelity"]["batch_dependence"]["_meta"]["run_at"] = time.strftime("%Y-%m-%d %H:%M")
        Path(args.out).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        print(json.dumps(data["fidelity"]["batch_dependence"], indent=1))
        return 0
    tp = throughput(paths, items, args.repeats)
    result: dict = {
        "speedup_default_vs_torch": tp["paths"][CANDIDATE]["speedup_vs_torch_catalog_median_of_repeats"],
        "speedup_default_vs_torch_best_of_repeats": tp["paths"][CANDIDATE]["speedup_vs_torch"]["catalog"],
        "speedup_how": "catalog items/s, default over torch: median over repeats of the ratio of the two runs "
                       "made back to back in that repeat (headline); also the ratio of each path's best repeat",
        "default_candidate": {"path": CANDIDATE, "text_encoder": PATHS[CANDIDATE][0],
                              "image_encoder": PATHS[CANDIDATE][1],
                              "resolves_to": {"text": paths[CANDIDATE]["text_model"],
                                              "image": paths[CANDIDATE]["image_model"]},
                              "torch_twin": {"text": PATHS["torch"][0], "image": PATHS["torch"][1]}},
        "throughput": tp,
        "length_sorting": length_sorting(paths, items, max(2, args.repeats // 2)),
        "catalog": {"name": "emoji-market (subset)", "items": len(items), "products": n_products,
                    "products_in_catalog": n_all, "images": tp["counts"]["image"],
                    "shape": "each product: one image, a title in 14 languages = 14 items sharing the image"},
    }
    print(f"length sorting: {result['length_sorting']}", flush=True)
    kept = json.loads(Path(args.out).read_text()) if args.keep_quality and Path(args.out).exists() else {}
    for key in ("fidelity", "crosslingual", "languages", "crossmodal", "default_within_noise", "quality_run_at"):
        if key in kept:
            result[key] = kept[key]
    if kept:
        result["quality_from"] = (f"an earlier run ({kept.get('quality_run_at', kept.get('setup', {}).get('run_at', '?'))}):"
                                  f" timings do not affect it")
    if not (args.skip_quality or args.keep_quality):
        result["fidelity"] = fidelity(paths, items)
        result["fidelity"]["batch_dependence"] = batch_dependence(paths, items)
        print(json.dumps(result["fidelity"], indent=1), flush=True)
        result["crosslingual"] = crosslingual(paths)
        print(json.dumps({k: {m: v.get(m) for m in ("mean_r1", "mean_r10", "vs_torch_mean_r1")}
                          for k, v in result["crosslingual"].items() if not k.startswith("_")}, indent=1), flush=True)
        result["languages"] = languages(paths)
        print(json.dumps({k: {m: v.get(m) for m in ("mean_r1_to_en_outside", "mean_r1_to_en_catalog13",
                                                   "vs_torch_r1_to_en")}
                          for k, v in result["languages"].items() if not k.startswith("_")}, indent=1), flush=True)
        if args.crossmodal_folds:
            result["crossmodal"] = crossmodal(paths, args.crossmodal_folds)
            cm_ok = result["crossmodal"][CANDIDATE]["within_noise"]
        else:
            result["crossmodal"] = crossmodal_from_encoders_json() or {"missing": "run bench/encoders_crossmodal.py"}
            cm_ok = result["crossmodal"].get("within_noise")
        print(json.dumps(result["crossmodal"], indent=1), flush=True)
        cand_text, cand_lang = result["crosslingual"][CANDIDATE], result["languages"][CANDIDATE]
        result["default_within_noise"] = bool(cand_text["vs_torch_mean_r1"]["within_noise"]
                                              and cand_text["vs_torch_mean_r10"]["within_noise"]
                                              and cand_lang["vs_torch_r1_to_en"]["within_noise"] and cm_ok)
        result["quality_run_at"] = time.strftime("%Y-%m-%d %H:%M")
    result["setup"] = {
        "threads": 1, "threads_how": "torch.set_num_threads(1) and numpy BLAS 1 (threadpoolctl) once; ONNX sessions "
                                     "sized from torch's count when made (never per call); USE 1",
        "pipeline": "every path runs the same ItemEncoder/MultimodalEncoder code (each distinct image file "
                    "decoded once per call, each distinct picture encoded once); only the encoders differ",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, SHARED with other "
                   f"engineers' jobs while this ran (load average at start {load_before[0]:.1f}, "
                   f"at end {os.getloadavg()[0]:.1f}): absolute rates are low and noisy, ratios are the point",
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "repeats": args.repeats, "run_at": time.strftime("%Y-%m-%d %H:%M"),
        "order": "each repeat: torch and the default back to back (alternating which is first), then the rest",
        "text_batch": TEXT_BATCH, "seconds_total": round(time.time() - started, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print_table(result, args.out)
    return 0


def print_table(result: dict, out: str | Path = RESULTS) -> None:
    tp = result["throughput"]
    c = tp["counts"]
    print(f"\n{c['catalog']} items, {c['image']} distinct images ({tp['images_per_item']:.3f} images per item), 1 thread")
    print(f"{'path':10s} {'text/s':>8s} {'images/s':>9s} {'catalog items/s':>16s} {'vs torch: best':>15s} "
          f"{'paired median':>14s}   (best repeat per path)")
    for name, r in tp["paths"].items():
        best = r.get("speedup_vs_torch", {}).get("catalog", 1.0)
        paired = r.get("speedup_vs_torch_catalog_median_of_repeats", 1.0)
        print(f"{name:10s} {r['text_per_s']:8.1f} {r['image_per_s']:9.1f} {r['catalog_per_s']:16.1f} {best:14.2f}x "
              f"{paired:13.2f}x")
    print(f"speedup_default_vs_torch = {result['speedup_default_vs_torch']:.2f} (median of paired repeats; "
          f"best-of-repeats ratio {result['speedup_default_vs_torch_best_of_repeats']:.2f}; bar >= 3)")
    if "default_within_noise" in result:
        print(f"default retrieval within noise of its torch twin: {result['default_within_noise']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())

"""Cross-modal retrieval on HELD-OUT products, two cold-start stress cases, and zero-shot Fashion-MNIST.

    python bench/encoders_crossmodal.py [--text-encoder default] [--folds 5] [--zeroshot-images 500]

emoji-market (479 product-like emoji, titles in 14 languages, Noto Color Emoji renders):
  * held-out products: seeded product-level k-fold; the adapter (network + memory) is trained on the other
    folds only; text(language L) -> image and image -> text(L) Recall@1/@10 among the held-out products.
  * (a) new product TYPES: k-fold over Unicode subgroups, so whole types are unseen in training.
  * (b) held-out products searched among ALL 479 images, where the trained ones compete with them.
Methods side by side: random (analytic k/n), the training-free ImageNet class-name bridge (the baseline),
the adapter's network alone, its memory alone, and the default mix (ModalityMix weights).
Text side: mmrec's default text encoder unless --text-encoder says otherwise. Its e5 part is tuned on the
TITLES (never the images) of the ~80% of products outside `held_out_from_tuning`; the adapter's folds here
are drawn independently of that split.
Zero-shot: Fashion-MNIST test images (real product photos, Debian `dataset-fashion-mnist`) classified by
the nearest class name, names written in 14 languages, with the default adapter trained on emoji-market.
Torch twin (default on; --no-torch-twin skips it): the default encoders run by ONNX Runtime (text: the tuned e5
in int8; image: EfficientNet-Lite0 in fp32) are measured next to their torch twin (`default:torch` +
`efficientnet-lite0`) on the SAME product folds, with a paired bootstrap over the held-out products
("crossmodal_vs_torch_twin"). The image view features are cached by the weights they come from, so both read
the same features (ONNX fp32 reproduces torch's to ~1e-6: bench/embed_throughput.py "fidelity").
Writes keys "crossmodal", "crossmodal_default", "crossmodal_baseline", "crossmodal_setup", "zeroshot",
"crossmodal_torch_twin", "crossmodal_vs_torch_twin" into bench/results/encoders.json (other keys are kept) and
prints tables.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from encoders.adapter import AdapterConfig  # noqa: E402
from encoders.adapter_training import catalog_image_features, train_adapter  # noqa: E402
from encoders.bridge import ClassNameBridge  # noqa: E402
from encoders.multimodal import ModalityMix  # noqa: E402
from encoders.image import load_image_encoder  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "encoders.json"
LANGS = ("en", "ar", "de", "es", "fa", "fr", "id", "it", "ja", "ko", "pt", "ru", "tr", "zh")
FASHION = Path("/usr/share/datasets/fashion-mnist")
# Fashion-MNIST's 10 classes in 14 languages (written for this benchmark; plain shop words).
FASHION_NAMES: dict[str, list[str]] = {
    "en": ["t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"],
    "de": ["T-Shirt", "Hose", "Pullover", "Kleid", "Mantel", "Sandale", "Hemd", "Turnschuh", "Tasche", "Stiefelette"],
    "es": ["camiseta", "pantalones", "jersey", "vestido", "abrigo", "sandalia", "camisa", "zapatilla", "bolso", "botín"],
    "fr": ["t-shirt", "pantalon", "pull-over", "robe", "manteau", "sandale", "chemise", "basket", "sac", "bottine"],
    "it": ["maglietta", "pantaloni", "maglione", "vestito", "cappotto", "sandalo", "camicia", "scarpa da ginnastica",
           "borsa", "stivaletto"],
    "pt": ["camiseta", "calça", "suéter", "vestido", "casaco", "sandália", "camisa", "tênis", "bolsa", "bota"],
    "ru": ["футболка", "брюки", "пуловер", "платье", "пальто", "сандалия", "рубашка", "кроссовка", "сумка", "ботильон"],
    "tr": ["tişört", "pantolon", "kazak", "elbise", "palto", "sandalet", "gömlek", "spor ayakkabı", "çanta", "bot"],
    "id": ["kaus", "celana panjang", "sweter", "gaun", "mantel", "sandal", "kemeja", "sepatu kets", "tas", "sepatu bot"],
    "ar": ["تي شيرت", "بنطال", "كنزة", "فستان", "معطف", "صندل", "قميص", "حذاء رياضي", "حقيبة", "حذاء برقبة"],
    "fa": ["تی‌شرت", "شلوار", "پلیور", "پیراهن زنانه", "پالتو", "صندل", "پیراهن", "کفش ورزشی", "کیف", "نیم‌بوت"],
    "ja": ["Tシャツ", "ズボン", "セーター", "ドレス", "コート", "サンダル", "シャツ", "スニーカー", "バッグ", "ショートブーツ"],
    "ko": ["티셔츠", "바지", "풀오버", "원피스", "코트", "샌들", "셔츠", "운동화", "가방", "앵클부츠"],
    "zh": ["T恤", "裤子", "套头衫", "连衣裙", "外套", "凉鞋", "衬衫", "运动鞋", "包", "短靴"],
}


def norm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ranks(sim: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of the true column of each row; ties count against the truth."""
    true = sim[np.arange(len(sim)), truth][:, None]
    return (sim >= true).sum(1) - 1


# --------------------------------------------------------------------------------------------- data


def load_catalog():
    from mmrec import datasets
    from mmrec.embedding.image_adapter import catalog_products

    items = datasets.load("emoji-market").items
    products = catalog_products(items)
    index = {p.key: i for i, p in enumerate(products)}
    title_of = np.full((len(products), len(LANGS)), "", dtype=object)
    category = [""] * len(products)
    for row in items:
        i = index.get(row["product_id"])
        if i is not None and row["language"] in LANGS:
            title_of[i, LANGS.index(row["language"])] = row["title"]
            category[i] = row["category"]
    keep = np.array([all(title_of[i]) for i in range(len(products))])
    return [p for p, k in zip(products, keep) if k], title_of[keep], [c for c, k in zip(category, keep) if k]


def product_folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(perm[i::k]) for i in range(k)]


def type_folds(category: list[str], k: int, seed: int) -> list[np.ndarray]:
    groups = sorted(set(category))
    order = np.random.default_rng(seed).permutation(len(groups))
    folds = []
    for i in range(k):
        held = {groups[j] for j in order[i::k]}
        folds.append(np.array([p for p, c in enumerate(category) if c in held]))
    return folds


# ------------------------------------------------------------------------------------------ metrics


def retrieval(img: np.ndarray, text: np.ndarray, test: np.ndarray, gallery: np.ndarray | None = None) -> dict:
    """img: (P, D) per product; text: (P, L, D). Per language: text->image among `gallery` images (default:
    the test products) and image->text among the test products' titles in that language."""
    gallery = test if gallery is None else gallery
    pos = {p: i for i, p in enumerate(gallery)}
    truth = np.array([pos[p] for p in test])
    out = {}
    for li, lang in enumerate(LANGS):
        q = text[test, li]
        r_t2i = ranks(q @ img[gallery].T, truth)
        r_i2t = ranks(img[test] @ q.T, np.arange(len(test)))
        out[lang] = {"t2i_r1": float((r_t2i < 1).mean()), "t2i_r10": float((r_t2i < 10).mean()),
                     "i2t_r1": float((r_i2t < 1).mean()), "i2t_r10": float((r_i2t < 10).mean())}
    return out


def query_hits(img: np.ndarray, text: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """Per held-out product and language (len(test), L): hit of text->image and image->text at 1 and 10 among
    the test products (what `retrieval` averages), for paired comparisons."""
    out = {m: np.zeros((len(test), len(LANGS))) for m in ("t2i_r1", "t2i_r10", "i2t_r1", "i2t_r10")}
    for li in range(len(LANGS)):
        q = text[test, li]
        r_t2i = ranks(q @ img[test].T, np.arange(len(test)))
        r_i2t = ranks(img[test] @ q.T, np.arange(len(test)))
        out["t2i_r1"][:, li], out["t2i_r10"][:, li] = r_t2i < 1, r_t2i < 10
        out["i2t_r1"][:, li], out["i2t_r10"][:, li] = r_i2t < 1, r_i2t < 10
    return out


def average(per_fold: list[dict]) -> dict:
    """Mean over folds (weighted by fold size) of per-language metrics, plus means over languages."""
    weights = np.array([f["n"] for f in per_fold], dtype=float)
    langs = {lang: {m: float(np.average([f["r"][lang][m] for f in per_fold], weights=weights))
                    for m in per_fold[0]["r"][lang]} for lang in LANGS}
    summary = {f"{m}_mean": float(np.mean([langs[lang][m] for lang in LANGS])) for m in langs["en"]}
    return {**summary, "per_language": {lang: {m: round(v, 4) for m, v in d.items()} for lang, d in langs.items()}}


# ------------------------------------------------------------------------------------------ methods


def method_vectors(adapter, feats, descs, bridge_vecs, fusion: ModalityMix) -> dict[str, np.ndarray]:
    net = adapter.transform(feats)
    mem = adapter.recall(descs)
    mix = norm(fusion.network_weight * net + fusion.memory_weight * mem + fusion.bridge_weight * bridge_vecs)
    return {"bridge": bridge_vecs, "adapter_network": net, "adapter_memory": mem,
            "adapter_network+bridge": norm(net + 0.5 * bridge_vecs), "default": mix}


def crossval(folds, views, title_vecs, bridge_vecs, text_name, config, fusion, *, all_images: bool, desc: str,
             untuned: np.ndarray | None = None, hits: dict | None = None):
    """untuned: a mask of products whose titles the text encoder was never tuned on; text->image is also
    measured with only those as queries (same gallery), to show what tuning on the others' titles adds.
    hits: if given, filled with the default mix's per-(product, language) hits ({metric: (P, L)}, `query_hits`)."""
    from tqdm.auto import tqdm

    n_products, n_langs, dim = title_vecs.shape
    original = views["is_original"]
    clean_rows = np.flatnonzero(original)  # one per product, in product order
    feats, descs = views["features"][clean_rows], views["descriptors"][clean_rows]
    flat_titles = title_vecs.reshape(-1, dim)
    title_product = np.repeat(np.arange(n_products), n_langs)
    results: dict[str, dict[str, list]] = {}
    seconds = []
    for test in tqdm(folds, desc=desc, unit="fold"):
        train = np.setdiff1d(np.arange(n_products), test)
        vmask = np.isin(views["view_product"], train)
        tmask = np.isin(title_product, train)
        started = time.time()
        adapter = train_adapter(views["features"][vmask], views["view_product"][vmask], flat_titles[tmask],
                                title_product[tmask], image_encoder="x", text_encoder=text_name, config=config,
                                descriptors=descs[train], descriptor_product=train, progress=False)
        seconds.append(time.time() - started)
        for name, vecs in method_vectors(adapter, feats, descs, bridge_vecs, fusion).items():
            if hits is not None and name == "default":
                for metric, h in query_hits(vecs, title_vecs, test).items():
                    hits.setdefault(metric, np.full((n_products, n_langs), np.nan))[test] = h
            entry = results.setdefault(name, {"held_out": [], "all_images": []})
            entry["held_out"].append({"n": len(test), "r": retrieval(vecs, title_vecs, test)})
            if all_images:
                entry["all_images"].append({"n": len(test), "r": retrieval(vecs, title_vecs, test, np.arange(n_products))})
            if untuned is not None:
                queries = test[untuned[test]]
                entry.setdefault("untuned_queries", []).append(
                    {"n": len(queries), "r": retrieval(vecs, title_vecs, queries, test)})
    out = {name: {k: average(v) for k, v in entry.items() if v} for name, entry in results.items()}
    return out, float(np.mean(seconds)), float(np.mean([len(f) for f in folds]))


# ------------------------------------------------------------------------------------------ zero-shot


def fashion_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    def idx(path: Path, offset: int) -> np.ndarray:
        with gzip.open(path, "rb") as fh:
            return np.frombuffer(fh.read(), dtype=np.uint8, offset=offset)

    images = idx(FASHION / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = idx(FASHION / "t10k-labels-idx1-ubyte.gz", 8)
    rng = np.random.default_rng(seed)
    per_class = max(1, n // 10)
    pick = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])
    return images[pick], labels[pick]


def zeroshot(text_encoder, image_encoder, adapter, fusion: ModalityMix, bridge: ClassNameBridge, n: int, seed: int
             ) -> dict:
    from PIL import Image

    if not (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        return {"skipped": "Debian package dataset-fashion-mnist is not installed"}
    images, labels = fashion_mnist(n, seed)
    out = {"images": int(len(labels)), "classes": 10, "chance": 0.1, "languages": list(FASHION_NAMES),
           "note": "28x28 grey photos upscaled to 224; 'inverted' = dark product on white, like a packshot"}
    class_vecs = {lang: text_encoder.encode(names, kind="query") for lang, names in FASHION_NAMES.items()}
    for variant in ("as_is", "inverted"):
        pil = [Image.fromarray(255 - im if variant == "inverted" else im, "L").convert("RGB") for im in images]
        full = image_encoder.encode_full(pil, progress=True)
        bridge_vecs = bridge.transform(full.probs)
        methods = method_vectors(adapter, full.features, full.descriptors, bridge_vecs, fusion)
        for name in ("bridge", "adapter_network", "adapter_memory", "default"):
            acc = {lang: float((np.argmax(methods[name] @ cv.T, axis=1) == labels).mean())
                   for lang, cv in class_vecs.items()}
            out.setdefault(variant, {})[name] = {"mean": float(np.mean(list(acc.values()))),
                                                 "per_language": {k: round(v, 4) for k, v in acc.items()}}
    return out


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-encoder", default="default")
    parser.add_argument("--image-encoder", default="default", help="image encoder spec [default: efficientnet-lite0:onnx]")
    parser.add_argument("--no-torch-twin", dest="torch_twin", action="store_false",
                        help="skip the torch twin of the default encoders (see the module docstring)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zeroshot-images", type=int, default=500, help="Fashion-MNIST test images (0 = skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--steps", type=int, default=None, help="adapter training steps (default: AdapterConfig)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from mmrec.embedding.text_model import held_out_from_tuning, load_text_encoder
    from mmrec.embedding.image_adapter import default_adapter
    from mmrec.paths import cache_dir

    started = time.time()
    text_encoder = load_text_encoder(args.text_encoder)
    image_encoder = load_image_encoder(args.image_encoder)
    config, fusion = AdapterConfig(seed=args.seed), ModalityMix()
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    products, titles, category = load_catalog()
    print(f"emoji-market: {len(products)} products x {len(LANGS)} languages; text encoder {text_encoder.name}")

    t = time.time()
    views = catalog_image_features(products, image_encoder, augment_views=config.augment_views, seed=config.seed,
                                   cache_dir=cache_dir("adapters", "views"))
    image_seconds = time.time() - t
    t = time.time()
    title_vecs = text_encoder.encode(list(titles.reshape(-1)), kind="query").reshape(len(products), len(LANGS), -1)
    text_seconds = time.time() - t
    bridge = ClassNameBridge(text_encoder, image_encoder.class_names())
    clean_rows = np.flatnonzero(views["is_original"])
    bridge_vecs = bridge.transform(views["probs"][clean_rows])

    untuned = np.array([held_out_from_tuning(p.key) for p in products])
    default_hits: dict = {}
    prod, train_s, fold_n = crossval(product_folds(len(products), args.folds, args.seed), views, title_vecs,
                                     bridge_vecs, text_encoder.name, config, fusion, all_images=True,
                                     desc="held-out products", untuned=untuned, hits=default_hits)
    types, _, type_n = crossval(type_folds(category, args.folds, args.seed), views, title_vecs, bridge_vecs,
                                text_encoder.name, config, fusion, all_images=False, desc="held-out types")

    crossmodal: dict = {"random": {"t2i_r1_mean": 1 / fold_n, "t2i_r10_mean": min(1.0, 10 / fold_n),
                                   "i2t_r1": 1 / fold_n, "i2t_r10": min(1.0, 10 / fold_n),
                                   "note": "analytic: k / held-out gallery size",
                                   "all_images": {"t2i_r1_mean": 1 / len(products),
                                                  "t2i_r10_mean": 10 / len(products)}}}
    for name, res in prod.items():
        held = res["held_out"]
        crossmodal[name] = {"t2i_r1_mean": held["t2i_r1_mean"], "t2i_r10_mean": held["t2i_r10_mean"],
                            "i2t_r1": held["i2t_r1_mean"], "i2t_r10": held["i2t_r10_mean"],
                            "per_language": held["per_language"],
                            "new_types": {k: v for k, v in types[name]["held_out"].items() if k != "per_language"},
                            "all_images": {k: v for k, v in res["all_images"].items() if k.startswith("t2i_")},
                            "untuned_queries": {k: v for k, v in res["untuned_queries"].items() if k.startswith("t2i_")}}
    base, default = crossmodal["bridge"], crossmodal["default"]
    setup = {"catalog": "emoji-market", "products": len(products), "languages": list(LANGS),
             "text_encoder": text_encoder.name, "image_encoder": image_encoder.name, "folds": args.folds,
             "seed": args.seed, "mean_held_out_products": fold_n, "mean_held_out_types_products": type_n,
             "adapter_config": config.to_dict(), "fusion": fusion.to_dict(),
             "default_vs_baseline_t2i_r10": default["t2i_r10_mean"] / base["t2i_r10_mean"],
             "default_vs_baseline_i2t_r10": default["i2t_r10"] / base["i2t_r10"],
             "new_types_default_vs_baseline_t2i_r10": default["new_types"]["t2i_r10_mean"] / base["new_types"]["t2i_r10_mean"],
             "goal": "t2i R@10 >= 2x baseline; bar >= 1.5x (mean over 14 languages)",
             "seconds": {"image_features": round(image_seconds, 1), "titles": round(text_seconds, 1),
                         "adapter_train_per_fold": round(train_s, 1)}}

    twin = None
    if args.torch_twin:
        twin = torch_twin(args, products, titles, config, fusion, default_hits)

    zs = None
    if args.zeroshot_images:
        adapter = default_adapter(text_encoder, image_encoder)
        zs = zeroshot(text_encoder, image_encoder, adapter, fusion, bridge, args.zeroshot_images, args.seed)

    setup["seconds"]["total"] = round(time.time() - started, 1)
    results = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    results["crossmodal"] = crossmodal
    results["crossmodal_default"] = "default"
    results["crossmodal_baseline"] = "bridge"
    results["crossmodal_setup"] = setup
    if zs is not None:
        results["zeroshot"] = zs
    if twin is not None:
        results["crossmodal_torch_twin"], results["crossmodal_vs_torch_twin"] = twin
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print_tables(crossmodal, setup, zs)
    if twin is not None:
        print(f"\ndefault encoders ({setup['text_encoder']} | {setup['image_encoder']}) - torch twin "
              f"({twin[1]['torch_twin']}), default mix, held-out products, paired bootstrap over products:")
        for metric, r in twin[1]["paired"].items():
            print(f"  {metric:8s} {r['default']:.4f} vs {r['torch_twin']:.4f}  delta {r['delta']:+.4f} {r['ci95']} "
                  f"(metric SE {r['metric_se']:.4f}; adapter seed alone {r['adapter_seed_delta']:+.4f})"
                  f"{'  within noise' if r['within_noise'] else '  OUTSIDE noise'}")
    return 0


def torch_twin(args, products, titles, config, fusion, default_hits: dict) -> tuple[dict, dict]:
    """The held-out-products cross-validation again with the torch twin of the encoders (same folds, same
    cached view features), and the paired comparison of the default mix (default - twin) per product."""
    from encoders_text import paired_bootstrap

    from mmrec.embedding.text_model import load_text_encoder
    from mmrec.paths import cache_dir

    twin_text_spec = f"{args.text_encoder}:torch" if args.text_encoder.lower() == "default" else args.text_encoder
    text, image = load_text_encoder(twin_text_spec), load_image_encoder("efficientnet-lite0")
    started = time.time()
    views = catalog_image_features(products, image, augment_views=config.augment_views, seed=config.seed,
                                   cache_dir=cache_dir("adapters", "views"))
    title_vecs = text.encode(list(titles.reshape(-1)), kind="query").reshape(len(products), len(LANGS), -1)
    bridge_vecs = ClassNameBridge(text, image.class_names()).transform(views["probs"][np.flatnonzero(views["is_original"])])
    folds = product_folds(len(products), args.folds, args.seed)
    hits: dict = {}
    res, _, _ = crossval(folds, views, title_vecs, bridge_vecs, text.name, config, fusion, all_images=True,
                         desc="torch twin", hits=hits)
    # the noise floor: the same torch twin with only the adapter's seed changed (same folds, views, titles)
    seed_hits: dict = {}
    crossval(folds, views, title_vecs, bridge_vecs, text.name, replace(config, seed=config.seed + 1), fusion,
             all_images=False, desc="torch twin, adapter seed +1", hits=seed_hits)
    table = {name: {"t2i_r1_mean": r["held_out"]["t2i_r1_mean"], "t2i_r10_mean": r["held_out"]["t2i_r10_mean"],
                    "i2t_r1": r["held_out"]["i2t_r1_mean"], "i2t_r10": r["held_out"]["i2t_r10_mean"],
                    "all_images": {k: v for k, v in r["all_images"].items() if k.startswith("t2i_")}}
             for name, r in res.items()}
    paired = {}
    for metric in ("t2i_r1", "t2i_r10", "i2t_r1", "i2t_r10"):
        a, b = np.nanmean(hits[metric], axis=1), np.nanmean(default_hits[metric], axis=1)  # per product
        c = np.nanmean(seed_hits[metric], axis=1)
        paired[metric] = {"default": round(float(b.mean()), 4), "torch_twin": round(float(a.mean()), 4),
                          **paired_bootstrap(a, b), "adapter_seed_delta": paired_bootstrap(a, c)["delta"]}
    comparison = {"torch_twin": f"{text.name} ({getattr(text, 'version', '')}) | {image.name}",
                  "paired": paired, "within_noise": all(r["within_noise"] for r in paired.values()),
                  "how": f"default mix, the same {args.folds} product folds; per held-out product the mean over 14 languages "
                         "of each hit; delta = default - torch twin with a 95% interval from 2000 bootstrap "
                         "resamples of the products (paired: it detects shifts far below the metric's noise); "
                         "metric_se = the metric's standard error over the products; adapter_seed_delta = the torch "
                         "twin with only the adapter's seed changed (what retraining alone moves); within noise = "
                         "the interval holds 0 or |delta| <= metric_se", "seconds": round(time.time() - started, 1)}
    return table, comparison


def print_tables(crossmodal: dict, setup: dict, zs: dict | None) -> None:
    print(f"\nCross-modal retrieval, emoji-market, {setup['folds']}-fold held-out products "
          f"(~{setup['mean_held_out_products']:.0f} per fold), text encoder {setup['text_encoder']}, "
          f"mean over {len(setup['languages'])} languages")
    head = (f"{'method':24s} {'t2i R@1':>8s} {'t2i R@10':>9s} {'i2t R@1':>8s} {'i2t R@10':>9s} | "
            f"{'new types t2i R@10':>19s} {'i2t R@10':>9s} | {'among all: t2i R@1':>19s} {'R@10':>6s} | "
            f"{'untuned queries t2i R@10':>24s}")
    print(head)
    print("-" * len(head))
    for name, r in crossmodal.items():
        nt, al, un = r.get("new_types", {}), r.get("all_images", {}), r.get("untuned_queries", {})
        print(f"{name:24s} {r['t2i_r1_mean']:8.3f} {r['t2i_r10_mean']:9.3f} {r['i2t_r1']:8.3f} {r['i2t_r10']:9.3f} | "
              f"{nt.get('t2i_r10_mean', float('nan')):19.3f} {nt.get('i2t_r10_mean', float('nan')):9.3f} | "
              f"{al.get('t2i_r1_mean', float('nan')):19.3f} {al.get('t2i_r10_mean', float('nan')):6.3f} | "
              f"{un.get('t2i_r10_mean', float('nan')):24.3f}")
    print(f"default / baseline, t2i R@10: {setup['default_vs_baseline_t2i_r10']:.2f}x "
          f"(goal 2x, bar 1.5x); new types: {setup['new_types_default_vs_baseline_t2i_r10']:.2f}x")
    d = crossmodal["default"]["per_language"]
    b = crossmodal["bridge"]["per_language"]
    print("per language t2i R@10 (default / bridge): " +
          "  ".join(f"{lang} {d[lang]['t2i_r10']:.2f}/{b[lang]['t2i_r10']:.2f}" for lang in LANGS))
    if zs and "as_is" in zs:
        print(f"\nZero-shot Fashion-MNIST ({zs['images']} test images, 10 classes, chance 0.10), accuracy")
        langs = zs["languages"]
        print(f"{'input / method':28s} {'mean':>6s} " + " ".join(f"{lang:>5s}" for lang in langs))
        for variant in ("as_is", "inverted"):
            for name, r in zs[variant].items():
                print(f"{variant + ' / ' + name:28s} {r['mean']:6.3f} " +
                      " ".join(f"{r['per_language'][lang]:5.2f}" for lang in langs))
    print(f"\ntotal {setup['seconds']['total']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())

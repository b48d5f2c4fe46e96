"""`mmrec evaluate`: run mmrec's fusion transformer and baselines on a dataset under one split protocol and
write a report.

    mmrec evaluate --dataset ml-100k --protocol temporal --models mmrec,popularity,itemknn,sasrec --out runs/ml100k

Every model, mmrec's included, is trained on the split's training events only (a checkpoint trained on
other data could have seen the test period).

    mmrec evaluate --dataset complete-journey --protocol next-basket --item-vectors service:data/cj
        --models mmrec,personal-topfreq,popularity,contentknn,sasrec --mmrec-checkpoint data/cj/model.pt --out runs/cj

`--protocol next-basket` (grocery: each household's next basket after a time cut, repeat purchases allowed
and reported apart: repeat_* metrics over the items bought before, explore_* over the new ones) asks every
model with history items allowed; `--mmrec-checkpoint` evaluates a checkpoint from `mmrec train --split
next-basket` instead of training one, refused unless it was trained only on events before the cut.

Every model gets the same split object; metrics are full-ranking with seen items excluded (except under
next-basket); the report
(JSON + Markdown + PNG) carries 95% intervals and paired comparisons with the reference model, and the
table is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmrec.commands import repeat_purchases_setting
from mmrec.errors import UserError

PROTOCOLS = ("loo", "temporal", "cold", "cross-market", "next-basket")
MODELS = ("mmrec", "popularity", "popularity-market", "itemknn", "contentknn", "sasrec", "personal-topfreq")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate mmrec and baselines under a split protocol and write a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="built-in dataset name (see `mmrec datasets list`)")
    p.add_argument("--items", help="catalog file (JSONL / Parquet / CSV) instead of --dataset (with --events)")
    p.add_argument("--events", help="event file (JSONL / Parquet / CSV) of --items")
    p.add_argument("--protocol", default="loo", choices=PROTOCOLS, help="split protocol (default: loo)")
    p.add_argument("--models", default="popularity,itemknn",
                   help=f"comma-separated models among {', '.join(MODELS)} (default: popularity,itemknn)")
    p.add_argument("--out", required=True, help="output folder for report.json, report.md and plots")
    p.add_argument("--ks", default="5,10,20", help="cutoffs (default: 5,10,20)")
    p.add_argument("--reference", help="model the others are compared with (default: the first)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling, tie-breaks and training")
    p.add_argument("--max-users", type=int, help="evaluate a seeded random sample of users (quick runs)")
    p.add_argument("--quantile", type=float, default=0.8, help="temporal: cut at this quantile of event times")
    p.add_argument("--nb-quantile", type=float, default=NB_QUANTILE,
                   help=f"next-basket: test cut at this quantile of event times [{NB_QUANTILE}]")
    p.add_argument("--nb-valid-quantile", type=float, default=NB_VALID_QUANTILE,
                   help=f"next-basket: validation cut (training ends there) [{NB_VALID_QUANTILE}]")
    p.add_argument("--cold-fraction", type=float, default=0.1, help="cold: share of items that are cold")
    p.add_argument("--catalog-vocabulary", action="store_true",
                   help="rank every catalog item, not only items with events")
    p.add_argument("--item-vectors", default="text:use-m3",
                   help="content vectors of mmrec and contentknn: an .npz with item_ids + vectors, or a spec for "
                        "mmrec.model.vectors.catalog_vectors, e.g. service:DATA_DIR (default: text:use-m3)")
    p.add_argument("--mmrec-minutes", type=float, default=12.0, help="mmrec: training time budget")
    p.add_argument("--mmrec-checkpoint", default=None,
                   help="mmrec: evaluate this checkpoint (from `mmrec train`, same split) instead of training one")
    p.add_argument("--repeat-purchases", choices=("auto", "on", "off"), default="auto",
                   help="mmrec: may re-offer history items (auto: the dataset's setting, on for complete-journey)")
    p.add_argument("--sasrec-epochs", type=int, default=200, help="SASRec: max epochs (early stopping on valid)")
    p.add_argument("--sasrec-minutes", type=float, default=12.0, help="SASRec: training time budget")
    p.add_argument("--sasrec-max-len", type=int, default=200, help="SASRec: history length")
    p.add_argument("--threads", type=int, default=1, help="torch threads for mmrec and SASRec (default 1)")
    p.add_argument("--ab", action="store_true", help="also simulate team-draft interleaving vs the reference")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=run)


NB_QUANTILE, NB_VALID_QUANTILE = 0.9, 0.8  # `mmrec train --split next-basket` cuts at the same times


def known_item_events(events: Any, items: Any) -> Any:
    """The events whose item is in the catalog; the others are counted and reported, then dropped (Complete
    Journey's own events name 17 products its catalog lacks), before any expensive work. Shared with
    `mmrec train`."""
    known = set(items["item_id"])
    ids = events["item_id"]
    keep = np.fromiter((i in known for i in ids), dtype=bool, count=len(ids))
    if not keep.all():
        missing = sorted({i for i, k in zip(ids, keep) if not k})
        print(f"dropped {int((~keep).sum()):,} events naming {len(missing):,} item ids the catalog lacks, "
              f"e.g. {', '.join(map(repr, missing[:3]))}")
        events = events.select(np.flatnonzero(keep))
    return events


def _parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{what} must be positive integers, got {text!r}")
    return values


def _split(ds: Any, args: argparse.Namespace):
    from evaluation import cold_start_split, cross_market_split, leave_one_out, temporal_split

    common: dict[str, Any] = {"seed": args.seed, "max_users": args.max_users}
    if args.catalog_vocabulary or args.protocol == "cross-market":
        common["items"] = ds.items
    try:
        if args.protocol == "loo":
            return leave_one_out(ds.events, **common)
        if args.protocol == "temporal":
            return temporal_split(ds.events, quantile=args.quantile, valid_quantile=args.quantile * 0.9, **common)
        if args.protocol == "cold":
            return cold_start_split(ds.events, cold_fraction=args.cold_fraction, **common)
        if args.protocol == "next-basket":
            from evaluation import next_basket_split

            events = known_item_events(ds.events, ds.items)
            common["items"] = ds.items  # every catalog item is a candidate
            return next_basket_split(events, quantile=args.nb_quantile, valid_quantile=args.nb_valid_quantile,
                                     **common)
        return cross_market_split(ds.events, **common)
    except ValueError as exc:
        raise UserError(f"cannot build the {args.protocol} split of {ds.name}: {exc}") from None


def _item_vectors(spec: str, ds: Any, item_ids: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(the vectors aligned to `item_ids`, their vector space's version; None for an .npz, which names none):
    a checkpoint is checked against the space, not the matrix."""
    path = Path(spec)
    if path.suffix == ".npz":
        if not path.exists():
            raise UserError(f"item-vector file {path} does not exist")
        data = np.load(path, allow_pickle=True)
        if "item_ids" not in data or "vectors" not in data:
            raise UserError(f"{path} must hold arrays 'item_ids' and 'vectors'")
        where = {str(x): i for i, x in enumerate(data["item_ids"])}
        missing = [x for x in item_ids if str(x) not in where]
        if missing:
            raise UserError(f"{len(missing)} items have no vector in {path}, e.g. {missing[:3]}")
        return np.asarray(data["vectors"], dtype=np.float32)[[where[str(x)] for x in item_ids]], None
    from mmrec.model.vectors import catalog_vectors

    made = catalog_vectors(ds.items, spec)
    return made.aligned(item_ids), made.version


def _model(name: str, args: argparse.Namespace, vectors: np.ndarray | None, space: str | None, ds: Any,
           split: Any):
    from evaluation.baselines import ContentKNN, ItemKNN, Popularity

    if name == "mmrec":
        from mmrec.model import FusionConfig, FusionRecommender, TrainConfig

        product_of = dict(zip(ds.items["item_id"], ds.items["product_id"]))
        products = np.asarray([product_of.get(str(i)) or i for i in split.item_ids], dtype=object)
        if args.mmrec_checkpoint:
            return _Checkpoint(_load_checkpoint(args, vectors, space, split, products))
        repeat = repeat_purchases_setting(args.repeat_purchases, getattr(ds, "meta", None))
        return FusionRecommender(vectors, FusionConfig(content_dim=vectors.shape[1], repeat_purchases=repeat),
                                 TrainConfig(max_train_seconds=60 * args.mmrec_minutes, num_threads=args.threads,
                                             seed=args.seed, progress=False),
                                 item_ids=split.item_ids, item_market=split.item_market, item_products=products)
    if name == "popularity":
        return Popularity()
    if name == "popularity-market":
        return Popularity(by_market=True)
    if name == "itemknn":
        return ItemKNN()
    if name == "contentknn":
        return ContentKNN(vectors)
    if name == "personal-topfreq":
        from evaluation.baselines import PersonalTopFreq

        return PersonalTopFreq()
    if name == "sasrec":
        from evaluation.baselines.sasrec import SASRec, SASRecConfig

        return SASRec(SASRecConfig(max_len=args.sasrec_max_len, max_epochs=args.sasrec_epochs,
                                   max_train_seconds=60 * args.sasrec_minutes, num_threads=args.threads,
                                   seed=args.seed, valid_exclude_seen=args.protocol != "next-basket"))
    raise UserError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def _load(args: argparse.Namespace) -> Any:
    """The built-in dataset, or a catalog + event files (loaded and checked like `mmrec train --items`)."""
    from types import SimpleNamespace

    from mmrec import datasets

    if bool(args.dataset) == bool(args.items):
        raise UserError("give exactly one of --dataset NAME or --items FILE (with --events FILE)")
    if args.dataset:
        if args.events:
            raise UserError("--events goes with --items, not --dataset")
        return datasets.load(args.dataset)
    if not args.events:
        raise UserError("--items needs --events")
    from mmrec.data.io import load_catalog, load_events

    items = load_catalog(args.items)[0]
    events = load_events(args.events, items=items)[0]
    if len(events) == 0:
        raise UserError(f"{args.events}: no usable events")
    return SimpleNamespace(name=Path(args.items).stem, items=items, events=events, meta={})


def _load_checkpoint(args: argparse.Namespace, vectors: np.ndarray, space: str | None, split: Any,
                     products: np.ndarray):
    """A trained checkpoint over this split's items, refused when it may have seen the test period."""
    from mmrec.model import FusionRecommender
    from mmrec.model.checkpoint import load_checkpoint

    path = Path(args.mmrec_checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    extra = load_checkpoint(path).extra
    cut = split.params.get("t")
    # seen_until: 1 + the latest event behind the weights, validation targets included (early stopping on
    # a basket after the cut is test-period information too); train_end alone does not say that
    trained_until = extra.get("seen_until")
    if cut is None or trained_until is None or int(trained_until) > int(cut):
        raise UserError(f"{path} may have seen events at or after this split's cut (seen_until {trained_until}, "
                        f"cut {cut}): train it with `mmrec train --split next-basket` on the same data")
    spec = extra.get("vectors_spec")
    if spec and str(spec).split(":")[0] != str(args.item_vectors).split(":")[0]:
        raise UserError(f"{path} was trained on {spec} vectors; evaluate it with --item-vectors {spec}")
    rec = FusionRecommender.load(path, vectors, item_ids=split.item_ids, item_market=split.item_market,
                                 item_products=products, vectors_version=space)
    rec.train_config.num_threads = args.threads
    return rec


class _Checkpoint:
    """A trained FusionRecommender under the runner: ``fit`` keeps it as it is."""

    def __init__(self, rec: Any) -> None:
        self.rec, self.name = rec, "mmrec"

    def fit(self, train: Any, valid: Any = None) -> "_Checkpoint":
        return self

    def recommend(self, histories: Any, k: int, exclude_seen: bool = True, candidates: Any = None):
        return self.rec.recommend(histories, k, exclude_seen=exclude_seen, candidates=candidates)


def _language_segment(ds: Any, split: Any) -> np.ndarray | None:
    ids = ds.items["item_id"]
    langs = ds.items["language"]
    if len({x for x in langs if x}) < 2:
        return None
    where = dict(zip(ids, langs))
    labels = np.array([where.get(str(x)) or "?" for x in split.item_ids], dtype=object)
    return labels[split.test.first_targets()]


def run(args: argparse.Namespace) -> int:
    from evaluation import build_report, evaluate, format_table, interleave, write_report

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise UserError(f"unknown model(s) {unknown or args.models!r}; choose from {', '.join(MODELS)}")
    if len(set(names)) != len(names):
        raise UserError("a model is listed twice")
    ks = _parse_ints(args.ks, "--ks")
    if args.reference and args.reference not in names:
        raise UserError(f"--reference {args.reference!r} is not among --models")
    if args.protocol == "cold" and "sasrec" in names:
        print("note: SASRec cannot score cold items (untrained ID embeddings); expect ~0 by construction")

    ds = _load(args)
    t0 = time.perf_counter()
    split = _split(ds, args)
    print(f"{ds.name} / {args.protocol}: " + ", ".join(f"{k}={v}" for k, v in split.describe().items()
                                                     if not k.startswith("param.")))
    needs_vectors = {"contentknn", "mmrec"} & set(names)
    vectors, space = _item_vectors(args.item_vectors, ds, split.item_ids) if needs_vectors else (None, None)
    segments = {}
    lang = _language_segment(ds, split)
    if lang is not None:
        segments["target_language"] = lang
    results, models = {}, {}
    next_basket = args.protocol == "next-basket"
    for name in names:
        model = _model(name, args, vectors, space, ds, split)
        print(f"fitting and evaluating {name} ...", flush=True)
        results[name] = evaluate(model, split, ks, item_vectors=vectors, segments=segments,
                                 exclude_seen=not next_basket)
        if next_basket:  # the same lists scored against the basket's repeat items and its new items
            from evaluation import repeat_explore_metrics

            extra_metrics = repeat_explore_metrics(results[name].recommendations, split.test, ks,
                                                   metrics=("recall", "ndcg", "hit_rate"))
            results[name].per_case.update({k: v for k, v in extra_metrics.items() if k not in results[name].per_case})
        models[name] = model
    extra: dict[str, Any] = {"dataset": ds.name, "split_seconds": round(time.perf_counter() - t0, 1)}
    if "sasrec" in models:
        extra["sasrec"] = models["sasrec"].describe()
    if "mmrec" in models:
        m = models["mmrec"]
        rec = getattr(m, "rec", m)
        extra["mmrec"] = {"checkpoint": args.mmrec_checkpoint, "repeat_purchases": bool(rec.model_.cfg.repeat_purchases),
                          "repeat_decay": getattr(rec.model_.cfg, "repeat_decay", 0.0),
                          **{k: rec.report_[k] for k in ("best_epoch", "stopped", "train_seconds", "loss",
                                                         "initial_valid_ndcg@10", "best_valid_ndcg@10", "epochs",
                                                         "n_parameters", "repeat_decay_search", "repeat_weight",
                                                         "repeat_weight_search") if k in rec.report_}}
    reference = args.reference or names[0]
    if args.ab and len(names) > 1:
        best = max((n for n in names if n != reference), key=lambda n: results[n].mean("ndcg@10")
                   if "ndcg@10" in results[n].per_case else results[n].mean(f"ndcg@{ks[0]}"))
        extra["interleaving (simulation on held-out cases)"] = interleave(
            models[best], models[reference], split.test, split.n_items, k=10, seed=args.seed).to_dict()
    primary = "ndcg@10" if 10 in ks else f"ndcg@{ks[0]}"
    report = build_report(results, split, title=f"{ds.name} / {args.protocol}", reference=reference,
                          primary=primary, seed=args.seed, extra=extra)
    files = write_report(report, args.out, plots=not args.no_plots)
    print()
    print(format_table(report))
    print(f"\nreport: {files['markdown']}  (json: {files['json']})")
    if "interleaving (simulation on held-out cases)" in extra:
        print("interleaving (simulation): " + json.dumps(extra["interleaving (simulation on held-out cases)"]))
    return 0

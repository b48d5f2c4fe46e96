"""`mmrec train`: train the fusion transformer on a catalog + event log, or fine-tune a checkpoint on new
events (`--resume`), and save a checkpoint that `mmrec serve` / the Python API can load.

    mmrec train --dataset emoji-market --out model.pt
    mmrec train --items catalog.jsonl --events events.jsonl --out model.pt
    mmrec train --resume model.pt --items catalog.jsonl --events new_events.jsonl --out model2.pt
    mmrec train --resume model.pt --events-since 7d --data-dir data/shop --items catalog.jsonl --out model2.pt
    mmrec train --ddp 2 --dataset ml-1m --out model.pt       # = torchrun --nproc-per-node 2 -m mmrec train ...

`--events-since T` closes the online loop: the events a service logged in its data dir (DATA_DIR/events.jsonl,
read beside the running service) at or after T fine-tune the checkpoint; each active user's earlier logged
events (up to `--context`) come along as the history those events follow. The checkpoint keeps its item
space: its vectors (and recipe) unless `--vectors` says otherwise, which a different space refuses.

Validation is leave-one-out on the given events (each user's last event held out for the report, the one
before it for early stopping), so the numbers printed at the end are honest held-out NDCG/Recall@10.
With `--split next-basket` (grocery) it is each user's next basket after the 0.9 quantile of event times
(validation: after the 0.8 quantile, where training ends), repeat purchases included; the checkpoint records
where training ended, so `mmrec evaluate --protocol next-basket --mmrec-checkpoint` can score it on the same
split. `--repeat-purchases` (default: the dataset's setting, on for complete-journey) makes re-offering a
model decision: the model trains on repeat targets, learns a repeat bonus, and `mmrec serve` lets it
re-offer history items.

Under torchrun every rank loads the data; rank 0 makes the item vectors and sends them to the others,
all ranks train (DDP, `mmrec.model.distributed`), and rank 0 tests and writes the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mmrec.commands import parse_recipe, repeat_purchases_setting
from mmrec.errors import UserError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (or fine-tune with --resume) the fusion transformer")
    src = p.add_argument_group("data")
    src.add_argument("--dataset", help="a built-in dataset (see `mmrec datasets list`)")
    src.add_argument("--items", help="catalog file (JSONL / Parquet / CSV) instead of --dataset")
    src.add_argument("--events", help="event file (JSONL / Parquet / CSV); with --dataset: more events, appended "
                     "to the dataset's (e.g. new interactions to fine-tune on with --resume)")
    src.add_argument("--max-users", type=int, default=None, help="train on a seeded sample of users")
    src.add_argument("--split", choices=("loo", "next-basket"), default="loo",
                     help="held-out cases: each user's last event (loo), or each user's next basket after the "
                          "0.9 quantile of event times, validation at 0.8, training strictly before it "
                          "(next-basket: what `mmrec evaluate --protocol next-basket --mmrec-checkpoint` scores)")
    src.add_argument("--repeat-purchases", choices=("auto", "on", "off"), default="auto",
                     help="the model may re-offer items a shopper already bought (trains on repeat targets, "
                          "learns a repeat bonus; recorded in the checkpoint, honoured by `mmrec serve`). "
                          "auto: the dataset's setting (on for complete-journey), off for --items catalogs")
    src.add_argument("--events-since", default=None, metavar="T",
                     help="with --resume: fine-tune on the events a service logged in --data-dir at or after T "
                          "(unix seconds, an ISO date/time, or an age such as 24h, 7d), instead of --events")
    src.add_argument("--data-dir", default=None,
                     help="the service data dir whose event log --events-since reads (default: the DIR of "
                          "--vectors service:DIR)")
    src.add_argument("--context", type=int, default=50,
                     help="with --events-since: each active user's earlier logged events kept as the history "
                          "before T [50]")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--resume", help="checkpoint to fine-tune instead of training from scratch")
    p.add_argument("--vectors", default=None,
                   help="item content vectors: 'text:<encoder spec>' (item text through a text encoder) or "
                        "'service[:DATA_DIR]' (the fused text+image vectors `mmrec serve` stores: train with "
                        "this to serve the checkpoint with `mmrec serve --model`); default text:use-m3, or "
                        "with --resume the checkpoint's own")
    p.add_argument("--text-fields", default=None,
                   help="the item recipe for 'text:' vectors: fields in the text, from title, alt_title, year, "
                        "description, category [title,alt_title,year,description]; add 'category' for a "
                        "monolingual catalog whose categories mean something (ML-1M genres)")
    m = p.add_argument_group("model (ignored with --resume)")
    m.add_argument("--hidden", type=int, default=64)
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--heads", type=int, default=1)
    m.add_argument("--max-len", type=int, default=200)
    m.add_argument("--dropout", type=float, default=0.2)
    m.add_argument("--id-dropout", type=float, default=0.1)
    m.add_argument("--no-ids", action="store_true", help="content only: no learned item-ID embeddings")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None, help="default 20 (2 with --resume)")
    t.add_argument("--lr", type=float, default=None, help="default 2e-3 (5e-4 with --resume)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--loss", choices=("auto", "full", "sampled"), default="auto")
    t.add_argument("--patience", type=int, default=3)
    t.add_argument("--max-minutes", type=float, default=None, help="stop after this long (keeps the best)")
    t.add_argument("--id-init", choices=("random", "cooccurrence"), default="random",
                   help="start the item-ID embeddings at random, or from the PPMI-SVD of item pairs in the "
                        "training histories (helps time-boxed runs; bench/ml1m.py uses it)")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--ddp", type=int, default=None, metavar="N",
                   help="train on N local processes with torch DDP (as `torchrun --standalone "
                        "--nproc-per-node N -m mmrec train ...` does); --batch-size stays the global batch. "
                        "For several machines run torchrun yourself on each")
    p.set_defaults(func=run)


def _load_data(args: argparse.Namespace):
    """(items, events, the built-in dataset's meta or {} for files), events limited to catalog items."""
    from mmrec import datasets
    from mmrec.data.io import load_catalog, load_events

    if bool(args.dataset) == bool(args.items):
        raise UserError("give exactly one of --dataset NAME or --items FILE")
    if args.events_since is not None:
        if args.events:
            raise UserError("give --events or --events-since, not both")
        ds = datasets.load(args.dataset) if args.dataset else None
        items = ds.items if ds is not None else load_catalog(args.items)[0]
        events = _known_items_only(logged_events(_log_dir(args), args.events_since, args.context), items)
        if len(events) == 0:
            raise UserError(f"no logged events since {args.events_since} for items of the catalog")
        return items, events, ds.meta if ds is not None else {}
    meta: dict = {}
    if args.dataset:
        ds = datasets.load(args.dataset)
        meta = ds.meta
        items = ds.items
        events = ds.events
        if args.events:
            import datasets as hf

            more = load_events(args.events, items=items)[0]
            if len(more) == 0:
                raise UserError(f"{args.events}: no usable events (see the warnings above)")
            events = hf.concatenate_datasets([events, more.cast(events.features)])
    else:
        if not args.events:
            raise UserError("--items needs --events")
        items = load_catalog(args.items)[0]
        events = load_events(args.events, items=items)[0]
    events = _known_items_only(events, items)
    if len(events) == 0:
        raise UserError("no events to train on")
    return items, events, meta


def _log_dir(args: argparse.Namespace) -> Path:
    """The service data dir whose event log --events-since reads."""
    if args.data_dir:
        return Path(args.data_dir)
    kind, _, rest = (args.vectors or "").partition(":")
    if kind == "service" and rest:
        return Path(rest)
    raise UserError("--events-since reads a service's event log: give --data-dir DIR (or --vectors service:DIR)")


def logged_events(data_dir: str | Path, since: str | float, context: int = 50):
    """The events a service logged in `data_dir` (events.jsonl, read without its lock) for fine-tuning:
    every event at or after `since` (unix seconds, ISO date/time or an age such as 7d) of each user who has
    one, after up to `context` of that user's earlier events (the history the new events follow), as an
    event `datasets.Dataset` sorted by time."""
    import datasets as hf

    from mmrec.commands.report import parse_since
    from mmrec.data.schema import EVENT_FEATURES
    from mmrec.serving.event_log import read_events

    path = Path(data_dir) / "events.jsonl"
    if not path.is_file():
        raise UserError(f"{data_dir} has no event log (events.jsonl); is it a service data dir?")
    if context < 0:
        raise UserError(f"--context must be >= 0, got {context}")
    try:
        t0 = float(since) if isinstance(since, (int, float)) else parse_since(str(since))
    except UserError as exc:
        raise UserError(str(exc).replace("--since", "--events-since")) from None
    by_user: dict[str, list] = {}
    for event in read_events(path):
        by_user.setdefault(event.user_id, []).append(event)
    rows = []
    for events in by_user.values():
        events.sort(key=lambda e: e.timestamp)
        first_new = next((i for i, e in enumerate(events) if e.timestamp >= t0), None)
        if first_new is None:
            continue
        rows += [e.to_row() for e in events[max(0, first_new - context):]]
    rows.sort(key=lambda r: (r["timestamp"], r["user_id"]))
    columns = {name: [r.get(name) for r in rows] for name in EVENT_FEATURES}
    return hf.Dataset.from_dict(columns, features=EVENT_FEATURES)


def _known_items_only(events, items):
    """Events whose item is in the catalog: the rest are counted, reported and dropped before any expensive
    work (a built-in dataset's events can name products its catalog lacks, and so can a user's)."""
    from mmrec.commands.evaluate import known_item_events

    return known_item_events(events, items)


def run(args: argparse.Namespace) -> int:
    import os

    from mmrec.model import distributed

    if args.ddp is not None and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: start it
        argv = getattr(args, "argv", None)
        if argv is None:
            raise UserError("--ddp needs the command line (run it as `mmrec train --ddp N ...`)")
        return distributed.launch(args.ddp, distributed.without_option(argv, "--ddp"))
    ctx = distributed.init_from_env()
    try:
        return _train(args, ctx)
    finally:
        distributed.shutdown()


def _resumed_extra(args: argparse.Namespace) -> dict | None:
    """The `extra` record of the --resume checkpoint (read once here; None without --resume)."""
    if not args.resume:
        return None
    from mmrec.model.checkpoint import load_checkpoint

    if not Path(args.resume).is_file():
        raise UserError(f"checkpoint {args.resume} does not exist")
    return load_checkpoint(args.resume).extra


def _resolve_vectors(args: argparse.Namespace, resumed: dict | None) -> None:
    """--vectors / --text-fields default to text:use-m3 and the default recipe, or with --resume to what
    the checkpoint was trained on (its vector space: a fine-tune never changes it)."""
    if args.vectors is not None or resumed is None:
        args.vectors = args.vectors or "text:use-m3"
        return
    spec = str(resumed.get("vectors_spec") or "text:use-m3")
    if spec.startswith("service"):
        if not args.data_dir:
            raise UserError(f"{args.resume} reads a service's stored vectors: give --data-dir DIR or "
                            f"--vectors service:DIR")
        spec = f"service:{args.data_dir}"
    elif args.text_fields is None and resumed.get("recipe"):
        args.text_fields = ",".join(resumed["recipe"])
    args.vectors = spec


def _seen_until(resumed: dict | None, split, train_end: int) -> int | None:
    """1 + the latest event time that shaped the weights: training events, validation targets (early
    stopping and the repeat weight are chosen on them) and, with --resume, what the resumed checkpoint saw
    (None: unknown). `mmrec evaluate --mmrec-checkpoint` refuses a checkpoint whose value is after its cut."""
    seen: list[int | None] = [int(train_end)]
    if split.valid is not None and len(split.valid):
        seen.append(int(split.valid.target_time.max()) + 1)
    if resumed is not None:
        prior = resumed.get("seen_until")
        seen.append(None if prior is None else int(prior))
    return None if None in seen else max(s for s in seen if s is not None)


def _shared_vectors(args: argparse.Namespace, items, ctx):
    """The item vectors, made once by rank 0 (a service data dir's store opens in one process only) and
    sent to the other ranks."""
    from mmrec.model.vectors import catalog_vectors

    vectors = None
    if ctx.is_main:
        vectors = catalog_vectors(items, args.vectors, recipe=parse_recipe(args.text_fields),
                                  progress=not args.no_progress)
    if ctx.world > 1:
        import torch.distributed

        box = [vectors]
        torch.distributed.broadcast_object_list(box, src=0)
        vectors = box[0]
    return vectors


def _train(args: argparse.Namespace, ctx) -> int:
    import numpy as np

    from evaluation.protocol import evaluate
    from evaluation.splits import leave_one_out
    from mmrec.model.transformer import FusionConfig
    from mmrec.model import FusionRecommender, TrainConfig

    if args.events_since is not None and not args.resume:
        raise UserError("--events-since fine-tunes a checkpoint: give --resume CHECKPOINT")
    resumed = _resumed_extra(args)
    _resolve_vectors(args, resumed)
    items, events, meta = _load_data(args)
    if args.text_fields and not args.vectors.startswith("text"):
        raise UserError("--text-fields applies to 'text:' vectors; a service data dir keeps its own recipe")
    vectors = _shared_vectors(args, items, ctx)
    try:
        if args.split == "next-basket":
            from evaluation import next_basket_split
            from mmrec.commands.evaluate import NB_QUANTILE, NB_VALID_QUANTILE

            split = next_basket_split(events, items=items, max_users=args.max_users, seed=args.seed,
                                      quantile=NB_QUANTILE, valid_quantile=NB_VALID_QUANTILE)
        else:
            split = leave_one_out(events, items=items, max_users=args.max_users, seed=args.seed)
    except ValueError as exc:
        raise UserError(f"cannot build a training split: {exc}") from None
    aligned = vectors.aligned(split.item_ids)
    product_of = dict(zip(items["item_id"], items["product_id"]))
    # listings of one product (several languages/markets) share its ID row
    products = np.asarray([product_of.get(i) or i for i in split.item_ids], dtype=object)
    resume = bool(args.resume)
    tc = TrainConfig(
        epochs=args.epochs if args.epochs is not None else (2 if resume else 20),
        lr=args.lr if args.lr is not None else (5e-4 if resume else 2e-3),
        warmup_steps=0 if resume else 100,
        batch_size=args.batch_size, loss=args.loss, patience=args.patience,
        max_train_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
        num_threads=args.threads, seed=args.seed, id_init=args.id_init,
        progress=not args.no_progress and ctx.is_main,
    )
    if resume:
        rec = FusionRecommender.load(args.resume, aligned, item_ids=split.item_ids, item_market=split.item_market,
                                     item_products=products, vectors_version=vectors.version, train_config=tc)
    else:
        cfg = FusionConfig(content_dim=vectors.dim, hidden=args.hidden, n_layers=args.layers, n_heads=args.heads,
                           max_len=args.max_len, dropout=args.dropout, id_dropout=args.id_dropout,
                           use_ids=not args.no_ids,
                           repeat_purchases=repeat_purchases_setting(args.repeat_purchases, meta))
        rec = FusionRecommender(aligned, cfg, tc, item_ids=split.item_ids, item_market=split.item_market,
                                item_products=products, vectors_version=vectors.version)
    if not ctx.is_main:  # train alongside rank 0, which tests and saves
        rec.fit(split.train, split.valid, resume=resume)
        return 0
    print(f"training on {len(split.train):,} events of {split.n_users:,} users over {split.n_items:,} items"
          + (f" (fine-tuning {args.resume})" if resume else "")
          + (f" on {ctx.world} processes (DDP)" if ctx.world > 1 else ""))
    repeats = bool(rec.model_.cfg.repeat_purchases) if rec.model_ is not None else bool(rec.config.repeat_purchases)
    result = evaluate(_Fitted(rec, resume), split, ks=(10,), progress=not args.no_progress, exclude_seen=not repeats)
    summary = {k: round(v, 4) for k, v in result.summary().items() if k in ("ndcg@10", "recall@10", "mrr@10")}
    extra = {"vectors_spec": vectors.spec, "test": summary, "data": args.dataset or args.items,
             "world_size": ctx.world, "split": args.split,
             # the last training event's time + 1: `mmrec evaluate --mmrec-checkpoint` refuses a later cut
             "train_end": split.params.get("train_end", int(split.train.timestamp.max()) + 1 if len(split.train) else 0)}
    extra["seen_until"] = _seen_until(resumed, split, extra["train_end"])
    if vectors.spec.startswith("text"):
        extra["recipe"] = list(parse_recipe(args.text_fields).fields)
    if args.events_since is not None:
        extra["events_since"] = {"data_dir": str(_log_dir(args)), "since": args.events_since,
                                 "events": len(events)}
    out = rec.save(args.out, extra=extra)
    report = rec.report_
    print(json.dumps({"checkpoint": str(Path(out)),
                      ("test_leave_one_out" if args.split == "loo" else "test_next_basket"): summary,
                      "best_epoch": report.get("best_epoch"), "stopped": report.get("stopped"),
                      "train_minutes": round(report.get("train_seconds", 0.0) / 60, 2)}, indent=2))
    return 0


class _Fitted:
    """Lets `evaluation.evaluate` drive a (possibly resumed) FusionRecommender."""

    def __init__(self, rec, resume: bool) -> None:
        self.rec, self.resume, self.name = rec, resume, rec.name

    def fit(self, train, valid=None):
        self.rec.fit(train, valid, resume=self.resume)
        return self

    def recommend(self, histories, k, exclude_seen=True, candidates=None):
        return self.rec.recommend(histories, k, exclude_seen=exclude_seen, candidates=candidates)

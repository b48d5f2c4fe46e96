"""`mmrec serve --data-dir DIR [--api-key KEY]`: the HTTP service (OpenAPI docs at /docs).

A new DIR starts empty; an existing one is reopened with everything acknowledged before (items in the
vector store's write-ahead log, events and impressions in DIR/events.jsonl and DIR/impressions.jsonl).
One process per DIR. With `--events redis://HOST:PORT/DB` events and impressions live in that Redis
instead, shared by every replica that names it (each with its own DIR, or one Qdrant server for vectors).

`--variant NAME=SOURCE:SHARE` (repeatable) serves an A/B test: SOURCE is a checkpoint or "content";
users are assigned by a hash of their id and `--experiment` (mmrec/serving/variants.py).

Without API keys anyone who reaches the port can read and write everything, so the service then binds
to loopback only and refuses another --host unless --insecure says that is meant. Keys come from
--api-key / --read-only-api-key, from files (--api-key-file: not visible in `ps`), or from the
environment (MMREC_API_KEY / MMREC_READ_ONLY_API_KEY). See SECURITY.md.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

from mmrec.commands import parse_recipe
from mmrec.errors import UserError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    from mmrec.serving.api.settings import DEFAULT_MAX_BODY_BYTES

    parser = sub.add_parser("serve", help="run the search/recommendation HTTP service")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; anything but loopback needs --api-key (or --insecure)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", required=True, help="where items, vectors and events are kept")
    parser.add_argument("--text-encoder", default="default", help="text encoder spec (see encoders/text.py)")
    parser.add_argument("--image-encoder", default="default",
                        help="image encoder spec, or 'none' for a text-only service [default: efficientnet-lite0:onnx]")
    parser.add_argument("--adapter", default="default",
                        help="image->text adapter: 'default' (trained on emoji-market on first use), a file from "
                             "`mmrec train-adapter`, or 'none' (training-free class-name bridge only)")
    parser.add_argument("--store", default="edge",
                        help="edge: embedded Qdrant in DIR/store; qdrant://HOST:PORT: a Qdrant server or cluster "
                             "(or 'server' with --qdrant-url)")
    parser.add_argument("--qdrant-url", default=None, help="Qdrant server URL for --store server")
    parser.add_argument("--collection", default="items", help="collection name on the Qdrant server")
    parser.add_argument("--shard-number", type=int, default=None,
                        help="Qdrant server: shards of a new collection (its API key: $QDRANT_API_KEY)")
    parser.add_argument("--replication-factor", type=int, default=None,
                        help="Qdrant server: copies of each shard in a new collection")
    parser.add_argument("--text-fields", default=None,
                        help="the item recipe: fields in the text [title,alt_title,year,description]; a data dir "
                             "keeps the recipe it was built with")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and numpy BLAS threads for the whole process, set once at start [1]")
    parser.add_argument("--batch-window-ms", type=float, default=None, metavar="MS",
                        help="micro-batching: concurrent /recommend (model) and /search requests arriving within MS "
                             "milliseconds are answered in one model forward / encoder call and one batched index "
                             "query; 0 turns it off [%g]" % _default_window())
    parser.add_argument("--language-fair-search", action="store_true",
                        help="order an unfiltered /search language-fairly: each listing against the best ones in its own "
                             "language (CSLS-style; helps queries in languages the text space leans on, can demote a "
                             "translation whose language has several close listings) [off]")
    parser.add_argument("--events", default=None,
                        help="where events and impressions are kept: 'file' (DIR/events.jsonl, the default) or "
                             "redis://[:PASSWORD@]HOST:PORT/DB, shared by replicas (Redis must run with appendonly "
                             "yes, appendfsync always); default: $MMREC_EVENTS, which keeps a password out of `ps`")
    parser.add_argument("--model", default=None,
                        help="fusion-transformer checkpoint (mmrec train) behind POST /recommend; "
                             "without it recommendations are content-based")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SOURCE:SHARE",
                        help="an A/B variant of /recommend: SOURCE is a checkpoint or 'content', SHARE its traffic "
                             "share (shares add up to 1); repeatable; instead of --model")
    parser.add_argument("--experiment", default="default",
                        help="the A/B test's name: salts the user-to-variant hash (a new name reshuffles users)")
    parser.add_argument("--explore", action="append", default=[], metavar="[VARIANT=]SHARE",
                        help="exploration for new items (Thompson sampling on per-item CTR from the impression "
                             "log, mmrec/serving/exploration.py): at most SHARE of a page's slots go to items with "
                             "few impressions; VARIANT= limits it to one A/B variant (repeatable), else every model "
                             "variant; off by default")
    parser.add_argument("--explore-new-below", type=int, default=200, metavar="N",
                        help="with --explore: items shown fewer than N times on /recommend may be explored [200]")
    security = parser.add_argument_group("security (see SECURITY.md)")
    security.add_argument("--api-key", default=None,
                          help="key for every call but /healthz (header 'api-key: KEY' or 'Authorization: Bearer "
                               "KEY'); default: $MMREC_API_KEY")
    security.add_argument("--read-only-api-key", default=None,
                          help="key that may only read (a write with it is 403); default: $MMREC_READ_ONLY_API_KEY")
    security.add_argument("--api-key-file", type=Path, default=None, help="read --api-key from this file")
    security.add_argument("--read-only-api-key-file", type=Path, default=None,
                          help="read --read-only-api-key from this file")
    security.add_argument("--insecure", action="store_true",
                          help="allow a non-loopback --host without API keys (anyone reaching it may write)")
    security.add_argument("--allowed-hosts", default=None,
                          help="comma-separated Host header names served, or '*'; default: the loopback names "
                               "when bound to loopback, else '*'")
    security.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                          help="a web origin (https://shop.example) allowed to call the API from a browser; repeatable")
    security.add_argument("--image-root", type=Path, default=None,
                          help="the directory `image_path` in POST /items may name files in; without it "
                               "`image_path` is refused (send image_base64)")
    security.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                          help=f"larger request bodies are answered 413 unread (default {DEFAULT_MAX_BODY_BYTES})")
    security.add_argument("--no-docs", action="store_true", help="do not serve /docs, /redoc and /openapi.json")
    parser.add_argument("--access-log", action="store_true", help="log every request (paths carry item and user ids)")
    parser.set_defaults(func=run)


def _key(value: str | None, file: Path | None, env: str, flag: str) -> str | None:
    if value is not None and file is not None:
        raise UserError(f"give {flag} or {flag}-file, not both")
    if file is not None:
        try:
            value = file.read_text().strip()
        except OSError as exc:
            raise UserError(f"cannot read {flag}-file {file}: {exc.strerror}") from None
    elif value is None:
        value = os.environ.get(env) or None
    if value is not None and len(value) < 16:
        raise UserError(f"{flag} is too short: use at least 16 characters (e.g. `openssl rand -hex 32`)")
    return value


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings_from_args(args: argparse.Namespace):
    """The service settings the flags ask for; refuses an unauthenticated service off loopback."""
    from mmrec.serving.api.settings import LOOPBACK_HOSTS, ServiceSettings

    api_key = _key(args.api_key, args.api_key_file, "MMREC_API_KEY", "--api-key")
    read_only = _key(args.read_only_api_key, args.read_only_api_key_file, "MMREC_READ_ONLY_API_KEY",
                     "--read-only-api-key")
    loopback = is_loopback(args.host)
    if api_key is None and not loopback and not args.insecure:
        raise UserError(f"refusing to serve {args.host} without an API key: anyone reaching it could read and "
                        f"change everything. Set --api-key (or MMREC_API_KEY), bind to 127.0.0.1, or pass --insecure")
    if args.allowed_hosts is not None:
        hosts = tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip())
        if not hosts:
            raise UserError("--allowed-hosts is empty")
    else:
        hosts = LOOPBACK_HOSTS if loopback else ("*",)
    image_root = None
    if args.image_root is not None:
        if not args.image_root.is_dir():
            raise UserError(f"--image-root {args.image_root} is not a directory")
        image_root = args.image_root.resolve()
    try:
        return ServiceSettings(api_key=api_key, read_only_api_key=read_only, allowed_hosts=hosts,
                               cors_origins=tuple(args.cors_origin), image_root=image_root,
                               max_body_bytes=args.max_body_bytes, docs=not args.no_docs)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def store_from_args(args: argparse.Namespace) -> tuple[str, str | None]:
    """(CatalogConfig.store, store_url) from --store / --qdrant-url; qdrant://HOST:PORT is a server over HTTP."""
    if args.store == "edge":
        return "edge", None
    if args.store == "server":
        if not args.qdrant_url:
            raise UserError("--store server needs --qdrant-url http://host:6333 (or use --store qdrant://host:6333)")
        return "server", args.qdrant_url
    if args.store.startswith("qdrant://") and len(args.store) > len("qdrant://"):
        return "server", "http://" + args.store.removeprefix("qdrant://")
    raise UserError("--store must be edge, qdrant://HOST:PORT, or server (with --qdrant-url)")


def variants_from_args(args: argparse.Namespace):
    """The --variant list (None when none is given: one variant of --model)."""
    from mmrec.serving.variants import check_variants, parse_variant

    if not args.variant:
        return None
    if args.model is not None:
        raise UserError("give --model or --variant, not both (a variant names its checkpoint: NAME=PATH:SHARE)")
    try:
        variants = [parse_variant(spec) for spec in args.variant]
        check_variants(variants)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for v in variants:
        if v.source != "content" and not Path(v.source).is_file():
            raise UserError(f"--variant {v.name}: no checkpoint file {v.source}")
    return variants


def exploration_from_args(args: argparse.Namespace, variants) -> dict:
    """--explore as {variant name: ExplorationConfig} (empty: no exploration)."""
    from mmrec.serving.exploration import ExplorationConfig

    names = [v.name for v in variants if v.source != "content"] if variants else ["default"]
    out: dict = {}
    for spec in args.explore:
        name, eq, share_text = spec.rpartition("=")
        try:
            share = float(share_text)
            config = ExplorationConfig(enabled=True, max_share=share, new_below=args.explore_new_below)
        except ValueError as exc:
            raise UserError(f"--explore {spec!r}: {exc}" if "must" in str(exc) else
                            f"--explore {spec!r}: expected [VARIANT=]SHARE with SHARE in [0, 1]") from None
        for target in ([name] if eq else names):
            out[target] = config
    if out and not variants and args.model is None:
        raise UserError("--explore needs a model (--model or a checkpoint --variant): content-based recommending "
                        "does not explore")
    return out


def _default_window() -> float:
    from mmrec.serving.batching import DEFAULT_WINDOW_MS

    return DEFAULT_WINDOW_MS


def batching_from_args(args: argparse.Namespace):
    """--batch-window-ms as a BatchingConfig (the default window when not given)."""
    from mmrec.serving.batching import BatchingConfig

    try:
        return BatchingConfig() if args.batch_window_ms is None else BatchingConfig(window_ms=args.batch_window_ms)
    except ValueError as exc:
        raise UserError(f"--batch-window-ms: {exc}") from None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from index import SchemaError, StoreError
    from mmrec.serving.app import create_app, open_services
    from mmrec.serving.event_log import EventLogInUse
    from mmrec.serving.interaction_log import EventLogError
    from mmrec.serving.language_rank import LanguageRankConfig
    from mmrec.store.catalog_store import CatalogConfig

    store, store_url = store_from_args(args)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    settings = settings_from_args(args)  # before the models load: a refused start is immediate
    variants = variants_from_args(args)
    exploration = exploration_from_args(args, variants)
    events = args.events or os.environ.get("MMREC_EVENTS") or None
    image_encoder = None if args.image_encoder.lower() in ("none", "") else args.image_encoder
    adapter = None if args.adapter.lower() in ("none", "") else args.adapter
    for flag in ("shard_number", "replication_factor", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1")
    config = CatalogConfig(text_encoder=args.text_encoder, image_encoder=image_encoder, adapter=adapter,
                           store=store, store_url=store_url, collection=args.collection,
                           shard_number=args.shard_number, replication_factor=args.replication_factor,
                           recipe=_recipe(args))
    batching = batching_from_args(args)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)  # once per process: requests never change it
    threadpool_limits(args.threads)  # numpy's BLAS too (it defaults to every core, per call, per thread)
    try:
        services = open_services(args.data_dir, config, model=args.model if variants is None else None,
                                 events=events, variants=variants, experiment=args.experiment,
                                 exploration=exploration, batching=batching,
                                 language_rank=LanguageRankConfig(enabled=args.language_fair_search))
    except (StoreError, SchemaError, EventLogInUse, EventLogError, ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    except (RuntimeError, ImportError) as exc:  # encoder specs that cannot be loaded here
        raise UserError(f"cannot load the encoders ({args.text_encoder!r}, {args.image_encoder!r}): {exc}") from None
    app = create_app(services, settings)
    import gc

    gc.freeze()  # the models and catalog loaded above are never garbage: full collections skip them (tail latency)
    log.info("events and impressions: %s", getattr(services.events, "where", services.events.kind))
    for name, cfg in exploration.items():
        log.info("variant %r explores: up to %g of a page's slots for items shown fewer than %d times", name,
                 cfg.max_share, cfg.new_below)
    if len(services.variants) > 1:
        log.info("A/B test %r: %s", args.experiment,
                 ", ".join(f"{v.name}={v.model}:{v.share:g}" for v in services.variants))
    if settings.auth:
        log.info("API keys required (%s)", "read-write and read-only" if settings.read_only_api_key else "read-write")
    elif is_loopback(args.host):
        log.info("no API keys: serving loopback only (%s)", args.host)
    else:
        log.warning("--insecure: serving %s WITHOUT API keys; anyone who reaches it can read and change everything",
                    args.host)
    level = logging.getLogger().getEffectiveLevel()
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, server_header=False,
                log_level="debug" if level <= logging.DEBUG else "info")
    return 0


def _recipe(args: argparse.Namespace) -> tuple[str, ...]:
    """--text-fields, else the recipe the data dir was built with (e.g. by `mmrec index --text-fields`)."""
    from mmrec.store.catalog_store import CatalogConfig

    if args.text_fields:
        return parse_recipe(args.text_fields).fields
    recorded = CatalogConfig.recorded(args.data_dir)
    return tuple(recorded.recipe) if recorded is not None else parse_recipe(None).fields

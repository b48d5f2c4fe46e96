"""`mmrec serve --host 127.0.0.1 --port 8000 --data-dir DIR`: the HTTP service (OpenAPI docs at /docs).

A new DIR starts empty; an existing one is reopened with everything acknowledged before (items in the
vector store's write-ahead log, events in DIR/events.jsonl). One process per DIR with the edge store.
"""
from __future__ import annotations

import argparse
import logging

from mmrec.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="run the search/recommendation HTTP service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", required=True, help="where items, vectors and events are kept")
    parser.add_argument("--text-encoder", default="default", help="text encoder spec (see encoders/text.py)")
    parser.add_argument("--image-encoder", default="efficientnet-lite0",
                        help="image encoder spec, or 'none' for a text-only service")
    parser.add_argument("--adapter", default="default",
                        help="image->text adapter: 'default' (trained on emoji-market on first use), a file from "
                             "`mmrec train-adapter`, or 'none' (training-free class-name bridge only)")
    parser.add_argument("--store", choices=("edge", "server"), default="edge",
                        help="edge: embedded Qdrant in DIR/store; server: a Qdrant server (--qdrant-url)")
    parser.add_argument("--qdrant-url", default=None, help="Qdrant server URL for --store server")
    parser.add_argument("--collection", default="items", help="collection name on the Qdrant server")
    parser.add_argument("--model", default=None,
                        help="fusion-transformer checkpoint (mmrec train) behind POST /recommend; "
                             "without it recommendations are content-based")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from index import SchemaError, StoreError
    from mmrec.store.catalog_store import CatalogConfig
    from mmrec.serving.app import open_service

    if args.store == "server" and not args.qdrant_url:
        raise UserError("--store server needs --qdrant-url http://host:6333")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    image_encoder = None if args.image_encoder.lower() in ("none", "") else args.image_encoder
    adapter = None if args.adapter.lower() in ("none", "") else args.adapter
    config = CatalogConfig(text_encoder=args.text_encoder, image_encoder=image_encoder, adapter=adapter,
                           store=args.store, store_url=args.qdrant_url, collection=args.collection)
    try:
        app = open_service(args.data_dir, config, model=args.model)
    except (StoreError, SchemaError, ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    except (RuntimeError, ImportError) as exc:  # encoder specs that cannot be loaded here
        raise UserError(f"cannot load the encoders ({args.text_encoder!r}, {args.image_encoder!r}): {exc}") from None
    level = logging.getLogger().getEffectiveLevel()
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log,
                log_level="debug" if level <= logging.DEBUG else "info")
    return 0

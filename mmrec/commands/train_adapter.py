"""`mmrec train-adapter`: train the image->text-space adapter on a catalog and save it (.pt + .json)."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

from mmrec.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train-adapter", help="train the image->text adapter on a catalog's image-title pairs",
        description="Trains the adapter that maps image features into the text encoder's space (frozen "
                    "backbones, multi-positive InfoNCE over every title of a product, augmented views) and "
                    "keeps a memory of the catalog's products. Seeded: the same command gives the same adapter.")
    parser.add_argument("--catalog", default="emoji-market",
                        help="built-in dataset name or a catalog file (JSONL/Parquet/CSV with image_path) "
                             "[emoji-market]")
    parser.add_argument("--text-encoder", default="default", help="text encoder spec [default]")
    parser.add_argument("--image-encoder", default="default", help="image encoder spec [default: efficientnet-lite0:onnx]")
    parser.add_argument("--out", required=True, help="output path; writes OUT.pt and OUT.json")
    parser.add_argument("--steps", type=int, default=None, help="training steps [600]")
    parser.add_argument("--views", type=int, default=None, help="augmented views per image [2]")
    parser.add_argument("--seed", type=int, default=None, help="random seed [0]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is fastest on a busy 2-core machine [1]")
    parser.add_argument("--no-memory", action="store_true", help="do not keep the nearest-neighbour memory")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from encoders.adapter import AdapterConfig
    from mmrec.embedding.image_adapter import train_catalog_adapter

    config = AdapterConfig()
    overrides = {k: v for k, v in (("steps", args.steps), ("augment_views", args.views), ("seed", args.seed))
                 if v is not None}
    if args.no_memory:
        overrides["memory"] = False
    if any(v < 0 for v in overrides.values() if not isinstance(v, bool)):
        raise UserError("--steps, --views and --seed must be >= 0")
    config = replace(config, **overrides)
    if args.threads < 1:
        raise UserError("--threads must be >= 1")
    import torch

    torch.set_num_threads(args.threads)
    try:
        adapter = train_catalog_adapter(args.catalog, text_encoder=args.text_encoder,
                                        image_encoder=args.image_encoder, config=config)
    except (ValueError, RuntimeError) as exc:  # unknown encoder specs, unusable catalogs
        raise UserError(str(exc).splitlines()[0]) from None
    path = adapter.save(args.out)
    print(json.dumps({"saved": str(path), "config": str(path.with_suffix(".json")), "text_encoder": adapter.text_encoder,
                      "image_encoder": adapter.image_encoder, **{k: adapter.meta.get(k) for k in
                      ("products", "views", "titles", "memory_products", "final_loss", "train_seconds")}}, indent=2))
    return 0

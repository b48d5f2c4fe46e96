"""`mmrec train-text`: fine-tune the e5-small text encoder on a catalog's parallel titles."""
from __future__ import annotations

import argparse
import json

from mmrec.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train-text", help="fine-tune e5-small so a product's titles in different languages embed together",
        description="Contrastive fine-tuning (symmetric InfoNCE, in-batch negatives) of e5-small on the titles "
                    "of a catalog: rows sharing a product_id are positives of each other. Seeded: the same "
                    "command with the same --threads on the same machine gives the same model. Use the output directory as a text encoder spec, alone or "
                    "combined, e.g. --text-encoder 'OUT+use-m3'.")
    parser.add_argument("--catalog", default="emoji-market",
                        help="built-in dataset name or a catalog file (JSONL/Parquet/CSV with product_id and "
                             "title) [emoji-market]")
    parser.add_argument("--out", required=True, help="output directory (a transformers model + tune.json)")
    parser.add_argument("--steps", type=int, default=None, help="training steps [80]")
    parser.add_argument("--batch-products", type=int, default=None, help="products per step [128]")
    parser.add_argument("--lr", type=float, default=None, help="learning rate [5e-5]")
    parser.add_argument("--seed", type=int, default=None, help="random seed [0]")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = every core [0]")
    parser.add_argument("--hold-out", action="store_true",
                        help="keep 1 product in 5 (by a hash of its id) out of tuning, to measure on them later, as "
                             "the default model does")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from encoders.tune import TextTuneConfig, read_tune_info
    from mmrec.embedding.text_model import tune_catalog_text_encoder

    overrides = {k: v for k, v in (("steps", args.steps), ("batch_groups", args.batch_products), ("lr", args.lr),
                                   ("seed", args.seed), ("threads", args.threads)) if v is not None}
    try:
        config = TextTuneConfig(**overrides)  # checks the recipe before the catalog is read
        path = tune_catalog_text_encoder(args.catalog, args.out, config, skip_held_out=args.hold_out)
    except (ValueError, RuntimeError, OSError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    info = read_tune_info(path) or {}
    print(json.dumps({"saved": str(path), **{k: info.get(k) for k in
                      ("name", "groups", "texts", "loss_first", "loss_last_10", "train_seconds", "held_out")}},
                     indent=2, ensure_ascii=False))
    return 0

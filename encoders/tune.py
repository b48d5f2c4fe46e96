"""Contrastive fine-tuning of a transformers text encoder on groups of parallel texts (a product's titles).

Why: frozen multilingual encoders place short product names by language first and meaning second (frozen
e5-small finds the same emoji-market product across languages at mean R@1 0.29). Fine-tuning on the titles
of a catalog's products, where every translation of a product is a positive of the others, pulls languages
together, and the gain carries over to products never seen in tuning (bench/encoders_text.py measures only
those).

Recipe (e5 / LaBSE style): mean pooling, symmetric InfoNCE with in-batch negatives, temperature 0.05. Each
step draws `batch_groups` groups and two different texts from each. The word-embedding table (250k pieces,
80% of e5-small's weights) stays frozen: the pieces of titles seen in tuning must not drift away from the
pieces of unseen ones. The base is an XLM-R-architecture encoder (e5-small; `encoders.text` loads it as
one). The result is a standalone model directory (transformers + sentence-transformers files + `tune.json`),
loadable by `encoders.text.load_text_encoder(path)`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from encoders.e5 import save_model_dir

TUNE_FORMAT = 1
TUNE_FILE = "tune.json"


@dataclass
class TextTuneConfig:
    steps: int = 80
    batch_groups: int = 128  # groups (products) per step; each gives 2 texts -> 256 texts per step
    lr: float = 5e-5
    weight_decay: float = 0.01
    temperature: float = 0.05
    max_length: int = 64  # tokens; product titles are far shorter
    seed: int = 0
    threads: int = 0  # torch threads while tuning; 0 = every core (2 threads: ~3.2 s/step here)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError for a recipe that cannot train (checked on creation and again before tuning)."""
        if self.steps < 1 or self.batch_groups < 2:
            raise ValueError("text tuning needs steps >= 1 and batch_groups (products per step) >= 2")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"text tuning needs a finite learning rate > 0, got {self.lr}")
        if self.threads < 0:
            raise ValueError("text tuning threads must be >= 0 (0 = every core)")

    def digest(self) -> str:
        """Identifies the tuning recipe: cache paths and encoder versions include it (`threads` excluded)."""
        recipe = {k: v for k, v in asdict(self).items() if k != "threads"}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def tune_text_encoder(base_dir: str | Path, groups: Sequence[Sequence[str]], out_dir: str | Path,
                      config: TextTuneConfig | None = None, *, prefix: str = "", meta: dict[str, Any] | None = None,
                      weights: Sequence[float] | None = None, progress: bool = True) -> Path:
    """Fine-tune the model in `base_dir` so that texts of one group embed together; write it to `out_dir`.

    groups: texts that mean the same thing (a product's titles in several languages); groups with fewer than
    two distinct texts are skipped. weights: how often each group is drawn relative to the others (default:
    all alike), e.g. a catalog's own products more often than extra parallel data. prefix: prepended to every text (e5: "passage: "). meta["version"], if
    given, names the result in encoder versions (cache keys); else a digest of recipe, base and texts does.
    The directory is written aside and renamed into place, so an interrupted run leaves nothing half-written
    and a failed one leaves an earlier model where it was.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    config = config or TextTuneConfig()
    if weights is not None and (len(weights) != len(groups) or not all(math.isfinite(w) and w > 0 for w in weights)):
        raise ValueError("text tuning weights: one finite weight > 0 per group")
    distinct = [list(dict.fromkeys(g)) for g in groups]
    keep = [i for i, g in enumerate(distinct) if len(g) >= 2]
    usable = [distinct[i] for i in keep]
    draw = [float(weights[i]) for i in keep] if weights is not None else None
    if len(usable) < 2:
        raise ValueError(f"text tuning needs at least 2 groups with 2 different texts, got {len(usable)}")
    config.validate()  # a config changed after creation
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and read_tune_info(out_dir) is None)):
        raise ValueError(f"{out_dir} exists and is not an earlier tuned model: choose a new output directory")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    rng = random.Random(config.seed)
    model = AutoModel.from_pretrained(base_dir, add_pooling_layer=False)
    model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    batch = min(config.batch_groups, len(usable))
    losses: list[float] = []
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    start = time.perf_counter()
    model.train()
    try:
        with torch.random.fork_rng():  # seed dropout without touching the caller's random state
            torch.manual_seed(config.seed)
            _train(model, tokenizer, optimiser, usable, batch, config, prefix, rng, losses, progress, draw)
    finally:
        torch.set_num_threads(threads_before)
    model.eval()
    data = hashlib.sha256(json.dumps([str(base_dir.resolve()), prefix, usable, *([draw] if draw else [])],
                                     ensure_ascii=False).encode())
    info = {"format": TUNE_FORMAT, "base": str(base_dir), "config": asdict(config), "digest": config.digest(),
            "version": f"{config.digest()}-{data.hexdigest()[:10]}",
            "groups": len(usable), "texts": sum(len(g) for g in usable), "prefix": prefix,
            "loss_first": losses[0], "loss_last_10": round(sum(losses[-10:]) / len(losses[-10:]), 4),
            "losses": losses, "train_seconds": round(time.perf_counter() - start, 1), **(meta or {})}
    # one prefix on both sides in tuning, so sentence-transformers must use it for queries too
    return save_model_dir(model, tokenizer, out_dir, prompts={"query": prefix, "passage": prefix},
                          info_file=TUNE_FILE, info=info)


def _train(model, tokenizer, optimiser, groups: list[list[str]], batch: int, config: TextTuneConfig, prefix: str,
           rng: random.Random, losses: list[float], progress: bool, weights: list[float] | None = None) -> None:
    """The training loop: `config.steps` steps of symmetric InfoNCE over `batch` groups x 2 texts (groups drawn
    without replacement, in proportion to `weights` if given: Efraimidis-Spirakis keys)."""
    import torch
    from tqdm.auto import tqdm

    labels = torch.arange(batch)
    with tqdm(range(config.steps), desc="tuning text encoder", unit="step", disable=not progress) as bar:
        for _ in bar:
            if weights is None:
                chosen = rng.sample(groups, batch)
            else:
                keys = [rng.random() ** (1.0 / w) for w in weights]
                chosen = [groups[i] for i in sorted(range(len(groups)), key=keys.__getitem__, reverse=True)[:batch]]
            pairs = [rng.sample(g, 2) for g in chosen]
            texts = [prefix + p[0] for p in pairs] + [prefix + p[1] for p in pairs]
            enc = tokenizer(texts, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt")
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)            # (2B, T, 1)
            z = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # (2B, d)
            logits = z[:batch] @ z[batch:].T / config.temperature                     # (B, B)
            loss = (torch.nn.functional.cross_entropy(logits, labels)
                    + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(round(loss.item(), 4))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")


def read_tune_info(model_dir: str | Path) -> dict[str, Any] | None:
    """The `tune.json` of a directory written by `tune_text_encoder`, or None for any other directory."""
    path = Path(model_dir) / TUNE_FILE
    return json.loads(path.read_text()) if path.exists() else None

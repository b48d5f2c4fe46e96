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
    # Same-language negatives (needs each text's language): each step is cut into blocks of this many groups
    # that share one language pair (A, B); every text is contrasted with all others of the step (NT-Xent), so
    # a text's negatives include other products in its own language and "same language" cannot pass for
    # "same product". 0 = off (two random texts per group, positives only across the two sides). Measured once,
    # small (20 steps x 64 groups, CLDR names, held-out fold 0): blocks of 16 vs off, X->en R@1 over 16 languages
    # 0.492 vs 0.485, mixed-gallery top-1 0.273 vs 0.278: no gain at that size, so the default stays off.
    language_blocks: int = 0

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
        if self.language_blocks < 0 or self.language_blocks == 1:
            raise ValueError("text tuning language_blocks must be 0 (off) or >= 2 groups per language pair")

    def digest(self) -> str:
        """Identifies the tuning recipe: cache paths and encoder versions include it (`threads` excluded)."""
        recipe = {k: v for k, v in asdict(self).items()
                  if k != "threads" and not (k == "language_blocks" and v == 0)}  # off: the digest it always had
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def tune_text_encoder(base_dir: str | Path, groups: Sequence[Sequence[str]], out_dir: str | Path,
                      config: TextTuneConfig | None = None, *, prefix: str = "", meta: dict[str, Any] | None = None,
                      weights: Sequence[float] | None = None, languages: Sequence[Sequence[str]] | None = None,
                      progress: bool = True) -> Path:
    """Fine-tune the model in `base_dir` so that texts of one group embed together; write it to `out_dir`.

    groups: texts that mean the same thing (a product's titles in several languages); groups with fewer than
    two distinct texts are skipped. weights: how often each group is drawn relative to the others (default:
    all alike), e.g. a catalog's own products more often than extra parallel data. languages: the language of
    each text (parallel to `groups`), needed by `config.language_blocks` (same-language negatives). prefix:
    prepended to every text (e5: "passage: "). meta["version"], if given, names the result in encoder
    versions (cache keys); else a digest of recipe, base and texts does.
    The directory is written aside and renamed into place, so an interrupted run leaves nothing half-written
    and a failed one leaves an earlier model where it was.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    config = config or TextTuneConfig()
    if weights is not None and (len(weights) != len(groups) or not all(math.isfinite(w) and w > 0 for w in weights)):
        raise ValueError("text tuning weights: one finite weight > 0 per group")
    config.validate()  # a config changed after creation
    if config.language_blocks and (languages is None or len(languages) != len(groups)
                                   or any(len(l) != len(g) for l, g in zip(languages, groups))):
        raise ValueError("text tuning with language_blocks needs the language of every text (languages=, "
                         "shaped like groups)")
    distinct = [list(dict.fromkeys(g)) for g in groups]
    keep = [i for i, g in enumerate(distinct) if len(g) >= 2]
    usable = [distinct[i] for i in keep]
    by_language = None
    if config.language_blocks:
        by_language = []
        for i in keep:
            texts: dict[str, list[str]] = {}
            for text, lang in zip(groups[i], languages[i]):  # type: ignore[index]
                if text not in texts.setdefault(str(lang), []):
                    texts[str(lang)].append(text)
            by_language.append(texts)
    draw = [float(weights[i]) for i in keep] if weights is not None else None
    if len(usable) < 2:
        raise ValueError(f"text tuning needs at least 2 groups with 2 different texts, got {len(usable)}")
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
            _train(model, tokenizer, optimiser, usable, batch, config, prefix, rng, losses, progress, draw,
                   by_language)
    finally:
        torch.set_num_threads(threads_before)
    model.eval()
    data = hashlib.sha256(json.dumps([str(base_dir.resolve()), prefix, usable, *([draw] if draw else []),
                                      *([by_language] if by_language else [])],
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
           rng: random.Random, losses: list[float], progress: bool, weights: list[float] | None = None,
           by_language: list[dict[str, list[str]]] | None = None) -> None:
    """The training loop: `config.steps` steps of symmetric InfoNCE over `batch` groups x 2 texts (groups drawn
    without replacement, in proportion to `weights` if given: Efraimidis-Spirakis keys). With `by_language`
    (config.language_blocks): texts drawn in language-pair blocks (`_language_block_pairs`) and NT-Xent over
    all 2 x batch texts, so each text's own language supplies negatives."""
    import torch
    from tqdm.auto import tqdm

    labels = torch.arange(batch)
    index = None
    if by_language is not None:
        index = {}
        for i, texts in enumerate(by_language):
            for lang in texts:
                index.setdefault(lang, set()).add(i)
    with tqdm(range(config.steps), desc="tuning text encoder", unit="step", disable=not progress) as bar:
        for _ in bar:
            if by_language is not None:
                pairs = _language_block_pairs(by_language, index, weights, batch, config.language_blocks, rng)
            elif weights is None:
                pairs = [rng.sample(g, 2) for g in rng.sample(groups, batch)]
            else:
                keys = [rng.random() ** (1.0 / w) for w in weights]
                chosen = [groups[i] for i in sorted(range(len(groups)), key=keys.__getitem__, reverse=True)[:batch]]
                pairs = [rng.sample(g, 2) for g in chosen]
            n = len(pairs)
            texts = [prefix + p[0] for p in pairs] + [prefix + p[1] for p in pairs]
            enc = tokenizer(texts, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt")
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)            # (2B, T, 1)
            z = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # (2B, d)
            if by_language is not None:  # NT-Xent: every other text of the step is a negative
                logits = z @ z.T / config.temperature
                logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
                target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
                loss = torch.nn.functional.cross_entropy(logits, target)
            else:
                logits = z[:n] @ z[n:].T / config.temperature                       # (B, B)
                loss = (torch.nn.functional.cross_entropy(logits, labels[:n])
                        + torch.nn.functional.cross_entropy(logits.T, labels[:n])) / 2
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(round(loss.item(), 4))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")


def _language_block_pairs(by_language: list[dict[str, list[str]]], index: dict[str, set[int]],
                          weights: list[float] | None, batch: int, block: int,
                          rng: random.Random) -> list[list[str]]:
    """`batch` (text in A, text in B) pairs of distinct groups, in blocks of up to `block` groups that share
    one language pair (A, B): a seed group (drawn by weight) picks A and B, the rest of its block are other
    groups named in both (by weight, Efraimidis-Spirakis keys) whose A and B names differ."""
    def key(i: int) -> float:
        return rng.random() ** (1.0 / weights[i]) if weights is not None else rng.random()

    pairs: list[list[str]] = []
    used: set[int] = set()
    tries = 0
    while len(pairs) < batch and tries < 50 * batch:
        tries += 1
        seed = max(rng.sample(range(len(by_language)), min(64, len(by_language))), key=key)
        if seed in used or len(by_language[seed]) < 2:
            continue
        lang_a, lang_b = rng.sample(sorted(by_language[seed]), 2)
        cands = [i for i in index[lang_a] & index[lang_b] - used
                 if set(by_language[i][lang_a]) != set(by_language[i][lang_b])]
        take = sorted(cands, key=lambda i: key(i), reverse=True)[:min(block, batch - len(pairs))]
        if len(take) < 2:
            continue
        for i in take:
            pairs.append([rng.choice(by_language[i][lang_a]), rng.choice(by_language[i][lang_b])])
            used.add(i)
    if len(pairs) < 2:
        raise ValueError("text tuning with language_blocks found no two groups named in a shared language pair")
    return pairs


def read_tune_info(model_dir: str | Path) -> dict[str, Any] | None:
    """The `tune.json` of a directory written by `tune_text_encoder`, or None for any other directory."""
    path = Path(model_dir) / TUNE_FILE
    return json.loads(path.read_text()) if path.exists() else None

"""Training the fusion transformer, checkpoints, and `FusionRecommender` (the model behind the
`evaluation.Recommender` protocol, so every benchmark scores it exactly like the baselines).

Training is next-item prediction at every position of every history (each event predicts the next one),
with a full softmax over the warm catalog when it fits (ML-1M: 3,706 items) and a sampled softmax
(in-batch + uniformly sampled negatives, logQ-corrected) for large catalogs. AdamW, linear warmup then
cosine decay, early stopping on validation NDCG@10 through `evaluation.protocol.evaluate_cases`, seeded.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.baselines.sasrec import full_softmax_cross_entropy
from evaluation.protocol import Recommendations, evaluate_cases, top_k
from evaluation.splits import EvalSet, Histories, Interactions, as_histories
from mmrec.errors import UserError
from mmrec.model import (
    FusionConfig,
    FusionTransformer,
    gap_buckets,
    kind_codes,
    market_codes,
    value_codes,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mmrec-fusion/1"


@dataclass
class TrainConfig:
    """Optimisation. ``epochs`` fixes the schedule (so a run is deterministic); ``max_train_seconds`` is
    a safety stop that keeps the best checkpoint so far."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    final_lr_ratio: float = 0.02  # cosine decay from lr to lr * final_lr_ratio
    loss: str = "auto"  # "full" | "sampled" | "auto" (full when the warm catalog <= full_softmax_max_items)
    full_softmax_max_items: int = 50_000
    n_negatives: int = 1024  # sampled softmax: uniform negatives shared by the batch
    in_batch_negatives: bool = True  # sampled softmax: the batch's other targets are negatives too (logQ)
    label_smoothing: float = 0.0
    ce_chunk: int = 128  # positions per chunk of the fused full-softmax cross-entropy
    windows: str = "all"  # "all": long histories in max_len chunks; "last": only the last max_len events
    shuffle_ties: bool = False  # reorder same-second events at random each epoch. Off: on ML-1M the logged
    # order within a second carries signal (test NDCG@10 .149 shuffled vs .159 as logged, same run otherwise)
    skip_repeat_targets: bool = True  # do not train on predicting an item the user already had (the
    # protocol and the service exclude seen items, so a view->click->cart funnel on one item teaches nothing)
    patience: int = 3  # validation checks without improvement before stopping
    eval_every: int = 1
    eval_max_cases: int | None = None  # validate on a seeded sample of cases (None = all)
    max_train_seconds: float | None = None  # wall-clock budget for the whole fit (validation included)
    time_schedule: bool = True  # with a budget, the LR decay also follows the clock (ends on time under load;
    # then the run is not bit-for-bit repeatable, a fixed number of epochs without a budget is)
    id_init: str = "random"  # "random" | "cooccurrence": start the ID embeddings from the PPMI-SVD of item
    # pairs in the training histories (mmrec/cooccurrence.py), so a time-boxed run starts from what
    # item-kNN knows instead of noise
    id_init_window: int = 5  # "cooccurrence": items at most this many events apart count as a pair
    num_threads: int = 1  # 1 thread was faster than 2 on the shared 2-core box
    bf16: bool = False  # bfloat16 autocast: faster only with AMX; on an AVX512-BF16 Xeon without AMX the
    # ML-1M step measured 1.35-1.6x slower than float32 (bench/ml1m.py measures both and picks)
    seed: int = 0
    progress: bool = True


class _Threads:
    """Use ``n`` torch threads inside the block, then restore the caller's setting."""

    def __init__(self, n: int) -> None:
        self.n, self.prev = n, 1

    def __enter__(self) -> None:
        self.prev = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.prev)


# --------------------------------------------------------------------------------------------------------
# Event sequences as integer codes
# --------------------------------------------------------------------------------------------------------


@dataclass
class EventCodes:
    """Time-ordered events of many rows (users or ad-hoc histories), coded for the model. CSR by row.

    item: (n,) model item index (row of the content matrix); gap/kind/value: (n,) feature codes;
    market: (n,) market code of each event (the storefront it happened in; predicting event t uses
    event t's market as the context); indptr: (rows + 1,).
    """

    item: np.ndarray
    gap: np.ndarray
    kind: np.ndarray
    value: np.ndarray
    market: np.ndarray
    indptr: np.ndarray
    repeat: np.ndarray | None = None  # (n,) bool: the row already had this item earlier
    tie: np.ndarray | None = None  # (n,) id of the run of same-second events each event belongs to

    @classmethod
    def build(
        cls,
        item: np.ndarray,
        indptr: np.ndarray,
        cfg: FusionConfig,
        *,
        timestamps: np.ndarray | None = None,
        kinds: np.ndarray | None = None,
        values: np.ndarray | None = None,
        markets: np.ndarray | None = None,
    ) -> "EventCodes":
        n = len(item)
        row = Histories(indptr=indptr, items=item).row_of_event()
        first = np.ones(n, dtype=bool)
        first[1:] = row[1:] != row[:-1]
        tie = None
        if timestamps is None:
            gap = np.where(first, 1, 0)  # unknown gaps: only "first event" is known
        else:
            ts = np.asarray(timestamps, dtype=np.int64)
            gaps = np.zeros(n)
            gaps[1:] = ts[1:] - ts[:-1]
            gap = gap_buckets(gaps, first, cfg.n_gap_buckets)
            starts_run = first.copy()
            starts_run[1:] |= ts[1:] != ts[:-1]
            tie = np.cumsum(starts_run) - 1
        item = np.asarray(item, dtype=np.int64)
        order = np.lexsort((np.arange(n), item, row))  # by row, item, then time
        repeat = np.zeros(n, dtype=bool)
        same = (row[order][1:] == row[order][:-1]) & (item[order][1:] == item[order][:-1])
        repeat[order[1:]] = same
        return cls(
            item=item,
            repeat=repeat,
            tie=tie,
            gap=gap.astype(np.int64),
            kind=kind_codes(kinds, n),
            value=value_codes(values, n, cfg.n_value_buckets),
            market=market_codes(markets, cfg.markets, n),
            indptr=np.asarray(indptr, dtype=np.int64),
        )

    def shuffle_ties(self, rng: np.random.Generator) -> "EventCodes":
        """A copy with the events of every same-second run in a random order (gaps stay by position:
        the run's first event keeps the gap from the previous run, the others 0 s). Ratings entered in
        the same second have no real order, so training should not learn the one the log happens to hold."""
        if self.tie is None:
            return self
        perm = np.lexsort((rng.random(len(self.item)), self.tie))
        return replace(self, item=self.item[perm], kind=self.kind[perm], value=self.value[perm],
                       market=self.market[perm], repeat=None if self.repeat is None else self.repeat[perm])

    @classmethod
    def from_histories(cls, h: Histories, cfg: FusionConfig, values: np.ndarray | None = None) -> "EventCodes":
        return cls.build(h.items, h.indptr, cfg, timestamps=h.timestamps, kinds=h.kinds,
                         values=values if values is not None else getattr(h, "values", None), markets=h.markets)

    @classmethod
    def from_interactions(cls, t: Interactions, cfg: FusionConfig) -> "EventCodes":
        return cls.build(t.item, t.indptr, cfg, timestamps=t.timestamp, kinds=t.kind, values=t.value,
                         markets=t.market)


def _gather(codes: EventCodes, starts: np.ndarray, lengths: np.ndarray) -> dict[str, torch.Tensor]:
    """Right-padded (B, W) tensors of the events [start, start + length) of each row."""
    width = max(1, int(lengths.max()))
    ar = np.arange(width)
    real = ar[None, :] < lengths[:, None]
    pos = np.where(real, starts[:, None] + ar[None, :], starts[:, None])  # padding repeats a real event
    out = {name: torch.from_numpy(getattr(codes, name)[pos]) for name in ("item", "gap", "kind", "value", "market")}
    if codes.repeat is not None:
        out["repeat"] = torch.from_numpy(codes.repeat[pos])
    out["lengths"] = torch.from_numpy(lengths.astype(np.int64))
    out["real"] = torch.from_numpy(real)
    return out


def training_windows(codes: EventCodes, max_len: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of training windows of up to max_len + 1 events (inputs = all but the last,
    targets = all but the first). ``mode="all"`` cuts long histories into consecutive windows from the
    end so every event is a target once per epoch; ``"last"`` keeps only the most recent window."""
    if mode not in ("all", "last"):
        raise ValueError(f"windows must be 'all' or 'last', got {mode!r}")
    starts, lengths = [], []
    for s, e in zip(codes.indptr[:-1], codes.indptr[1:]):
        end = int(e)
        while end - s >= 2:
            begin = max(int(s), end - (max_len + 1))
            starts.append(begin)
            lengths.append(end - begin)
            if mode == "last":
                break
            end = begin + 1  # the next window's last input is this window's first
    return np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


# --------------------------------------------------------------------------------------------------------
# Item side
# --------------------------------------------------------------------------------------------------------


def vectors_version(item_vectors: np.ndarray, spec: str = "") -> str:
    """A short hash of a content-vector matrix (and the encoder spec that made it)."""
    h = hashlib.sha256(spec.encode())
    h.update(np.ascontiguousarray(item_vectors, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


@dataclass
class ItemSide:
    """What the model knows about the items it can rank: content (N, C), ID codes (N,), markets (N,)."""

    content: torch.Tensor
    ids: torch.Tensor
    market: torch.Tensor


# --------------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------------


def _loss(
    model: FusionTransformer,
    items: ItemSide,
    batch: dict[str, torch.Tensor],
    catalog: torch.Tensor,
    log_q: torch.Tensor | None,
    cfg: TrainConfig,
    full: bool,
    gen: torch.Generator,
) -> tuple[torch.Tensor | None, int]:
    """Next-item cross-entropy of one batch of windows. ``catalog``: item rows that can be targets
    (the warm items); ``log_q``: log of each catalog item's sampling frequency (sampled softmax)."""
    mcfg = model.cfg
    inp = {k: v[:, :-1] for k, v in batch.items() if k not in ("lengths", "real", "repeat")}
    tgt_item = batch["item"][:, 1:]  # (B, W-1)
    tgt_market = batch["market"][:, 1:]
    lengths = batch["lengths"] - 1
    real = batch["real"][:, 1:]
    if cfg.skip_repeat_targets and "repeat" in batch:
        real = real & ~batch["repeat"][:, 1:]  # the inputs still show the repeat; it is just not a target
    if not bool(real.any()):
        return None, 0
    if full:
        rows = catalog
        negatives = None
    else:
        negatives = catalog[torch.randint(0, len(catalog), (cfg.n_negatives,), generator=gen)]
        rows = torch.unique(torch.cat([inp["item"].reshape(-1), tgt_item[real], negatives]))
    if full:
        # every item of the model vocabulary may appear in a history; the softmax runs over `catalog`
        rows_all = torch.arange(len(items.ids))
    else:
        rows_all = rows
    content = model.content_proj(items.content[rows_all])
    if mcfg.use_markets:
        content = content + model.item_market_emb(items.market[rows_all])
    use_ids = mcfg.use_ids and mcfg.n_ids > 0
    ids = items.ids[rows_all]
    table = content + model.id_emb(ids) if use_ids else content  # (R, d)
    local = torch.searchsorted(rows_all, inp["item"].contiguous()) if not full else inp["item"]
    drop = use_ids and mcfg.id_dropout > 0
    id_drop = (torch.rand(local.shape, generator=gen) < mcfg.id_dropout) if drop else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        hidden = model(table, local, lengths, inp["kind"], inp["gap"], inp["value"], id_drop, ids if drop else None)
    users = model.user_vectors(hidden[real].float(), tgt_market[real])  # (M, d)
    # Output side: candidates get the "unknown item" ID with the same probability (for the whole batch).
    out_table = table
    if drop:
        out_drop = (torch.rand(len(rows_all), generator=gen) < mcfg.id_dropout).to(table.dtype)
        out_table = table + out_drop[:, None] * (model.id_emb.weight[0] - model.id_emb(ids))
    targets = tgt_item[real]  # (M,) model item indices
    if full:  # softmax over the whole (sorted) catalog
        target_pos = torch.searchsorted(catalog, targets)
        if cfg.label_smoothing > 0:
            loss = F.cross_entropy(model.scores(users, out_table[catalog]), target_pos,
                                   label_smoothing=cfg.label_smoothing)
        else:  # exact, chunked so the (M, N) logits never exist at once: 2-2.5x faster on CPU
            loss = full_softmax_cross_entropy(users, out_table[catalog], target_pos, cfg.ce_chunk, cfg.bf16)
    else:  # the positive against shared negatives (uniform draws [+ the batch's targets]), logQ-corrected
        if cfg.in_batch_negatives:
            negatives = torch.unique(torch.cat([targets, negatives]))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            pos = (users * out_table[torch.searchsorted(rows_all, targets)]).sum(-1, keepdim=True)  # (M, 1)
            neg = model.scores(users, out_table[torch.searchsorted(rows_all, negatives)])  # (M, K)
        neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))  # accidental hits
        logits = torch.cat([pos.to(neg.dtype), neg], 1)
        if cfg.in_batch_negatives:  # uniform-only sampling needs no correction (q is the same for all)
            q_pos = log_q[torch.searchsorted(catalog, targets)][:, None]
            q_neg = log_q[torch.searchsorted(catalog, negatives)][None, :].expand(len(pos), -1)
            logits = logits - torch.cat([q_pos, q_neg], 1).to(logits.dtype)
        loss = F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long), label_smoothing=cfg.label_smoothing)
    return loss, int(real.sum())


def train_model(
    model: FusionTransformer,
    items: ItemSide,
    codes: EventCodes,
    cfg: TrainConfig,
    *,
    catalog: np.ndarray,
    validate=None,
    log_prefix: str = "mmrec",
) -> dict[str, Any]:
    """Train ``model`` in place on the histories in ``codes``; ``catalog`` = item rows that may be
    targets (sorted); ``validate()`` -> validation NDCG@10 (or None). Returns a training report."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    starts, lengths = training_windows(codes, model.cfg.max_len, cfg.windows)
    if len(starts) == 0:
        raise UserError("no training history has two or more events")
    catalog_t = torch.from_numpy(np.sort(np.asarray(catalog, dtype=np.int64)))
    full = cfg.loss == "full" or (cfg.loss == "auto" and len(catalog_t) <= cfg.full_softmax_max_items)
    if cfg.loss not in ("full", "sampled", "auto"):
        raise ValueError(f"loss must be 'full', 'sampled' or 'auto', got {cfg.loss!r}")
    log_q = None
    if not full:
        # probability that item j is among a batch's candidates: one of the uniform draws, or the target
        # of one of the batch's ~n_targets positions (drawn by popularity)
        counts = np.bincount(codes.item, minlength=len(items.ids))[catalog_t.numpy()].astype(np.float64)
        n_targets = float(cfg.batch_size * min(model.cfg.max_len, max(1.0, lengths.mean() - 1)))
        p = counts / max(1.0, counts.sum())
        absent = (1.0 - 1.0 / len(catalog_t)) ** cfg.n_negatives * (1.0 - p) ** n_targets
        log_q = torch.from_numpy(np.log(np.maximum(1.0 - absent, 1e-12))).float()
    # Batches of similar-length windows (less padding), in a shuffled order each epoch.
    by_length = np.argsort(lengths, kind="stable")
    n_batches = math.ceil(len(starts) / cfg.batch_size)
    total_steps = cfg.epochs * n_batches
    budget = cfg.max_train_seconds
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    report: dict[str, Any] = {"epochs": [], "stopped": "epochs", "loss": "full" if full else "sampled",
                              "n_windows": int(len(starts)), "n_positions": int((lengths - 1).sum())}
    best, best_state, bad, step = -1.0, None, 0, 0
    t0 = time.perf_counter()
    base_codes = codes
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if cfg.shuffle_ties:
            codes = base_codes.shuffle_ties(rng)
        # shuffle within length-sorted chunks of 50 batches, then shuffle the batches themselves
        chunk = cfg.batch_size * 50
        order = np.concatenate([rng.permutation(by_length[i : i + chunk]) for i in range(0, len(by_length), chunk)])
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        t_epoch, cpu_epoch = time.perf_counter(), time.process_time()
        total, count, out_of_time = 0.0, 0, False
        iterator = batches
        if cfg.progress:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc=f"{log_prefix} epoch {epoch}/{cfg.epochs}", leave=False, unit="batch")
        for idx in iterator:
            elapsed = time.perf_counter() - t0
            if budget is not None and elapsed >= budget:
                out_of_time = True
                break
            # linear warmup, then cosine decay over the schedule's progress: steps done, or (with a time
            # budget and time_schedule) the share of the budget spent, whichever is further along
            progress = step / total_steps
            if budget is not None and cfg.time_schedule:
                progress = max(progress, elapsed / budget)
            factor = cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            for group in opt.param_groups:
                group["lr"] = cfg.lr * factor * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            batch = _gather(codes, starts[idx], lengths[idx])
            loss, n = _loss(model, items, batch, catalog_t, log_q, cfg, full, gen)
            step += 1
            if loss is None:
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * n
            count += n
        if cfg.progress and hasattr(iterator, "close"):
            iterator.close()
        entry = {"epoch": epoch, "loss": total / max(1, count), "seconds": time.perf_counter() - t_epoch,
                 "cpu_seconds": time.process_time() - cpu_epoch, "lr": opt.param_groups[0]["lr"]}
        if out_of_time:
            entry["partial"] = True
        if validate is not None and (epoch % cfg.eval_every == 0 or out_of_time or epoch == cfg.epochs):
            model.eval()
            score = float(validate())
            entry["valid_ndcg@10"] = score
            if score > best:
                best, bad, report["best_epoch"] = score, 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        report["epochs"].append(entry)
        line = f"{log_prefix} epoch {epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if k != "epoch")
        if cfg.progress:
            print(line, flush=True)
        else:
            log.info(line)
        if validate is not None and bad >= cfg.patience:
            report["stopped"] = "patience"
            break
        if out_of_time or (budget is not None and time.perf_counter() - t0 >= budget):
            report["stopped"] = "time budget"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
        report["best_valid_ndcg@10"] = best
    model.eval()
    report["train_seconds"] = time.perf_counter() - t0
    return report


# --------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, model: FusionTransformer, *, id_items: Sequence[str], vectors_version: str,
                    id_key: str = "item", extra: dict | None = None) -> Path:
    """Config + weights + the ID vocabulary (warm item ids, or product ids with ``id_key="product"``) + the
    item-vector version the weights expect."""
    if id_key not in ("item", "product"):
        raise ValueError(f"id_key must be 'item' or 'product', got {id_key!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.cfg.to_dict(),
        "state_dict": model.state_dict(),
        "id_items": [str(x) for x in id_items],
        "id_key": id_key,
        "vectors_version": vectors_version,
        "extra": extra or {},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


@dataclass
class Checkpoint:
    model: FusionTransformer
    id_items: list[str]
    vectors_version: str
    id_key: str = "item"  # what an ID row stands for: an item (listing) or a product (all its listings)
    extra: dict = field(default_factory=dict)


def load_checkpoint(path: str | Path, *, expect_vectors_version: str | None = None) -> Checkpoint:
    """Load a checkpoint; with ``expect_vectors_version``, refuse one trained on other item vectors
    (a different encoder or adapter puts items in a different space and the weights would be garbage)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem to fix
        raise UserError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an mmrec fusion checkpoint (expected format {CHECKPOINT_FORMAT})")
    version = payload["vectors_version"]
    if expect_vectors_version is not None and version != expect_vectors_version:
        raise UserError(
            f"checkpoint {path} was trained on item vectors version {version}, but these item vectors are "
            f"version {expect_vectors_version}: embed the catalog with the same encoder settings, or retrain"
        )
    model = FusionTransformer(FusionConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Checkpoint(model=model, id_items=list(payload["id_items"]), vectors_version=version,
                      id_key=payload.get("id_key", "item"), extra=payload.get("extra", {}))


# --------------------------------------------------------------------------------------------------------
# The Recommender-protocol wrapper used by every benchmark
# --------------------------------------------------------------------------------------------------------


@dataclass
class FusionRecommender:
    """The fusion transformer as an `evaluation.Recommender` over a split's item vocabulary.

    ``item_vectors`` (n_items, C) is aligned with ``split.item_ids``; ``item_market`` (n_items,) gives
    each item's listing market (or None); ``item_products`` (n_items,) each item's product id: with it,
    the listings of one product share one ID embedding (a purchase in one market teaches the model about
    that product's listings in every other). Items (products) with training events get an ID embedding;
    the others (cold) get the learned "unknown item" row and are ranked through their content. ``fit``
    trains from scratch, or fine-tunes the model already held (``resume=True``), keeping the ID rows it
    knew and adding new ones.
    """

    item_vectors: np.ndarray
    config: FusionConfig | None = None
    train_config: TrainConfig = field(default_factory=TrainConfig)
    item_ids: np.ndarray | None = None
    item_market: np.ndarray | None = None
    item_products: np.ndarray | None = None
    vectors_version: str = ""
    name: str = "mmrec"
    value_lookup: Any = None  # optional callable(Histories) -> (nnz,) event values (ratings) or None
    cold_offset: float = 0.0  # added to the scores of items without an ID (see tune_cold_offset)
    model_: FusionTransformer | None = field(default=None, repr=False)
    id_items_: list[str] = field(default_factory=list, repr=False)
    report_: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        vecs = np.asarray(self.item_vectors, dtype=np.float32)
        if vecs.ndim != 2:
            raise ValueError(f"item_vectors must be (n_items, C), got shape {vecs.shape}")
        if not self.vectors_version:
            self.vectors_version = vectors_version(vecs)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = vecs / np.where(norms > 0, norms, 1.0)  # the model expects unit vectors, like the index
        self.item_vectors = vecs

    # ---------------------------------------------------------------- setup

    def _markets(self) -> tuple[str, ...]:
        if self.item_market is None:
            return ()
        return tuple(sorted({str(m) for m in self.item_market if isinstance(m, str)}))

    @property
    def id_key(self) -> str:
        return "product" if self.item_products is not None else "item"

    def _id_keys(self) -> np.ndarray:
        """What each item's ID row is keyed by: its product id, or its own id."""
        if self.item_products is not None:
            if len(self.item_products) != len(self.item_vectors):
                raise ValueError(f"item_products has {len(self.item_products)} rows, item_vectors {len(self.item_vectors)}")
            return np.asarray(self.item_products, dtype=object)
        return np.asarray(self.item_ids, dtype=object)

    def _item_side(self) -> ItemSide:
        cfg = self.model_.cfg
        n = len(self.item_vectors)
        ids_of = {iid: k + 1 for k, iid in enumerate(self.id_items_)}
        ids = np.fromiter((ids_of.get(str(x), 0) for x in self._id_keys()), dtype=np.int64, count=n)
        market = market_codes(self.item_market, cfg.markets, n)
        return ItemSide(torch.from_numpy(self.item_vectors), torch.from_numpy(ids), torch.from_numpy(market))

    def fit(self, train: Interactions, valid: EvalSet | None = None, *, resume: bool = False) -> "FusionRecommender":
        if train.n_items != len(self.item_vectors):
            raise ValueError(f"item_vectors has {len(self.item_vectors)} rows but the split has {train.n_items} "
                             "items; align the vectors with split.item_ids")
        if self.item_ids is None:
            self.item_ids = np.asarray(train.item_ids, dtype=object)
        if self.train_config.id_init not in ("random", "cooccurrence"):
            raise ValueError(f"id_init must be 'random' or 'cooccurrence', got {self.train_config.id_init!r}")
        counts = train.item_counts()
        warm_names = list(dict.fromkeys(str(k) for k in self._id_keys()[counts > 0]))
        tc = self.train_config
        if resume and self.model_ is not None:
            known = set(self.id_items_)
            new = [x for x in warm_names if x not in known]
            self._grow_ids(len(new))
            self.id_items_ = self.id_items_ + new
        else:
            base = self.config or FusionConfig(content_dim=self.item_vectors.shape[1])
            cfg = replace(base, content_dim=self.item_vectors.shape[1], n_ids=len(warm_names), markets=self._markets())
            torch.manual_seed(tc.seed)
            self.model_ = FusionTransformer(cfg)
            self.id_items_ = warm_names
        with _Threads(tc.num_threads):
            items = self._item_side()
            codes = EventCodes.from_interactions(train, self.model_.cfg)
            if not resume and tc.id_init == "cooccurrence":
                self._init_ids(items, codes)
            validate = None
            if valid is not None and len(valid):
                vset = valid
                if tc.eval_max_cases and len(valid) > tc.eval_max_cases:
                    pick = np.random.default_rng(tc.seed).choice(len(valid), tc.eval_max_cases, replace=False)
                    vset = valid.subset(np.sort(pick))

                def validate() -> float:
                    per_case, _, _ = evaluate_cases(self, vset, train.n_items, ks=(10,), metrics=("ndcg",))
                    return float(np.nanmean(per_case["ndcg@10"]))

            self.report_ = train_model(self.model_, items, codes, tc, catalog=np.flatnonzero(counts > 0),
                                       validate=validate, log_prefix=self.name)
        self.report_["n_parameters"] = self.model_.n_parameters()
        return self

    def _init_ids(self, items: ItemSide, codes: EventCodes) -> None:
        """Overwrite the warm ID rows with co-occurrence embeddings (row 0, "unknown item", keeps its init)."""
        tc, model = self.train_config, self.model_
        if not (model.cfg.use_ids and model.cfg.n_ids):
            return
        from mmrec.cooccurrence import cooccurrence_matrix, ppmi_embeddings

        event_ids = items.ids.numpy()[codes.item] - 1  # (events,) ID row - 1, -1 = no ID
        counts = cooccurrence_matrix(event_ids, codes.indptr, model.cfg.n_ids, tc.id_init_window)
        emb = ppmi_embeddings(counts, model.cfg.hidden, seed=tc.seed)
        with torch.no_grad():
            model.id_emb.weight[1:] = torch.from_numpy(emb)

    def _grow_ids(self, n_new: int) -> None:
        """Add ``n_new`` ID rows, initialised as the "unknown item" row: a new item starts exactly where
        serving it cold left it."""
        if n_new <= 0:
            return
        model = self.model_
        old = model.id_emb.weight.data
        cfg = replace(model.cfg, n_ids=model.cfg.n_ids + n_new)
        grown = FusionTransformer(cfg)
        state = model.state_dict()
        state["id_emb.weight"] = torch.cat([old, old[0:1].repeat(n_new, 1)])
        grown.load_state_dict(state)
        self.model_ = grown

    # ---------------------------------------------------------------- inference

    @torch.no_grad()
    def user_vectors(self, histories: Histories | Sequence[Sequence[int]], batch_size: int = 256,
                     values: np.ndarray | None = None) -> np.ndarray:
        """(n, d) user vector of each history (its last event's hidden state + storefront market)."""
        if self.model_ is None:
            raise RuntimeError("call fit() first")
        h = as_histories(histories)
        model = self.model_
        cfg = model.cfg
        model.eval()
        if values is None and self.value_lookup is not None:
            values = self.value_lookup(h)
        codes = EventCodes.from_histories(h, cfg, values=values)
        items = self._item_side()
        ctx = market_codes(h.context_market, cfg.markets, len(h)) if h.context_market is not None else None
        if ctx is None:  # no storefront given: the market of the last event
            last = np.maximum(h.indptr[1:] - 1, 0)
            ctx = codes.market[last] if len(codes.market) else np.zeros(len(h), np.int64)
        out = np.zeros((len(h), cfg.hidden), dtype=np.float32)
        lengths_all = h.lengths
        nonempty = np.flatnonzero(lengths_all > 0)
        with _Threads(self.train_config.num_threads):
            table = model.item_table(items.content, items.ids, items.market)
            for s in range(0, len(nonempty), batch_size):
                rows = nonempty[s : s + batch_size]
                lengths = np.minimum(lengths_all[rows], cfg.max_len)
                starts = h.indptr[rows + 1] - lengths
                batch = _gather(codes, starts, lengths)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.train_config.bf16):
                    hid = model(table, batch["item"], batch["lengths"], batch["kind"], batch["gap"], batch["value"])
                last = hid[torch.arange(len(rows)), batch["lengths"] - 1].float()
                out[rows] = model.user_vectors(last, torch.from_numpy(ctx[rows])).numpy()
        return out

    @torch.no_grad()
    def item_matrix(self) -> np.ndarray:
        """(n_items, d) the ranking head's representation of every item of the vocabulary."""
        items = self._item_side()
        return self.model_.item_table(items.content, items.ids, items.market).numpy()

    def recommend(
        self,
        histories: Histories | Sequence[Sequence[int]],
        k: int,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
    ) -> Recommendations:
        h = as_histories(histories)
        users = self.user_vectors(h)
        scores = users @ self.item_matrix().T
        if self.cold_offset:
            scores[:, self._item_side().ids.numpy() == 0] += self.cold_offset
        scores[h.lengths == 0] = 0.0
        return top_k(scores, k, histories=h if exclude_seen else None, candidates=candidates)

    def tune_cold_offset(self, valid: EvalSet, grid: Sequence[float] = (0, 0.5, 1, 1.5, 2, 3, 4, 6, 8)) -> float:
        """Pick the score offset for items without an ID (cold items) that maximises NDCG@10 on
        ``valid``: how much a new product should be favoured over known ones is a business knob, and on
        a cold-start protocol it is tuned on that protocol's validation cases, never on the test."""
        best, best_offset = -1.0, 0.0
        for offset in grid:
            self.cold_offset = float(offset)
            per_case, _, _ = evaluate_cases(self, valid, len(self.item_vectors), ks=(10,), metrics=("ndcg",))
            score = float(np.nanmean(per_case["ndcg@10"]))
            self.report_.setdefault("cold_offset_search", []).append({"offset": float(offset), "valid_ndcg@10": score})
            if score > best:
                best, best_offset = score, float(offset)
        self.cold_offset = best_offset
        return best_offset

    # ---------------------------------------------------------------- persistence

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        info = {"train_config": asdict(self.train_config), "report": _jsonable(self.report_)}
        info.update(extra or {})
        return save_checkpoint(path, self.model_, id_items=self.id_items_, vectors_version=self.vectors_version,
                               id_key=self.id_key, extra=info)

    @classmethod
    def load(cls, path: str | Path, item_vectors: np.ndarray, *, item_ids: np.ndarray,
             item_market: np.ndarray | None = None, item_products: np.ndarray | None = None,
             vectors_version: str | None = None, train_config: TrainConfig | None = None) -> "FusionRecommender":
        """A fitted recommender from a checkpoint over a (possibly different) item vocabulary."""
        version = vectors_version or vectors_version_of(item_vectors)
        ck = load_checkpoint(path, expect_vectors_version=version)
        if ck.id_key == "product" and item_products is None:
            raise UserError(f"checkpoint {path} keys its IDs by product: pass item_products")
        tc = train_config or TrainConfig(**{k: v for k, v in ck.extra.get("train_config", {}).items()
                                             if k in TrainConfig.__dataclass_fields__})
        rec = cls(item_vectors=item_vectors, config=ck.model.cfg, train_config=tc, item_ids=np.asarray(item_ids, dtype=object),
                  item_market=item_market, item_products=item_products if ck.id_key == "product" else None,
                  vectors_version=version)
        rec.model_ = ck.model
        rec.id_items_ = ck.id_items
        rec.report_ = ck.extra.get("report", {})
        return rec


def vectors_version_of(item_vectors: np.ndarray) -> str:
    return vectors_version(np.asarray(item_vectors, dtype=np.float32))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x

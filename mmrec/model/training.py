"""Training the fusion transformer, checkpoints, and `FusionRecommender` (the model behind the
`evaluation.Recommender` protocol, so every benchmark scores it exactly like the baselines).

Training is next-item prediction at every position of every history (each event predicts the next one),
with a full softmax over the warm catalog when it fits (ML-1M: 3,706 items) and a sampled softmax
(in-batch + uniformly sampled negatives, logQ-corrected) for large catalogs. AdamW, linear warmup then
cosine decay, early stopping on validation NDCG@10 through `evaluation.protocol.evaluate_cases`, seeded.
Under torchrun (several processes, `mmrec.model.distributed`), each rank trains on its share of every
global batch through DDP; with one process the loop is the single-process one, unchanged.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmrec.errors import UserError
from mmrec.model import distributed
from mmrec.model.features import EventCodes, ItemSide, gather, training_windows
from mmrec.model.loss import next_item_loss
from mmrec.model.transformer import FusionTransformer

log = logging.getLogger(__name__)


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
    validate_initial: bool = False  # score the untrained model on validation first and keep it if no epoch
    # beats it: a model whose init is already a strong baseline (the repeat bonus starts as the decayed
    # purchase count) must not end up below where it started
    seed: int = 0
    progress: bool = True



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
    targets (sorted); ``validate()`` -> validation NDCG@10 (or None). Returns a training report.

    In a torch.distributed process group (torchrun) every rank calls this with the same data: the batch
    order is the same on all ranks (``rng``), each trains on its share of each batch through DDP (dropout
    and negatives drawn per rank), rank 0 validates and its clock and scores decide for all."""
    ctx = distributed.context()
    torch.manual_seed(cfg.seed + ctx.rank)
    gen = torch.Generator().manual_seed(cfg.seed + ctx.rank)
    rng = np.random.default_rng(cfg.seed)  # the same global batches on every rank
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
    opt = make_optimizer(model, cfg, sparse_ids=not full and ctx.world == 1)
    ddp_loss = distributed.DistributedLoss(model, ctx) if ctx.world > 1 else None
    report: dict[str, Any] = {"epochs": [], "stopped": "epochs", "loss": "full" if full else "sampled",
                              "n_windows": int(len(starts)), "n_positions": int((lengths - 1).sum())}
    best, best_state, bad, step = -1.0, None, 0, 0
    t0 = time.perf_counter()
    base_codes = codes
    if validate is not None and cfg.validate_initial:
        model.eval()
        best = ctx.broadcast(float(validate()) if ctx.is_main else 0.0)
        best_state, report["initial_valid_ndcg@10"], report["best_epoch"] = copy.deepcopy(model.state_dict()), best, 0
        if ctx.is_main and cfg.progress:
            print(f"{log_prefix} before training: valid_ndcg@10={best:.4g}", flush=True)
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
        if cfg.progress and ctx.is_main:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc=f"{log_prefix} epoch {epoch}/{cfg.epochs}", leave=False, unit="batch")
        for idx in iterator:
            elapsed = ctx.broadcast(time.perf_counter() - t0)  # rank 0's clock: one schedule, one stop
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
            if ddp_loss is None:
                batch = gather(codes, starts[idx], lengths[idx])
                loss, n = next_item_loss(model, items, batch, catalog_t, log_q, cfg, full, gen)
            else:
                mine = ctx.shard(idx)
                batch = gather(codes, starts[mine], lengths[mine]) if len(mine) else None
                loss, n = ddp_loss(batch, items, catalog_t, log_q, cfg, full, gen)
            step += 1
            if loss is None:
                continue
            opt.zero_grad(set_to_none=True)
            (loss if ddp_loss is None else ddp_loss.weighted(loss, n)).backward()
            opt.step()
            total += float(loss.detach()) * n
            count += n
        if hasattr(iterator, "close"):
            iterator.close()
        total, count = ctx.sum(total, count)  # the epoch's loss over every rank's targets
        entry = {"epoch": epoch, "loss": total / max(1, count), "seconds": time.perf_counter() - t_epoch,
                 "cpu_seconds": time.process_time() - cpu_epoch, "lr": opt.param_groups[0]["lr"]}
        if out_of_time:
            entry["partial"] = True
        if validate is not None and (epoch % cfg.eval_every == 0 or out_of_time or epoch == cfg.epochs):
            model.eval()
            score = ctx.broadcast(float(validate()) if ctx.is_main else 0.0)
            entry["valid_ndcg@10"] = score
            if score > best:
                best, bad, report["best_epoch"] = score, 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
        report["epochs"].append(entry)
        line = f"{log_prefix} epoch {epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if k != "epoch")
        if ctx.is_main and cfg.progress:
            print(line, flush=True)
        elif ctx.is_main:
            log.info(line)
        if validate is not None and bad >= cfg.patience:
            report["stopped"] = "patience"
            break
        if out_of_time or (budget is not None and ctx.broadcast(time.perf_counter() - t0) >= budget):
            report["stopped"] = "time budget"
            break
    model.id_emb.sparse = False  # serving and the full softmax read the table densely
    if best_state is not None:
        model.load_state_dict(best_state)
        report["best_valid_ndcg@10"] = best
    model.eval()
    report["train_seconds"] = time.perf_counter() - t0
    return report


class Optimizers:
    """Several torch optimizers stepped as one (`param_groups` spans all of them, so the LR schedule
    sets every group)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()


def make_optimizer(model: FusionTransformer, cfg: TrainConfig, *, sparse_ids: bool) -> Any:
    """AdamW over the model. With ``sparse_ids`` (the sampled softmax, one process) the ID embedding table
    gets sparse gradients and a lazy Adam (`torch.optim.SparseAdam`) that updates only the rows a step
    touched: a dense gradient and a dense AdamW update of an (n_items, d) table cost memory and time per
    step in proportion to the catalog (at 1M items, +285 MB and 2.5x the step time measured here), which
    is what the sampled softmax is there to avoid. The ID rows then get no weight decay."""
    betas = (0.9, 0.98)
    use_sparse = sparse_ids and model.cfg.use_ids and model.cfg.n_ids > 0
    model.id_emb.sparse = use_sparse
    if not use_sparse:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=betas)
    dense = [p for name, p in model.named_parameters() if name != "id_emb.weight"]
    return Optimizers(torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=betas),
                      torch.optim.SparseAdam([model.id_emb.weight], lr=cfg.lr, betas=betas))

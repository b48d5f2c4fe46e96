"""The fusion transformer's training objective: next-item cross-entropy at every position of a batch of
history windows, over the full warm catalog (exact, chunked) or a sampled softmax (in-batch + uniform
negatives, logQ-corrected) when the catalog is too large for a full softmax."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from evaluation.losses import full_softmax_cross_entropy
from mmrec.model.features import ItemSide, window_repeat_pairs
from mmrec.model.transformer import FusionTransformer


def target_mask(batch: dict[str, torch.Tensor], cfg: Any) -> torch.Tensor:
    """(B, W-1) bool: the positions of a batch of windows that are training targets. Re-bought items are
    skipped with ``cfg.skip_repeat_targets`` (a catalog without repeat purchases: a view->click->cart funnel
    on one item teaches nothing); `FusionRecommender` turns it off for a ``repeat_purchases`` model, whose
    job includes knowing when to re-offer an item."""
    real = batch["real"][:, 1:]
    if cfg.skip_repeat_targets and "repeat" in batch:
        real = real & ~batch["repeat"][:, 1:]  # the inputs still show the repeat; it is just not a target
    return real


def next_item_loss(
    model: FusionTransformer,
    items: ItemSide,
    batch: dict[str, torch.Tensor],
    catalog: torch.Tensor,
    log_q: torch.Tensor | None,
    cfg: Any,  # a TrainConfig: its loss fields (negatives, smoothing, ce_chunk, bf16, repeats)
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
    real = target_mask(batch, cfg)
    if not bool(real.any()):
        return None, 0
    if full and mcfg.repeat_purchases:
        raise ValueError("a repeat_purchases model trains with the sampled softmax (loss='sampled')")
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
    ids = items.ids[rows_all]
    table = model.item_table(items.content[rows_all], ids, items.market[rows_all])  # (R, d)
    use_ids = mcfg.use_ids and mcfg.n_ids > 0
    local = torch.searchsorted(rows_all, inp["item"].contiguous()) if not full else inp["item"]
    drop = use_ids and mcfg.id_dropout > 0
    id_drop = (torch.rand(local.shape, generator=gen) < mcfg.id_dropout) if drop else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        hidden = model(table, local, lengths, inp["kind"], inp["gap"], inp["value"], id_drop, ids if drop else None)
    users = model.user_vectors(hidden[real].float(), tgt_market[real])  # (M, d)
    # Output side: candidates get the "unknown item" ID with the same probability (for the whole batch).
    out_table = table
    if drop:
        out_drop = torch.rand(len(rows_all), generator=gen) < mcfg.id_dropout
        out_table = model.drop_ids(table, ids, out_drop)
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
        if mcfg.repeat_purchases:  # the repeat bonus of the history items among the candidates
            m, item, ago, nb, share, decayed, span = window_repeat_pairs(batch, real, mcfg.repeat_decay)
            item_repr = out_table[torch.searchsorted(rows_all, item)]
            bonus = model.repeat_bonus(users, m, ago, nb, share, item_repr, decayed, span).to(neg.dtype)
            hit = item == targets[m]
            pos = pos.to(neg.dtype).index_put((m[hit], torch.zeros_like(m[hit])), bonus[hit], accumulate=True)
            ordered, perm = torch.sort(negatives)  # (uniform-only negatives are not sorted)
            col = torch.searchsorted(ordered, item).clamp(max=len(ordered) - 1)
            there = ordered[col] == item
            neg = neg.index_put((m[there], perm[col[there]]), bonus[there], accumulate=True)
        neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))  # accidental hits
        logits = torch.cat([pos.to(neg.dtype), neg], 1)
        if cfg.in_batch_negatives:  # uniform-only sampling needs no correction (q is the same for all)
            q_pos = log_q[torch.searchsorted(catalog, targets)][:, None]
            q_neg = log_q[torch.searchsorted(catalog, negatives)][None, :].expand(len(pos), -1)
            logits = logits - torch.cat([q_pos, q_neg], 1).to(logits.dtype)
        loss = F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long), label_smoothing=cfg.label_smoothing)
    return loss, int(real.sum())

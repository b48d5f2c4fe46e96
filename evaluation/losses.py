"""The exact full-softmax cross-entropy over a whole item catalog, chunked so the (N, n_items) logits never
exist at once. Used by SASRec here and by any next-item model that trains against a full catalog."""
from __future__ import annotations

import torch


class _FullSoftmaxCE(torch.autograd.Function):
    """mean over positions of -log softmax(h @ w.T)[target]: the exact full cross-entropy over all items,
    computed in chunks of positions so the (N, n_items) logits never exist in memory at once.

    Same value and gradients as ``F.cross_entropy(h @ w.T, target)`` (checked in the tests), but the
    chunk's logits stay in cache: 2-2.5x faster on this CPU, where the unfused version spent most of its
    time writing, re-reading and zero-filling a 20k x 3.7k matrix per batch. The backward recomputes
    each chunk's logits instead of storing them.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, target: torch.Tensor, chunk: int,
                low_precision: bool = False) -> torch.Tensor:
        # h: (N, d) hidden states, w: (C, d) item embeddings, target: (N,) item indices in [0, C)
        hm, wm = (h.bfloat16(), w.bfloat16()) if low_precision else (h, w)  # matmul inputs
        lse = torch.empty(h.shape[0], dtype=h.dtype)
        for s in range(0, h.shape[0], chunk):
            lse[s : s + chunk] = torch.logsumexp((hm[s : s + chunk] @ wm.T).to(h.dtype), dim=1)
        ctx.save_for_backward(h, w, target, lse)
        ctx.chunk, ctx.low_precision = chunk, low_precision
        return (lse - (h * w[target]).sum(dim=1)).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, w, target, lse = ctx.saved_tensors
        scale = grad / h.shape[0]
        gh = torch.empty_like(h)
        gw = torch.zeros_like(w)
        if ctx.low_precision:  # bfloat16 matmuls (AMX), softmax and accumulation in float32
            hm, wm = h.bfloat16(), w.bfloat16()
            for s in range(0, h.shape[0], ctx.chunk):
                p = (hm[s : s + ctx.chunk] @ wm.T).float().sub_(lse[s : s + ctx.chunk, None]).exp_().mul_(scale)
                pm = p.bfloat16()
                gh[s : s + ctx.chunk] = pm @ wm
                gw += pm.T @ hm[s : s + ctx.chunk]
        else:
            for s in range(0, h.shape[0], ctx.chunk):
                hc = h[s : s + ctx.chunk]
                p = torch.addmm(-lse[s : s + ctx.chunk, None], hc, w.T).exp_().mul_(scale)  # softmax * scale
                torch.mm(p, w, out=gh[s : s + ctx.chunk])
                gw.addmm_(p.T, hc)
        gh.sub_(w[target] * scale)  # the -logit[target] term
        gw.index_add_(0, target, h * -scale)
        return gh, gw, None, None, None


def full_softmax_cross_entropy(h: torch.Tensor, w: torch.Tensor, target: torch.Tensor, chunk: int = 128,
                               low_precision: bool = False) -> torch.Tensor:
    """Exact mean cross-entropy of ``softmax(h @ w.T)`` against ``target``, chunked (see `_FullSoftmaxCE`).
    ``low_precision``: the logits' matmuls in bfloat16 (~1.7x faster with AMX; softmax stays float32)."""
    return _FullSoftmaxCE.apply(h, w, target, chunk, low_precision)

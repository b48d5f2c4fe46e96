"""Training on several processes or machines with torch's own DDP: `torchrun --nproc-per-node N -m mmrec
train ...` (or `mmrec train --ddp N`, which starts the same through torchrun's launcher API on this machine).

Every rank builds the same global batches (same seed, same order) and takes its share of each one, so N
processes follow the same optimisation as one process with the same global batch: DDP all-reduces the
gradients (gloo on CPU; the training loop runs on CPU today, see README), the loss of each rank is weighted
by its share of the batch's targets, and the clock that drives the time budget and learning-rate schedule
is rank 0's. Rank 0 validates, tests and writes the checkpoint; the others follow its decisions.

With one process (no `torchrun`, or `--nproc-per-node 1`) nothing here runs a collective and
`train_model` takes exactly its single-process path.
"""
from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmrec.errors import UserError
from mmrec.model.features import ItemSide
from mmrec.model.loss import next_item_loss, target_mask


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among `world` processes (world 1 = not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's share of one global batch: every `world`-th row from `rank` (the rows are length-
        sorted, so each share has similar lengths; shares differ in size by at most one row)."""
        return rows if self.world == 1 else rows[self.rank :: self.world]

    def broadcast(self, value: float) -> float:
        """Rank 0's value on every rank (a clock reading, a validation score)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.broadcast(t, src=0)
        return float(t.item())

    def sum(self, *values: float) -> tuple[float, ...]:
        """Each value summed over the ranks (one all-reduce for all of them)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return tuple(float(x) for x in t.tolist())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def context() -> DistContext:
    """The current process group's rank and size; world 1 when torch.distributed is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return DistContext(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return DistContext()


def init_from_env(backend: str = "gloo") -> DistContext:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...);
    world 1 without torchrun. gloo: the training loop runs on CPU (nccl would need CUDA tensors)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return context()


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `python -m mmrec ARGV` on `nproc` local processes with torchrun's own launcher (what
    `torchrun --standalone --nproc-per-node N` runs: elastic agent, c10d rendezvous on a free port), and
    turn a failed rank into one line instead of the launcher's report."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise UserError("--ddp must be >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: N processes share the cores
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "mmrec", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise UserError(f"training failed on rank {rank} (exit code {failure.exitcode}); see its message above") from None
    return 0


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """argv without `option VALUE` / `option=VALUE` (how `--ddp N` is dropped before relaunching)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def _has_unused_parameters(cfg: Any) -> bool:
    """Whether the `FusionConfig` switches an embedding off (its weights then get no gradient, which DDP
    must be told about; telling it otherwise costs a graph traversal per step and a warning)."""
    return not (cfg.use_ids and cfg.n_ids) or not all((cfg.use_gaps, cfg.use_kinds, cfg.use_values, cfg.use_markets))


class _LossStep(torch.nn.Module):
    """The whole loss of one batch as one module call, so DDP sees every use of the model (the item table,
    the sequence, the user head) in one forward and all-reduces every gradient."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor] | None, items: ItemSide, catalog: torch.Tensor,
                log_q: torch.Tensor | None, cfg: Any, full: bool, gen: torch.Generator) -> tuple[torch.Tensor, int]:
        loss, n = (None, 0) if batch is None else next_item_loss(self.model, items, batch, catalog, log_q, cfg,
                                                                 full, gen)
        if loss is None:  # no target on this rank in this batch: a zero loss that still reaches every weight
            loss = torch.stack([p.sum() for p in self.model.parameters()]).sum() * 0.0
        return loss, n


class DistributedLoss:
    """One step's loss on this rank through DDP, scaled so that the all-reduced (averaged) gradient is the
    gradient of the mean loss over all targets of the global batch, as one process computes it."""

    def __init__(self, model: torch.nn.Module, ctx: DistContext) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.ctx = ctx
        self.n_global = 0.0
        self.ddp = DistributedDataParallel(_LossStep(model), find_unused_parameters=_has_unused_parameters(model.cfg))

    def __call__(self, batch: dict[str, torch.Tensor] | None, items: ItemSide, catalog: torch.Tensor,
                 log_q: torch.Tensor | None, cfg: Any, full: bool, gen: torch.Generator
                 ) -> tuple[torch.Tensor | None, int]:
        """(this rank's mean loss, its targets), like `next_item_loss`; (None, 0) on every rank when no
        rank has a target in the batch (all skip the step together)."""
        n_local = 0 if batch is None else int(target_mask(batch, cfg).sum())
        (self.n_global,) = self.ctx.sum(float(n_local))
        if self.n_global == 0:
            return None, 0
        return self.ddp(batch if n_local else None, items, catalog, log_q, cfg, full, gen)

    def weighted(self, loss: torch.Tensor, n: int) -> torch.Tensor:
        """The loss to backpropagate: DDP averages gradients over ranks, so weighting each rank's mean by
        world * its targets / all targets makes the result the gradient of the global batch's mean loss."""
        return loss * (n * self.ctx.world / self.n_global)

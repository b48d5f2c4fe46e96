"""torch's intra-op thread count for a block of work, restored afterwards.

One torch/BLAS thread was 3-5x faster than two on a 2-core box with other work running, so every long
job (embedding, training, tuning) sets its own count for its duration, never per request in a server.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator


@contextlib.contextmanager
def torch_threads(n: int | None, *encoders: Any) -> Iterator[None]:
    """Run with `n` torch threads (and tell encoders that keep their own pools, e.g. USE), restoring the
    caller's setting afterwards. `n` None or 0 leaves everything as it is."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    for enc in encoders:
        if enc is not None and hasattr(enc, "set_threads"):
            enc.set_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)

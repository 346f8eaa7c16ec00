"""Torch's intra-op thread count for a block of small operations.

Small layers (the judge's, the torso layer's, SynthTalk's rasteriser batches) gain little from
a second thread, and on a 2-core machine that other processes keep busy a thread pool waiting
for a core stalls every operation: measured here, the judge ran ~3x faster on one thread than
on two on an idle machine and ~100x when the cores were busy; 60 tiny torso steps took 0.9 s
on one thread and 18 s on two.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` torch intra-op threads (None: as set), restoring the
    caller's setting after."""
    import torch  # here, not at import: the broker imports modules that import this one

    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)

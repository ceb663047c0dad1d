"""How many CPU threads a command computes with.

Kept apart from the training package so that every command (encode and
search included) can set it without importing what training needs.

Encode also chooses torch's thread count by itself once it has seen what
dominates (:func:`forward_threads`): decode threads and torch's intra-op
threads share the same cores, and on a decode-bound job the forward's extra
threads only wait on each other (and spin) while the decoders hold the cores.
"""
from __future__ import annotations

import os
from typing import Optional


def process_cores() -> int:
    """The cores this process may use, shared fairly among the processes torchrun starts on this machine."""
    from .kernels import default_threads  # the cores of this process's affinity mask

    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, default_threads() // local)


def set_threads(threads: Optional[int]) -> None:
    """Use every core by default; torch otherwise picks per-process defaults that may be lower."""
    import torch  # here, not at the top: a command that never computes need not load torch for this

    if threads is not None and threads < 0:
        from .errors import OptionError

        raise OptionError("threads", f"must be at least 1 (0 or none: every core), got {threads}")
    torch.set_num_threads(threads or process_cores())


def forward_threads(cores: int, workers: int, decode_ms: float, forward_ms: float) -> int:
    """Torch's intra-op threads for a forward beside ``workers`` decode threads on ``cores`` cores.

    ``decode_ms``: CPU time to decode one item (one thread); ``forward_ms``:
    wall time of the forward per item with every core. When the forward
    dominates (``forward_ms >= decode_ms``), the decoders are idle most of the
    time and the forward gets every core. When decoding dominates, the decode
    threads are busy all the time (with ``workers == 0`` the calling thread
    itself decodes between forwards): the forward gets the cores they leave,
    at least one. Measured on 2 cores with 12 MP JPEGs and a 64 px lite0
    student (docs/encode.md): one forward thread was 5-20% faster end to end
    than two for 0, 1 and 2 workers, while the forward alone is 1.4x faster
    on two threads.
    """
    if cores < 1 or workers < 0 or decode_ms < 0 or forward_ms < 0:
        raise ValueError(f"forward_threads needs cores >= 1 and non-negative workers and costs, got "
                         f"cores={cores} workers={workers} decode_ms={decode_ms} forward_ms={forward_ms}")
    if forward_ms >= decode_ms:
        return cores
    return max(1, cores - max(1, workers))


def tune_forward_threads(workers: int, decode_ms: float, forward_ms: float) -> int:
    """Set torch's threads by :func:`forward_threads` for this process's cores; returns the count set."""
    import torch

    threads = forward_threads(process_cores(), workers, decode_ms, forward_ms)
    torch.set_num_threads(threads)
    return threads

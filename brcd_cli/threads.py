"""How many CPU threads a command computes with.

Kept apart from the training package so that every command (encode and
search included) can set it without importing what training needs.
"""
from __future__ import annotations

import os
from typing import Optional


def set_threads(threads: Optional[int]) -> None:
    """Use every core by default (shared fairly among the processes torchrun starts on this machine);
    torch otherwise picks per-process defaults that may be lower."""
    import torch  # here, not at the top: a command that never computes need not load torch for this

    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local))

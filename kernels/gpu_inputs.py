"""Checks and layout of GPU (torch) tensors for the packed GPU kernels.

The CPU dispatch (_checks) turns arrays into numpy; GPU tensors must stay where
they are, so they get their own checks here, with the same wording. Packed
codes are then widened to rows of 64-bit words (zero bytes appended: they add
nothing to a distance) because every GPU kernel compares 64 bits at a time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from ._checks import check_code_widths, check_packed_layout, mask_layout

if TYPE_CHECKING:
    import torch

# Word counts the k-NN kernel is compiled for; rows are padded up to one of them.
KERNEL_WORDS: tuple[int, ...] = (1, 2, 4, 8, 16)


def is_gpu_tensor(x: Any) -> bool:
    """True for a torch tensor on a CUDA device (without importing torch when it is not loaded)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor) and x.device.type == "cuda"


def packed_codes(x: Any, name: str) -> "torch.Tensor":
    """``x`` as a contiguous uint8 (n, n_bytes) CUDA tensor, or ValueError."""
    import torch

    if not isinstance(x, torch.Tensor) or x.device.type != "cuda":
        where = f"a tensor on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a torch tensor on a CUDA device for the GPU kernels, got {where}")
    check_packed_layout(name, x.dtype == torch.uint8, x.dtype, tuple(x.shape))
    return x.contiguous()


def packed_pair(queries: Any, database: Any) -> "tuple[torch.Tensor, torch.Tensor]":
    """Queries and database: packed codes of one bit length on one CUDA device."""
    q = packed_codes(queries, "queries")
    db = packed_codes(database, "database")
    if q.device != db.device:
        raise ValueError(f"queries are on {q.device} but the database is on {db.device}; put both on one device")
    check_code_widths(q.shape[1], db.shape[1])
    return q, db


def packed_masks(masks: Any, n_queries: int, n_bytes: int, device: "torch.device") -> "torch.Tensor":
    """Masks as (1, n_bytes) (shared) or (n_queries, n_bytes) uint8 on ``device``."""
    import torch

    m = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(masks)
    m = mask_layout(m, m.dtype == torch.uint8, n_queries, n_bytes)
    return m.to(device).contiguous()


def min_words(n_bytes: int) -> int:
    """64-bit words needed for a code of n_bytes bytes."""
    return (n_bytes + 7) // 8


def kernel_words(n_bytes: int) -> Optional[int]:
    """Words per row for the k-NN kernel (the next compiled width), or None when codes are too long for it."""
    need = min_words(n_bytes)
    return next((w for w in KERNEL_WORDS if w >= need), None)


def to_words(packed: "torch.Tensor", words: int) -> "torch.Tensor":
    """(n, n_bytes) uint8 -> (n, words) int64, zero-padded; a view when no padding is needed."""
    import torch

    n, n_bytes = packed.shape
    width = 8 * words
    if n == 0:  # an empty tensor may carry strides that forbid a dtype view
        return torch.empty((0, words), dtype=torch.int64, device=packed.device)
    if n_bytes == width:
        return packed.contiguous().view(torch.int64)
    out = torch.zeros((n, width), dtype=torch.uint8, device=packed.device)
    out[:, :n_bytes] = packed
    return out.view(torch.int64)

"""Input checks shared by the public dispatch layer and the reference backend.

Every check turns a user mistake into a ``ValueError`` that names the argument
and says how to fix it, instead of letting a fast backend read out of bounds or
silently compute on the wrong bits. The helpers return normalised arrays (uint8,
2-D, C-contiguous), so a backend that receives their output needs no checks of
its own.
"""
from __future__ import annotations

import math
import operator
import sys
from typing import Any

import numpy as np


def to_numpy(x: Any, name: str) -> np.ndarray:
    """Accept numpy arrays and CPU torch tensors without importing torch."""
    if isinstance(x, np.ndarray):
        return x
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(
                f"{name} is a torch tensor on {x.device}; the packed Hamming kernels run on the CPU, "
                f"pass {name}.cpu() instead"
            )
        return x.detach().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - anything numpy cannot read
        raise ValueError(f"{name} must be a numpy array or a CPU torch tensor, got {type(x).__name__}") from exc


def packed_codes(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a C-contiguous uint8 (n, n_bytes) array or raise."""
    if type(x) is np.ndarray and x.dtype == np.uint8 and x.ndim == 2 and x.flags.c_contiguous:
        return x  # the common case, answered first: a single-query lookup is a few microseconds in all
    a = to_numpy(x, name)
    check_packed_layout(name, a.dtype == np.uint8, a.dtype, tuple(a.shape))
    return np.ascontiguousarray(a)


def check_packed_layout(name: str, is_uint8: bool, dtype: Any, shape: tuple[int, ...]) -> None:
    """Packed codes are uint8 and 2-D; one wording for numpy arrays and torch tensors alike."""
    if not is_uint8:
        raise ValueError(
            f"{name} must hold packed codes of dtype uint8 (n_codes, L/8), got dtype {dtype}; "
            "turn +-1 codes into packed ones with pack_codes()"
        )
    if len(shape) != 2:
        hint = f" (for a single code use {name}[None, :])" if len(shape) == 1 else ""
        raise ValueError(f"{name} must be 2-D (n_codes, n_bytes), got shape {shape}{hint}")


def packed_pair(queries: Any, database: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check that queries and database are packed codes of one bit length."""
    q = packed_codes(queries, "queries")
    db = packed_codes(database, "database")
    check_code_widths(q.shape[1], db.shape[1])
    return q, db


def check_code_widths(query_bytes: int, database_bytes: int) -> None:
    """Queries and database must have one code length of at least 8 bits (numpy and CUDA inputs alike)."""
    if query_bytes != database_bytes:
        raise ValueError(
            f"queries have {query_bytes} bytes per code ({8 * query_bytes} bits) but the database has "
            f"{database_bytes} bytes per code ({8 * database_bytes} bits); both must use the same code length"
        )
    if query_bytes == 0:
        raise ValueError("codes have 0 bytes (0 bits); packed codes need at least 8 bits")


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int, refused (naming ``name``) unless it is an integer >= 1; floats are refused, not rounded."""
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if n <= 0:
        raise ValueError(f"{name} must be a positive integer, got {n}")
    return int(n)


def check_k(k: Any) -> int:
    """k must be a positive integer; it is later clipped to the database size."""
    return positive_int(k, "k")


def check_radius(radius: Any, n_bits: int) -> int:
    """Return the integer radius to use (d <= r for real r is d <= floor(r)), clipped to the code length."""
    if type(radius) is int and radius >= 0:
        return min(radius, int(n_bits))
    try:
        r = float(radius)
    except (TypeError, ValueError):
        raise ValueError(f"radius must be a non-negative number of bits, got {radius!r}") from None
    if math.isnan(r) or r < 0:
        raise ValueError(f"radius must be a non-negative number of bits, got {radius!r}")
    if r >= n_bits:
        return int(n_bits)
    return int(math.floor(r))


def mask_layout(m: Any, is_uint8: bool, n_queries: int, n_bytes: int) -> Any:
    """Check a packed mask array (numpy or torch) and give it two dimensions; one wording for every backend."""
    if not is_uint8:
        raise ValueError(
            f"masks must be packed bit masks of dtype uint8, got dtype {m.dtype}; pack 0/1 masks with pack_codes()"
        )
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2:
        raise ValueError(
            f"masks must have shape (n_bytes,), (1, n_bytes) or (n_queries, n_bytes), got {tuple(m.shape)}"
        )
    if m.shape[1] != n_bytes:
        raise ValueError(
            f"masks have {m.shape[1]} bytes per row but the codes have {n_bytes} bytes; they must match"
        )
    if m.shape[0] not in (1, n_queries):
        raise ValueError(
            f"masks must hold one row shared by all queries or one row per query ({n_queries}), "
            f"got {m.shape[0]} rows"
        )
    return m


def packed_masks(masks: Any, n_queries: int, n_bytes: int) -> np.ndarray:
    """Normalise masks to (1, n_bytes) (shared by all queries) or (n_queries, n_bytes)."""
    m = to_numpy(masks, "masks")
    m = mask_layout(m, m.dtype == np.uint8, n_queries, n_bytes)
    return np.ascontiguousarray(m)

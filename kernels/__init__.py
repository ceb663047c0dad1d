"""Hamming-distance kernels for packed binary codes (installed as ``brcd_cli.kernels``).

Packed codes are uint8 arrays (n, L/8), bit i in byte i // 8 at position i % 8
(``pack_codes`` makes them). The packed operations run on the fastest backend
that loads: "native" (C++ extension) > "numba" > "reference"; set
BRCD_KERNEL_BACKEND=native|numba|reference to force one. All backends return
identical, exact results with ties broken by database index. The native
backend runs ``threads`` std::threads (default: every core this process may
use) and picks its SIMD path from the CPU (BRCD_SIMD overrides it).
"""
from __future__ import annotations

from .dispatch import (
    active_backend,
    available_backends,
    default_threads,
    hamming_distances,
    knn,
    masked_similarity_packed,
    native_features,
    radius_search,
)
from .dense_ops import masked_similarity
from .reference import pack_codes, unpack_codes

__all__ = [
    "pack_codes",
    "unpack_codes",
    "hamming_distances",
    "knn",
    "radius_search",
    "masked_similarity_packed",
    "masked_similarity",
    "available_backends",
    "active_backend",
    "native_features",
    "default_threads",
]

"""One entry point per packed operation, whichever backend does the work.

Inputs are validated and normalised here once (uint8, 2-D, C-contiguous, equal
widths, k > 0, radius >= 0), so the backends can assume clean arrays and every
backend reports a user mistake in the same words.

``threads`` (default: one per CPU core available to this process) sets how
many std::threads the native backend runs and how many of numba's pool the
numba backend uses (at most NUMBA_NUM_THREADS); the reference is
single-threaded and ignores it. The native
backend also picks its SIMD path at run time from the CPU: avx512, avx2, popcnt
or scalar on x86-64, neon or scalar on AArch64 (BRCD_SIMD overrides it with one
of these names); ``native_features()`` says which one runs, and docs/kernels.md
how each works and how close it comes to its core's limit.

The backends form one registry (kernels/_registry.py, shared with the GPU and
lookup dispatch): importing this module loads neither numba nor the C++
extension, the first packed call (or available_backends()) pays for it once,
and BRCD_KERNEL_BACKEND is read on every call so that a test or a user can
switch backends without restarting the process.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, Callable, Optional

import numpy as np

from . import _checks, cuda, gpu_inputs
from ._loading import import_extension
from ._registry import BackendRegistry

ENV_VAR = "BRCD_KERNEL_BACKEND"
_NATIVE_API_VERSION = 3
_OPS = ("hamming_distances", "knn", "radius_search", "masked_similarity_packed")


def _checked(loader: Callable[[], ModuleType]) -> Callable[[], ModuleType]:
    """The loader, refusing a module that lacks an operation (a stale or partial build)."""

    def load() -> ModuleType:
        mod = loader()
        missing = [op for op in _OPS if not hasattr(mod, op)]
        if missing:
            raise ImportError(f"module lacks {', '.join(missing)}")
        return mod

    return load


_LOADERS: dict[str, Callable[[], ModuleType]] = {  # in order of preference
    "native": _checked(lambda: import_extension("brcd_cli._hamming_cpu", _NATIVE_API_VERSION)),
    "numba": _checked(lambda: importlib.import_module(f"{__package__}.numba_backend")),
    "reference": _checked(lambda: importlib.import_module(f"{__package__}.reference")),
}
REGISTRY = BackendRegistry("kernel", ENV_VAR, _LOADERS)
BACKENDS: tuple[str, ...] = REGISTRY.names


def available_backends() -> dict[str, str]:
    """Backend name -> "available" or why it cannot be used, in order of preference."""
    return REGISTRY.available()


def default_threads() -> int:
    """CPU cores this process may run on (its affinity mask), the default thread count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def _threads(threads: Optional[int]) -> int:
    if threads is None:
        return default_threads()
    return _checks.positive_int(threads, "threads")


def _call(backend: Optional[str], op: str, threads: Optional[int], *args: Any) -> Any:
    """Run one packed op; the native and numba backends take a thread count, the reference is single-threaded."""
    n_threads = _threads(threads)
    name, mod = REGISTRY.select(backend)
    if name in ("native", "numba"):
        return getattr(mod, op)(*args, threads=n_threads)
    return getattr(mod, op)(*args)


def native_features() -> Optional[dict[str, Any]]:
    """CPU features and the SIMD path of the native backend, or None when it is not available."""
    mod = REGISTRY.loaded("native")
    return dict(mod.cpu_features()) if mod is not None else None


def active_backend() -> str:
    """The backend packed operations would use now (honours BRCD_KERNEL_BACKEND)."""
    return REGISTRY.select(None)[0]


def _on_gpu(queries: Any, database: Any) -> bool:
    """CUDA tensors stay on their device: the GPU dispatch (extension > CuPy > torch) takes them."""
    return gpu_inputs.is_gpu_tensor(queries) or gpu_inputs.is_gpu_tensor(database)


def hamming_distances(
    queries: Any, database: Any, *, backend: Optional[str] = None, threads: Optional[int] = None
) -> np.ndarray:
    """All-pairs Hamming distances between packed codes, int32 (q, n)."""
    if _on_gpu(queries, database):
        return cuda.hamming_distances(queries, database)
    q, db = _checks.packed_pair(queries, database)
    return _call(backend, "hamming_distances", threads, q, db)


def knn(
    queries: Any, database: Any, k: int, *, backend: Optional[str] = None, threads: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest codes per query: (distances int32 (q, k'), indices int64 (q, k')), k' = min(k, n).

    Rows are sorted by (distance, database index), so results are reproducible
    across backends and runs even when many codes tie.
    """
    if _on_gpu(queries, database):
        return cuda.knn(queries, database, k)
    q, db = _checks.packed_pair(queries, database)
    kk = _checks.check_k(k)
    return _call(backend, "knn", threads, q, db, kk)


def radius_search(
    queries: Any, database: Any, radius: float, *, backend: Optional[str] = None, threads: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All codes with distance <= radius, as CSR (lims int64 (q+1,), distances int32, indices int64).

    The hits of query i are [lims[i], lims[i+1]), sorted by (distance, index),
    like faiss range_search; a CSR layout avoids one Python list per query.
    """
    if _on_gpu(queries, database):
        return cuda.radius_search(queries, database, radius)
    q, db = _checks.packed_pair(queries, database)
    r = _checks.check_radius(radius, 8 * q.shape[1])
    return _call(backend, "radius_search", threads, q, db, r)


def masked_similarity_packed(
    queries: Any, database: Any, masks: Any, *, backend: Optional[str] = None, threads: Optional[int] = None
) -> np.ndarray:
    """cos_M(a, b) = (w - 2 popcount((a ^ b) & M)) / w with w = popcount(M), float32 (q, n); 0 where w == 0.

    masks is one packed mask shared by all queries, (nb,) or (1, nb), or one per
    query, (q, nb).
    """
    if _on_gpu(queries, database):
        return cuda.masked_similarity_packed(queries, database, masks)
    q, db = _checks.packed_pair(queries, database)
    m = _checks.packed_masks(masks, q.shape[0], q.shape[1])
    return _call(backend, "masked_similarity_packed", threads, q, db, m)

"""numba versions of the packed kernels, for installs without the C++ extension.

Inputs are expected to come through the dispatch layer (uint8, 2-D,
C-contiguous, equal byte width, k >= 1, radius already an int in [0, L]); the
functions here only reshape them into 64-bit words. Codes whose byte width is
not a multiple of 8 are zero-padded to whole words: zero bytes xor to zero, so
distances and masked counts are unchanged.

Everything is compiled on first call (no signatures, ``cache=False``), so
importing this module costs only the numba import and a read-only install never
tries to write a cache. numba compiles for the CPU it runs on, so the popcount
below becomes the POPCNT instruction wherever the CPU has one. Every operation
takes ``threads=``, the size of numba's pool for that call.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import numba
import numpy as np
from numba import njit, prange
from numba.core import types as nbtypes
from numba.extending import intrinsic

# Work units per thread for the tiled kernels: a few per thread evens out load.
_TILES_PER_THREAD = 4
# Smallest database slice worth a work unit of its own.
_MIN_TILE_ROWS = 2048


@intrinsic
def _popcount64(typingctx, x):  # type: ignore[no-untyped-def]
    """LLVM ctpop on a uint64, returned as int64 so sums stay integer in numba."""
    if not (isinstance(x, nbtypes.Integer) and x.bitwidth == 64):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.ctpop(args[0])

    return nbtypes.int64(x), codegen


@njit(cache=False, inline="always")
def _distance(qw, i, dbw, j, nw):  # type: ignore[no-untyped-def]
    d = 0
    for w in range(nw):
        d += _popcount64(qw[i, w] ^ dbw[j, w])
    return d


@njit(parallel=True, cache=False)
def _hamming_kernel(qw, dbw, out, n_chunks):  # type: ignore[no-untyped-def]
    n_q = qw.shape[0]
    n = dbw.shape[0]
    nw = qw.shape[1]
    chunk = (n + n_chunks - 1) // n_chunks
    for t in prange(n_q * n_chunks):
        i = t // n_chunks
        j0 = (t - i * n_chunks) * chunk
        j1 = min(n, j0 + chunk)
        if nw == 1:
            a = qw[i, 0]
            for j in range(j0, j1):
                out[i, j] = _popcount64(a ^ dbw[j, 0])
        else:
            for j in range(j0, j1):
                out[i, j] = _distance(qw, i, dbw, j, nw)


@njit(parallel=True, cache=False)
def _knn_kernel(qw, dbw, k, out_d, out_i, n_blocks):  # type: ignore[no-untyped-def]
    n_q = qw.shape[0]
    n = dbw.shape[0]
    nw = qw.shape[1]
    n_bins = 64 * nw + 1
    for b in prange(n_blocks):
        dist = np.empty(n, np.int32)
        hist = np.empty(n_bins, np.int64)
        for i in range(b * n_q // n_blocks, (b + 1) * n_q // n_blocks):
            hist[:] = 0
            if nw == 1:
                a = qw[i, 0]
                for j in range(n):
                    d = _popcount64(a ^ dbw[j, 0])
                    dist[j] = d
                    hist[d] += 1
            else:
                for j in range(n):
                    d = _distance(qw, i, dbw, j, nw)
                    dist[j] = d
                    hist[d] += 1
            # Threshold distance t: fewer than k codes are closer than t, at least k are within t.
            below = 0
            t = 0
            while below + hist[t] < k:
                below += hist[t]
                t += 1
            # Turn counts into output start positions (a counting sort over distances 0..t).
            start = 0
            for v in range(t + 1):
                c = hist[v]
                hist[v] = start
                start += c
            # One pass in index order: ties are placed by index, and the distance-t group is
            # cut at k. Positions of closer groups are always < k.
            placed = 0
            for j in range(n):
                d = dist[j]
                if d <= t:
                    p = hist[d]
                    if p < k:
                        out_d[i, p] = d
                        out_i[i, p] = j
                        hist[d] = p + 1
                        placed += 1
                        if placed == k:
                            break


@njit(parallel=True, cache=False)
def _radius_kernel(qw, dbw, r):  # type: ignore[no-untyped-def]
    n_q = qw.shape[0]
    n = dbw.shape[0]
    nw = qw.shape[1]
    # Pass 1: per query, how many codes sit at each distance 0..r.
    hist = np.zeros((n_q, r + 1), np.int64)
    for i in prange(n_q):
        for j in range(n):
            d = _distance(qw, i, dbw, j, nw)
            if d <= r:
                hist[i, d] += 1
    lims = np.zeros(n_q + 1, np.int64)
    for i in range(n_q):
        lims[i + 1] = lims[i] + hist[i].sum()
    out_d = np.empty(lims[n_q], np.int32)
    out_i = np.empty(lims[n_q], np.int64)
    # Pass 2: recompute and place each hit at its (distance, index) slot.
    for i in prange(n_q):
        start = lims[i]
        for v in range(r + 1):
            c = hist[i, v]
            hist[i, v] = start
            start += c
        for j in range(n):
            d = _distance(qw, i, dbw, j, nw)
            if d <= r:
                p = hist[i, d]
                out_d[p] = d
                out_i[p] = j
                hist[i, d] = p + 1
    return lims, out_d, out_i


@njit(parallel=True, cache=False)
def _masked_kernel(qw, dbw, mw, out, n_chunks):  # type: ignore[no-untyped-def]
    n_q = qw.shape[0]
    n = dbw.shape[0]
    nw = qw.shape[1]
    shared = mw.shape[0] == 1
    chunk = (n + n_chunks - 1) // n_chunks
    for t in prange(n_q * n_chunks):
        i = t // n_chunks
        j0 = (t - i * n_chunks) * chunk
        j1 = min(n, j0 + chunk)
        mi = 0 if shared else i
        w = 0
        for v in range(nw):
            w += _popcount64(mw[mi, v])
        if w == 0:
            for j in range(j0, j1):
                out[i, j] = 0.0
        else:
            fw = np.float64(w)
            for j in range(j0, j1):
                x = 0
                for v in range(nw):
                    x += _popcount64((qw[i, v] ^ dbw[j, v]) & mw[mi, v])
                out[i, j] = (w - 2 * x) / fw


def _words(a: np.ndarray) -> np.ndarray:
    """View packed codes as uint64 words, zero-padding the bytes to a multiple of 8 if needed."""
    n, nb = a.shape
    if nb % 8 == 0 and a.flags.c_contiguous and a.ctypes.data % 8 == 0:
        return a.view(np.uint64)
    padded = np.zeros((n, (nb + 7) // 8 * 8), dtype=np.uint8)
    padded[:, :nb] = a
    return padded.view(np.uint64)


def _n_chunks(n_queries: int, n_db: int) -> int:
    """Split each query's database scan only when there are too few queries to fill the threads."""
    target = _TILES_PER_THREAD * numba.get_num_threads()
    if n_queries >= target or n_db == 0:
        return 1
    max_chunks = max(1, n_db // _MIN_TILE_ROWS)
    return max(1, min(max_chunks, -(-target // max(1, n_queries))))


def _with_threads(op: Callable[..., Any]) -> Callable[..., Any]:
    """Give an operation a ``threads=`` argument: numba's thread count for this call (capped by its pool size).

    numba's count is per calling thread, so a call elsewhere is not affected; it is restored afterwards.
    """

    @functools.wraps(op)
    def run(*args: Any, threads: Optional[int] = None) -> Any:
        if threads is None:
            return op(*args)
        previous = numba.get_num_threads()
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
        try:
            return op(*args)
        finally:
            numba.set_num_threads(previous)

    return run


@_with_threads
def hamming_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances, int32 (q, n)."""
    out = np.empty((queries.shape[0], database.shape[0]), dtype=np.int32)
    if out.size:
        _hamming_kernel(_words(queries), _words(database), out, _n_chunks(*out.shape))
    return out


@_with_threads
def knn(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest codes per query by counting selection; k is clipped to the database size."""
    n_q, n = queries.shape[0], database.shape[0]
    kk = min(int(k), n)
    out_d = np.empty((n_q, kk), dtype=np.int32)
    out_i = np.empty((n_q, kk), dtype=np.int64)
    if n_q and kk:
        n_blocks = min(n_q, _TILES_PER_THREAD * numba.get_num_threads())
        _knn_kernel(_words(queries), _words(database), np.int64(kk), out_d, out_i, np.int64(n_blocks))
    return out_d, out_i


@_with_threads
def radius_search(queries: np.ndarray, database: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (lims, distances, indices) of all codes with distance <= radius."""
    n_q = queries.shape[0]
    if n_q == 0 or database.shape[0] == 0:
        return np.zeros(n_q + 1, dtype=np.int64), np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)
    r = min(int(radius), 8 * queries.shape[1])
    return _radius_kernel(_words(queries), _words(database), np.int64(r))


@_with_threads
def masked_similarity_packed(queries: np.ndarray, database: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Masked cosine similarity, float32 (q, n); masks are (1, nb) shared or (q, nb)."""
    out = np.empty((queries.shape[0], database.shape[0]), dtype=np.float32)
    if out.size:
        m = masks if masks.ndim == 2 else masks[None, :]
        _masked_kernel(_words(queries), _words(database), _words(m), out, _n_chunks(*out.shape))
    return out

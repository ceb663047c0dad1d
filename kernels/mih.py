"""Exact multi-index hashing (MIH): hash-table lookup over packed codes, native or numpy.

Multi-index hashing (Norouzi, Punjani & Fleet) cuts each L-bit code into m
contiguous substrings and keeps one hash table per substring. Two codes within
Hamming distance r agree to within floor(r / m) bits on at least one substring
(pigeonhole), so a radius search probes only the buckets near the query's
substrings and checks the full distance of what it finds; a k-NN search grows
the probed radius until k results are certain. Both are exact: they return
what a linear scan returns, ties broken by database index.

A table is CSR: ``offsets`` (bucket -> range of ``ids``), ``ids`` (increasing
within a bucket) and ``codes`` (the codes in the same order as ``ids``, so a
bucket's candidates are read sequentially). Substrings up to
:data:`DIRECT_MAX_WIDTH` bits use direct addressing (``keys`` is None and
``offsets`` has 2^w + 1 entries); wider ones store their distinct ``keys``
sorted, searched by bisection.

Two backends share this contract: "native" (``brcd_cli._mih_cpu``, C++) and
"reference" (numpy, written to be obviously correct; the tests hold the native
one to it and both to the linear scan). ``BRCD_MIH_BACKEND=native|reference``
forces one; by default the native one runs when it is built. The two form a
backend registry (kernels/_registry.py) like the scan's and the GPU's.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from . import _checks
from . import reference as _ref
from ._loading import import_extension
from ._registry import BackendRegistry

ENV_VAR = "BRCD_MIH_BACKEND"
NATIVE_API_VERSION = 2
MAX_SUBSTRING_BITS = 32  # keys are uint32
DIRECT_MAX_WIDTH = 24  # direct addressing up to 2^24 buckets (64 MiB of offsets) ...
DIRECT_MAX_BUCKETS_PER_CODE = 4  # ... and no more than 4 buckets per indexed code (plus 2^16)
MAX_CODES = 2**32 - 1  # ids are uint32
_MAX_PROBES = 4096  # the reference enumerates at most this many neighbour keys per table

# The numpy lookup below needs nothing beyond kernels.reference, so that is what its backend loads.
REGISTRY = BackendRegistry(
    "lookup",
    ENV_VAR,
    {"native": lambda: import_extension("brcd_cli._mih_cpu", NATIVE_API_VERSION), "reference": lambda: _ref},
)
BACKENDS: tuple[str, ...] = REGISTRY.names


def available_backends() -> dict[str, str]:
    """Backend name -> "available" or why it cannot be used, in order of preference."""
    return REGISTRY.available()


def native_features() -> Optional[dict[str, Any]]:
    """Whether the CPU has popcnt and which build of the candidate check runs, or None without the extension.

    The check has popcnt and AVX-512 builds on x86-64 and a portable one everywhere
    (on AArch64 the compiler's popcount is one CNT + ADDV). An AVX2 CPU runs the
    popcnt build: buckets hold a few codes each, and an AVX2 build (four codes per
    register, nibble-lookup popcount) measured no faster than scalar POPCNT.
    """
    mod = REGISTRY.loaded("native")
    return dict(mod.cpu_features()) if mod is not None else None


# -- layout ---------------------------------------------------------------------------------------------------


def default_substrings(n_codes: int, bits: int) -> int:
    """m = ceil(L / log2 N), the paper's choice that makes buckets hold about one code each.

    log2 N is taken as at least 8 (tiny databases get 8-bit substrings rather
    than one table per bit), and m is at least ceil(L / 32) so keys fit 32 bits.
    """
    log_n = max(8.0, math.log2(max(n_codes, 2)))
    m = math.ceil(bits / log_n)
    return int(min(bits, max(m, math.ceil(bits / MAX_SUBSTRING_BITS), 1)))


def substring_layout(bits: int, m: int) -> list[tuple[int, int]]:
    """(first bit, width) of each of the m substrings; the first L mod m are one bit wider."""
    if bits <= 0 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
    if not 1 <= m <= bits:
        raise ValueError(f"the number of substrings must be between 1 and the code length {bits}, got {m}")
    base, extra = divmod(bits, m)
    if base + (1 if extra else 0) > MAX_SUBSTRING_BITS:
        raise ValueError(
            f"{m} substring(s) of a {bits}-bit code are wider than {MAX_SUBSTRING_BITS} bits; "
            f"use at least {math.ceil(bits / MAX_SUBSTRING_BITS)} substrings"
        )
    out, start = [], 0
    for j in range(m):
        width = base + (1 if j < extra else 0)
        out.append((start, width))
        start += width
    return out


def use_direct(width: int, n_codes: int) -> bool:
    """Direct addressing when its offsets array stays small next to the codes; sorted keys otherwise."""
    return width <= DIRECT_MAX_WIDTH and 2**width <= DIRECT_MAX_BUCKETS_PER_CODE * n_codes + 2**16


def probe_radii(radius: int, m: int) -> list[int]:
    """Per-table probe radius for an exact radius search: r = m r' + a -> r' for tables <= a, r' - 1 after.

    If every table j <= a had a substring distance > r' and every later one
    > r' - 1, the full distance would be at least (a+1)(r'+1) + (m-a-1) r' = r + 1.
    """
    rp, a = divmod(radius, m)
    return [rp if j <= a else rp - 1 for j in range(m)]


# -- the tables -----------------------------------------------------------------------------------------------


@dataclass
class Table:
    """One substring's CSR hash table (see the module docstring)."""

    start: int
    width: int
    keys: Optional[np.ndarray]  # uint32 distinct keys, sorted; None for direct addressing
    offsets: np.ndarray  # uint32, len(keys) + 1 or 2^width + 1
    ids: np.ndarray  # uint32 (n,)
    codes: np.ndarray  # uint8 (n, nb), codes[p] is the code of ids[p]

    def bucket(self, key: int) -> tuple[int, int]:
        """The [begin, end) positions of the codes whose substring equals ``key``."""
        if self.keys is None:
            return int(self.offsets[key]), int(self.offsets[key + 1])
        b = int(np.searchsorted(self.keys, key))
        if b == len(self.keys) or int(self.keys[b]) != key:
            return 0, 0
        return int(self.offsets[b]), int(self.offsets[b + 1])


def substring_keys(codes: np.ndarray, start: int, width: int) -> np.ndarray:
    """The value of bits [start, start + width) of every packed code, as uint32 (bit start is the lowest)."""
    n, nb = codes.shape
    first, last = start // 8, (start + width - 1) // 8
    acc = np.zeros(n, dtype=np.uint64)
    for b in range(first, last + 1):  # at most 5 bytes
        acc |= codes[:, b].astype(np.uint64) << np.uint64(8 * (b - first))
    acc >>= np.uint64(start - 8 * first)
    return (acc & np.uint64((1 << width) - 1)).astype(np.uint32)


def build_table_reference(codes: np.ndarray, start: int, width: int, direct: bool) -> Table:
    """A table by a stable argsort of the keys (ids stay increasing within a bucket)."""
    keys = substring_keys(codes, start, width)
    order = np.argsort(keys, kind="stable").astype(np.uint32)
    sorted_keys = keys[order]
    if direct:
        counts = np.bincount(keys, minlength=2**width)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.uint32)
        distinct = None
    else:
        distinct, first = np.unique(sorted_keys, return_index=True)
        offsets = np.concatenate([first, [len(keys)]]).astype(np.uint32)
        distinct = distinct.astype(np.uint32)
    return Table(start, width, distinct, offsets, order, np.ascontiguousarray(codes[order]))


def build_tables(codes: Any, m: Optional[int] = None, *, backend: Optional[str] = None) -> list[Table]:
    """Hash every packed code into m substring tables (m from :func:`default_substrings` when None)."""
    db = _checks.packed_codes(codes, "codes")
    if db.shape[1] == 0:
        raise ValueError("codes have 0 bytes (0 bits); packed codes need at least 8 bits")
    if db.shape[0] > MAX_CODES:
        raise ValueError(f"an index holds at most {MAX_CODES} codes, got {db.shape[0]}")
    bits = 8 * db.shape[1]
    layout = substring_layout(bits, default_substrings(db.shape[0], bits) if m is None else m)
    direct = [use_direct(w, db.shape[0]) for _, w in layout]
    name, mod = REGISTRY.select(backend)
    if name == "native":
        raw = mod.build_tables(db, layout, direct)
        return [Table(s, w, k, o, i, c) for (s, w), (k, o, i, c) in zip(layout, raw)]
    return [build_table_reference(db, s, w, d) for (s, w), d in zip(layout, direct)]


# -- searching ------------------------------------------------------------------------------------------------


def _neighbour_keys(key: int, width: int, level: int) -> list[int]:
    """Every width-bit key at Hamming distance exactly ``level`` from ``key``."""
    out = []
    for bits in itertools.combinations(range(width), level):
        mask = 0
        for b in bits:
            mask |= 1 << b
        out.append(key ^ mask)
    return out


class MultiIndex:
    """Exact radius and k-NN search over MIH tables, on the native or the numpy backend.

    The tables are used in place (they may be views of a memory-mapped index
    file); the native backend checks their invariants once, here, so a damaged
    file cannot make it read out of bounds.
    """

    def __init__(self, bits: int, tables: Sequence[Table], *, backend: Optional[str] = None) -> None:
        self.bits = int(bits)
        self.tables = list(tables)
        self.count = int(len(self.tables[0].ids)) if self.tables else 0
        self.backend, mod = REGISTRY.select(backend)
        self._native = None
        if self.backend == "native":
            layout = [(t.start, t.width) for t in self.tables]
            self._native = mod.MultiIndex(
                self.bits, layout, [(t.keys, t.offsets, t.ids, t.codes) for t in self.tables]
            )

    @property
    def m(self) -> int:
        return len(self.tables)

    def _queries(self, queries: Any) -> np.ndarray:
        q = _checks.packed_codes(queries, "queries")
        if q.shape[1] != self.bits // 8:
            raise ValueError(
                f"queries have {q.shape[1]} bytes per code ({8 * q.shape[1]} bits) but the index holds "
                f"{self.bits}-bit codes; both must use the same code length"
            )
        return q

    def radius_search(self, queries: Any, radius: float, *, threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every indexed code within Hamming distance <= radius, as CSR (lims, distances int32, indices int64).

        The same contract as ``brcd_cli.kernels.radius_search``: hits of query i
        are [lims[i], lims[i+1]), sorted by (distance, index).
        """
        q = self._queries(queries)
        r = _checks.check_radius(radius, self.bits)
        if self._native is not None:
            return self._native.radius_search(q, r, threads)
        return self._radius_reference(q, r)

    def knn(self, queries: Any, k: int, *, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The min(k, n) nearest indexed codes per query, (distances int32, indices int64), ties by index."""
        q = self._queries(queries)
        kk = _checks.check_k(k)
        if self._native is not None:
            return self._native.knn(q, kk, threads)
        return self._knn_reference(q, kk)

    # The numpy reference: probe, deduplicate with a set, verify with the reference popcount.

    def _candidates(self, query: np.ndarray, radii: Sequence[int]) -> np.ndarray:
        """Sorted distinct ids of the codes within substring distance radii[j] of the query in some table j.

        Found by probing the buckets of every neighbouring key while those are
        few; past _MAX_PROBES keys per table, by comparing the query's key with
        every code's key instead (the same set, without enumerating millions
        of keys in Python).
        """
        found: list[np.ndarray] = []
        for table, top in zip(self.tables, radii):
            top = min(top, table.width)
            if top < 0:
                continue
            key = int(substring_keys(query[None, :], table.start, table.width)[0])
            if sum(math.comb(table.width, s) for s in range(top + 1)) <= _MAX_PROBES:
                for level in range(top + 1):
                    for probe in _neighbour_keys(key, table.width, level):
                        begin, end = table.bucket(probe)
                        found.append(table.ids[begin:end].astype(np.int64))
            else:
                keys = substring_keys(table.codes, table.start, table.width) ^ np.uint32(key)
                near = _ref._POPCOUNT8[keys.view(np.uint8).reshape(-1, 4)].sum(axis=1) <= top
                found.append(table.ids[near].astype(np.int64))
        return np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)

    def _verified(self, query: np.ndarray, ids: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """The candidates within ``radius``, sorted by (distance, index)."""
        if ids.size == 0:
            return np.empty(0, np.int32), np.empty(0, np.int64)
        codes = self._codes_of(ids)
        d = _ref.hamming_distances(query[None, :], codes)[0]
        keep = d <= radius
        ids, d = ids[keep], d[keep]
        order = np.lexsort((ids, d))
        return d[order].astype(np.int32), ids[order]

    def _codes_of(self, ids: np.ndarray) -> np.ndarray:
        """The codes of the given ids, read from table 0 (its ids are a permutation of all ids)."""
        table = self.tables[0]
        position = np.empty(self.count, dtype=np.int64)
        position[table.ids.astype(np.int64)] = np.arange(self.count)
        return table.codes[position[ids]]

    def _radius_reference(self, q: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lims = np.zeros(len(q) + 1, dtype=np.int64)
        dists, idx = [], []
        for i, query in enumerate(q):
            d, ids = (np.empty(0, np.int32), np.empty(0, np.int64))
            if self.count:
                d, ids = self._verified(query, self._candidates(query, probe_radii(r, self.m)), r)
            dists.append(d)
            idx.append(ids)
            lims[i + 1] = lims[i] + len(ids)
        return lims, np.concatenate(dists) if dists else np.empty(0, np.int32), np.concatenate(idx) if idx else np.empty(0, np.int64)

    def _knn_reference(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Grow the radius (0, 1, 2, 4, ...) until at least min(k, n) codes lie within it; keep the first k.

        Every code within the radius is found, so the first k by (distance,
        index) are the exact k nearest however far the radius overshoots.
        """
        kk = min(k, self.count)
        out_d = np.zeros((len(q), kk), dtype=np.int32)
        out_i = np.zeros((len(q), kk), dtype=np.int64)
        for i, query in enumerate(q):
            if kk == 0:
                continue
            r = 0
            while True:
                d, ids = self._verified(query, self._candidates(query, probe_radii(r, self.m)), r)
                if len(ids) >= kk or r >= self.bits:
                    out_d[i], out_i[i] = d[:kk], ids[:kk]
                    break
                r = min(self.bits, max(1, 2 * r))
        return out_d, out_i

"""The indexed collection: a codes file searched through its multi-index hashing index where that pays.

It owns the codes file and its index (``<codes>.mih``, :mod:`brcd_cli.search.mih`),
as faiss's hash indexes own their storage. The index may cover only a prefix
of the codes (codes appended since it was built): the prefix is answered from
the index and the appended tail by the flat scan, merged exactly. A request the
index would answer slower than a scan (large k, a radius that probes too many
buckets, a small collection) goes to the flat scan of the whole file; both
give the same hits, so the choice is one of speed only.
"""
from __future__ import annotations

from math import comb
from typing import Any, Callable, Optional

import numpy as np

from ..kernels import mih
from .base import CollectionBase, Item, SearchResult, check_k, check_radius, ranked
from .flat import FlatCodes
from .mih import IndexFile, IndexFileError, IndexStale, check_matches, default_index_path, open_index, read_index_info

# k-NN goes through the index up to this k; beyond it the growing radius probes
# so many buckets that a linear scan is as fast (measured with brcd bench lookup).
INDEX_MAX_K = 32
# Below this many codes a scan takes microseconds and an index cannot pay for itself.
INDEX_MIN_CODES = 4096


def index_suits(count: int, bits: int, m: int, k: Optional[int] = None, radius: Optional[int] = None) -> bool:
    """Whether the index should beat a scan for this request.

    Radius search: when the buckets it probes are few next to the codes a scan
    reads (each probe is a random access, a scanned code a few bytes in a
    stream). k-NN: for small k only; its radius grows until k codes are found.
    """
    if count < INDEX_MIN_CODES:
        return False
    if radius is not None:
        layout = mih.substring_layout(bits, m)
        probes = sum(comb(w, s) for (_, w), top in zip(layout, mih.probe_radii(min(radius, bits), m))
                     for s in range(0, min(top, w) + 1))
        return probes * 16 <= count
    return k is not None and k <= INDEX_MAX_K


class IndexedCodes(CollectionBase):
    """A codes file and its index: the index answers what suits it, the flat scan the rest and the tail."""

    def __init__(self, codes: Any, index: IndexFile, threads: Optional[int] = None) -> None:
        self.flat = FlatCodes.of_file(codes, threads=threads)
        self.index = index
        self.name, self.bits, self.code_space, self.count = self.flat.name, self.flat.bits, self.flat.code_space, self.flat.count
        self.threads = threads
        self._tail = FlatCodes(np.asarray(codes.codes[index.count:]), (), bits=codes.bits, name=f"{self.name} (appended)",
                               threads=threads)

    def item(self, index: int) -> Item:
        return self.flat.item(index)

    def _suits(self, k: Optional[int] = None, radius: Optional[int] = None) -> bool:
        return index_suits(self.count, self.bits, self.index.info.m, k=k, radius=radius)

    def _threads(self) -> int:
        return self.threads if self.threads is not None else 1

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        return self._index_knn(queries, k) if self._suits(k=k) else self.flat.search(queries, k)

    def _range_search(self, queries: np.ndarray, radius: int) -> SearchResult:
        return self._index_range(queries, radius) if self._suits(radius=radius) else self.flat.range_search(queries, radius)

    def search_index(self, queries: np.ndarray, k: int) -> SearchResult:
        """k-NN through the index whatever the request costs there (exact either way; what tests and benchmarks time)."""
        return self._index_knn(self._queries(queries), check_k(k))

    def range_search_index(self, queries: np.ndarray, radius: int) -> SearchResult:
        """Radius search through the index whatever the request costs there."""
        return self._index_range(self._queries(queries), check_radius(radius))

    def _index_knn(self, queries: np.ndarray, k: int) -> SearchResult:
        dist, idx = self.index.index.knn(queries, k, threads=self._threads())
        rows = [(dist[q], idx[q]) for q in range(len(queries))]
        return self._with_tail(rows, self._tail.search(queries, k) if self._tail.count else None, k)

    def _index_range(self, queries: np.ndarray, radius: int) -> SearchResult:
        lims, dist, idx = self.index.index.radius_search(queries, radius, threads=self._threads())
        rows = [(dist[lims[q]:lims[q + 1]], idx[lims[q]:lims[q + 1]]) for q in range(len(queries))]
        return self._with_tail(rows, self._tail.range_search(queries, radius) if self._tail.count else None, None)

    def _with_tail(self, rows: list, tail: Optional[SearchResult], k: Optional[int]) -> SearchResult:
        """Merge the index's hits with the appended codes' (positions shifted past the indexed prefix)."""
        if tail is not None:
            shift = self.index.count
            rows = [(np.concatenate([d, td]), np.concatenate([i, ti + shift]))
                    for (d, i), (td, ti) in zip(rows, (tail.row(q) for q in range(len(tail))))]
        return ranked(rows, k, self.item)

    def close(self) -> None:
        self.flat.close()


def open_indexed(codes: Any, log: Callable[[str], None] = lambda _: None,
                 threads: Optional[int] = None) -> Optional[IndexedCodes]:
    """The open codes file with the valid index beside it, or None (with a note why when one exists but cannot be used)."""
    path = default_index_path(codes.path)
    if not path.exists():
        return None
    try:
        info = read_index_info(path)
        try:
            check_matches(info, codes)
        except IndexStale as exc:
            log(f"note: {exc}; searching the appended codes by scan")
        return IndexedCodes(codes, open_index(path), threads=threads)
    except IndexFileError as exc:
        log(f"note: not using the index: {exc}")
        return None

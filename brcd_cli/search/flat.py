"""The flat collection: every query compared with every code by the kernels' linear scan.

The reference the other collections are measured against, and the fastest
choice for most requests: a scan streams the codes at several billion per
second per core, exactly, with ties broken by position.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from .. import kernels
from .base import CollectionBase, Item, SearchResult


class FlatCodes(CollectionBase):
    """Packed codes (n, bits/8) with their ids, searched by linear scan.

    Built from arrays (``FlatCodes(codes, ids, ...)``) or from an open codes
    file (:meth:`of_file`, memory-mapped: nothing is read until a search touches it).
    """

    def __init__(self, codes: np.ndarray, ids: Sequence[str], *, bits: Optional[int] = None, code_space: str = "",
                 name: str = "codes", threads: Optional[int] = None, source: Any = None) -> None:
        self.codes = codes
        self.ids = ids
        self.bits = int(bits if bits is not None else 8 * codes.shape[1])
        self.code_space = code_space
        self.count = int(codes.shape[0])
        self.name = name
        self.threads = threads
        self._source = source  # an open CodesFile, closed with the collection

    @classmethod
    def of_file(cls, codes: Any, threads: Optional[int] = None) -> FlatCodes:
        """An open :class:`brcd_cli.codes.CodesFile` as a flat collection (which then owns it)."""
        return cls(codes.codes, codes.ids, bits=codes.bits, code_space=codes.code_space, name=os.fspath(codes.path), threads=threads, source=codes)

    def item(self, index: int) -> Item:
        return Item(self.ids[index], index)

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        dist, idx = kernels.knn(queries, np.asarray(self.codes), k, threads=self.threads)
        return SearchResult.from_knn(dist, idx, self.item)

    def _range_search(self, queries: np.ndarray, radius: int) -> SearchResult:
        lims, dist, idx = kernels.radius_search(queries, np.asarray(self.codes), radius, threads=self.threads)
        return SearchResult(lims, dist, idx, self.item)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()

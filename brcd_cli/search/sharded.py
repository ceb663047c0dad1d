"""The sharded collection: several collections searched as one, their results merged exactly.

Shards are concatenated in the order given, so position p of the whole is
position p - offset[s] of shard s; each shard answers with its own exact top
k (or every code within the radius), and sorting their union by (distance,
position) and keeping k gives exactly what a search of the concatenated codes
gives, since every global top-k hit is within its own shard's top k. A hit
names the file it came from and its position there.
"""
from __future__ import annotations

import bisect
from typing import Optional, Sequence

import numpy as np

from ..errors import BrcdError
from .base import Collection, CollectionBase, Item, SearchResult, ranked


class ShardedCollection(CollectionBase):
    """Collections of one bit length and code space searched as their concatenation."""

    def __init__(self, parts: Sequence[Collection]) -> None:
        if not parts:
            raise BrcdError("a sharded collection needs at least one shard")
        widths = {p.bits for p in parts}
        if len(widths) > 1:
            raise BrcdError(f"the shards hold codes of different lengths ({', '.join(f'{p.name}: {p.bits}' for p in parts)})")
        for p in parts[1:]:
            if p.code_space != parts[0].code_space:
                raise BrcdError(f"{p.name} was encoded in another code space ({p.code_space[:12]}) than "
                                f"{parts[0].name} ({parts[0].code_space[:12]}); shards must come from one model family")
        self.parts = list(parts)
        self.bits = parts[0].bits
        self.code_space = parts[0].code_space
        self.name = " + ".join(p.name for p in parts)
        self.offsets = np.cumsum([0] + [p.count for p in parts]).tolist()
        self.count = self.offsets[-1]

    def item(self, index: int) -> Item:
        shard = bisect.bisect_right(self.offsets, index) - 1
        inner = self.parts[shard].item(index - self.offsets[shard])
        return Item(inner.id, inner.index, self.parts[shard].name)

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        return self._merge([p.search(queries, k) for p in self.parts], len(queries), k)

    def _range_search(self, queries: np.ndarray, radius: int) -> SearchResult:
        return self._merge([p.range_search(queries, radius) for p in self.parts], len(queries), None)

    def _merge(self, results: list[SearchResult], n_queries: int, k: Optional[int]) -> SearchResult:
        rows = []
        for q in range(n_queries):
            pieces = [(r.row(q), offset) for r, offset in zip(results, self.offsets)]
            rows.append((np.concatenate([d for (d, _), _ in pieces]),
                         np.concatenate([i + offset for (_, i), offset in pieces])))
        return ranked(rows, k, self.item)

    def close(self) -> None:
        for part in self.parts:
            part.close()

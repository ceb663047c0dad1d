"""The search contract every collection of codes keeps, as faiss's ``IndexBinary`` does for its indexes.

A :class:`Collection` has a bit length, a code space (the model family its
codes belong to), a count, and answers two requests over packed queries
(uint8, (q, bits/8)):

    search(queries, k)            the k nearest codes per query
    range_search(queries, radius) every code within Hamming distance radius (inclusive)

Both return one :class:`SearchResult`, rows sorted by (distance, position in
the collection): exact, so every implementation returns what a linear scan of
the same codes returns, ties included (Milvus is the one exception: it orders
equal distances its own way). Positions run over the whole collection; a hit
names its item by id and, for collections of several files, by file and
position within that file.

``k`` and ``radius`` are checked here, once, for every implementation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterator, NamedTuple, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import BrcdError, OptionError


@dataclass(frozen=True)
class Hit:
    """One result: its rank, its position in its codes file, its Hamming distance and its id.

    ``file`` names the codes file when a search spans several.
    """

    rank: int
    index: int
    distance: int
    id: str
    file: Optional[str] = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Item(NamedTuple):
    """What a position in a collection refers to: the item's id, its position in its file, and that file."""

    id: str
    index: int
    file: Optional[str] = None


@dataclass(frozen=True)
class SearchResult:
    """The hits of a batch of queries in CSR layout, as faiss's range search returns them.

    Query q's hits are ``distances[lims[q]:lims[q+1]]`` at collection positions
    ``indices[lims[q]:lims[q+1]]``, nearest first, ties by position; ``item``
    names a position. One layout serves k-NN (equal rows, fewer when the
    collection is small) and radius search (rows of any length), so callers
    handle one type whatever they asked.
    """

    lims: np.ndarray
    distances: np.ndarray
    indices: np.ndarray
    item: Callable[[int], Item]

    @classmethod
    def from_knn(cls, distances: np.ndarray, indices: np.ndarray, item: Callable[[int], Item]) -> SearchResult:
        """From dense (q, k') arrays, as the kernels' k-NN returns them."""
        q, width = distances.shape
        lims = np.arange(q + 1, dtype=np.int64) * width
        return cls(lims, distances.reshape(-1), indices.reshape(-1).astype(np.int64, copy=False), item)

    def __len__(self) -> int:
        return len(self.lims) - 1

    def row(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        """Distances and positions of query q's hits."""
        lo, hi = int(self.lims[q]), int(self.lims[q + 1])
        return self.distances[lo:hi], self.indices[lo:hi]

    def hits(self, q: int) -> list[Hit]:
        """Query q's hits, ranked from 1, each named by its item."""
        out = []
        for rank, (d, i) in enumerate(zip(*self.row(q)), start=1):
            item = self.item(int(i))
            out.append(Hit(rank=rank, index=item.index, distance=int(d), id=item.id, file=item.file))
        return out

    def __iter__(self) -> Iterator[list[Hit]]:
        return (self.hits(q) for q in range(len(self)))


def ranked(rows: Sequence[tuple[np.ndarray, np.ndarray]], k: Optional[int], item: Callable[[int], Item]) -> SearchResult:
    """One result from per-query candidate (distances, positions): sorted by (distance, position), cut to k.

    Exact merging rests on this: when every part contributes its own exact top
    k (or every code within the radius), the top k of their union is the top k
    of the whole.
    """
    lims = np.zeros(len(rows) + 1, dtype=np.int64)
    dists, idxs = [], []
    for q, (d, i) in enumerate(rows):
        order = np.lexsort((i, d))[:k]
        dists.append(np.asarray(d, dtype=np.int32)[order])
        idxs.append(np.asarray(i, dtype=np.int64)[order])
        lims[q + 1] = lims[q] + len(order)
    empty = np.zeros(0, np.int64)
    return SearchResult(lims, np.concatenate(dists) if dists else empty.astype(np.int32),
                        np.concatenate(idxs) if idxs else empty, item)


@runtime_checkable
class Collection(Protocol):
    """What every searchable collection of codes provides (see the module docstring)."""

    name: str
    bits: int
    code_space: str
    count: int

    def search(self, queries: np.ndarray, k: int) -> SearchResult: ...

    def range_search(self, queries: np.ndarray, radius: int) -> SearchResult: ...

    def item(self, index: int) -> Item: ...

    def close(self) -> None: ...


class CollectionBase:
    """Shared behaviour: argument checks before the work, and closing as a context manager.

    Implementations define ``_search(queries, k)`` and ``_range_search(queries, radius)``
    and receive clean arguments: packed uint8 queries of the collection's width,
    a positive k, a radius in 0..bits.
    """

    name: str
    bits: int
    code_space: str
    count: int

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        return self._search(self._queries(queries), check_k(k))

    def range_search(self, queries: np.ndarray, radius: int) -> SearchResult:
        return self._range_search(self._queries(queries), check_radius(radius))

    def _search(self, queries: np.ndarray, k: int) -> SearchResult:
        raise NotImplementedError

    def _range_search(self, queries: np.ndarray, radius: int) -> SearchResult:
        raise NotImplementedError

    def item(self, index: int) -> Item:
        raise NotImplementedError

    def close(self) -> None:
        """Release the files or connections behind the collection (nothing by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(queries, dtype=np.uint8)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] * 8 != self.bits:
            raise BrcdError(f"queries of {q.shape[-1] * 8} bits cannot search the {self.bits}-bit codes of {self.name}")
        return q

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, bits={self.bits}, count={self.count})"


#: the largest k a request may ask for: far above any collection's size (a larger k than the collection returns
#: every item), and within what the kernels take (a 64-bit k)
MAX_K = 2**31 - 1


def check_k(k: int) -> int:
    """k of a k-NN request: a positive integer, at most :data:`MAX_K`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise OptionError("k", f"must be positive, got {k}")
    if k > MAX_K:
        raise OptionError("k", f"must be at most {MAX_K:,} (a k above the collection's size returns every item), got {k}")
    return int(k)


def check_radius(radius: int) -> int:
    """radius of a range request: an integer >= 0 (beyond the bit length it finds everything)."""
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise OptionError("radius", f"must be >= 0, got {radius}")
    return min(int(radius), MAX_K)  # every radius from the bit length up finds the same: everything


def check_request(k: Optional[int], radius: Optional[int]) -> None:
    """A request is a radius search when it has a radius, else a k-NN search: check the one that applies.

    Callers check before costly work (loading a model, encoding the query), so
    a bad value fails at once.
    """
    if radius is not None:
        check_radius(radius)
    elif k is None:
        raise OptionError("k", "is needed when no radius is given")
    else:
        check_k(k)


#: k of a request that gives neither k nor a radius
DEFAULT_K = 10


def request_of(k: Optional[int], radius: Optional[int]) -> tuple[Optional[int], Optional[int]]:
    """(k, radius) of a request that may leave either out: k-NN for :data:`DEFAULT_K` when both are left out.

    Both given is an error rather than one silently ignored: a radius search
    returns every code within the radius, whatever k says.
    """
    if k is not None and radius is not None:
        raise OptionError("k", "cannot be given with a radius: a radius search returns every code within it")
    if k is None and radius is None:
        k = DEFAULT_K
    check_request(k, radius)
    return k, radius


def query(collection: Collection, queries: np.ndarray, k: Optional[int] = None, radius: Optional[int] = None) -> SearchResult:
    """``range_search`` when a radius is given, else ``search`` for k: the choice every caller offers."""
    check_request(k, radius)
    return collection.range_search(queries, radius) if radius is not None else collection.search(queries, k)


def check_compatible(collection: Collection, model_bits: int, model_space: str) -> None:
    """Codes from another code space rank garbage: refuse them with the reason."""
    for part in getattr(collection, "parts", ()):  # a sharded collection: name the file that differs
        check_compatible(part, model_bits, model_space)
    where = collection.name
    if collection.bits != model_bits:
        raise BrcdError(f"{where} holds {collection.bits}-bit codes but the model makes {model_bits}-bit codes")
    space = collection.code_space
    if space and model_space and space != model_space:
        raise BrcdError(
            f"{where} was encoded in another code space ({_space_name(space)}) than the model's "
            f"({_space_name(model_space)}); encode the database with this model, its teacher, or a student distilled "
            "from it"
        )


def _space_name(space: str) -> str:
    """A code space as a person reads it: a built-in hasher's name, else the start of the producing model's digest."""
    from ..models.perceptual import name_of_space

    return name_of_space(space) or space[:12]

"""Exact search over a codes file by Hamming ranking (linear scan through the kernels)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence

import numpy as np

from .. import kernels
from ..errors import BrcdError


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


def merge_hits(per_file: Sequence[tuple[str, list[Hit]]], k: Optional[int] = None) -> list[Hit]:
    """Exact merge of per-file results, as if the files were one file in the given order.

    Each file's list is already sorted by (distance, index); sorting the union
    by (distance, file position, index) and keeping the first k gives exactly
    the top k of the concatenation, because any global top-k hit is within its
    own file's top k.
    """
    tagged = [(h.distance, position, h.index, name, h) for position, (name, hits) in enumerate(per_file) for h in hits]
    tagged.sort(key=lambda t: t[:3])
    if k is not None:
        tagged = tagged[:k]
    return [replace(h, rank=r + 1, file=name) for r, (_, _, _, name, h) in enumerate(tagged)]


def check_compatible(codes_bits: int, codes_space: str, model_bits: int, model_space: str, codes_path: str) -> None:
    """Codes from another code space rank garbage: refuse them with the reason."""
    if codes_bits != model_bits:
        raise BrcdError(f"{codes_path} holds {codes_bits}-bit codes but the model makes {model_bits}-bit codes")
    if codes_space and model_space and codes_space != model_space:
        raise BrcdError(
            f"{codes_path} was encoded in another code space ({codes_space[:12]}) than the model's ({model_space[:12]}); "
            "encode the database with this model, its teacher, or a student distilled from it"
        )


def knn(queries: np.ndarray, database: np.ndarray, ids, k: int) -> list[list[Hit]]:
    """The k nearest codes per query; ties in distance go to the smaller database index."""
    if k <= 0:
        raise BrcdError(f"k must be positive, got {k}")
    dist, idx = kernels.knn(queries, database, k)
    return [
        [Hit(rank=r + 1, index=int(i), distance=int(d), id=ids[int(i)]) for r, (d, i) in enumerate(zip(drow, irow))]
        for drow, irow in zip(dist, idx)
    ]


def within_radius(queries: np.ndarray, database: np.ndarray, ids, radius: int) -> list[list[Hit]]:
    """Every code at Hamming distance <= radius (inclusive), nearest first, ties by index."""
    if radius < 0:
        raise BrcdError(f"radius must be >= 0, got {radius}")
    lims, dist, idx = kernels.radius_search(queries, database, radius)
    out = []
    for q in range(len(lims) - 1):
        lo, hi = int(lims[q]), int(lims[q + 1])
        out.append([Hit(rank=r + 1, index=int(idx[j]), distance=int(dist[j]), id=ids[int(idx[j])]) for r, j in enumerate(range(lo, hi))])
    return out

"""k-means on teacher codes and the per-cluster bit masks built from it.

Clusters stand in for the labels BRCD does not have: two images in one
cluster are probably the same kind of thing, so they should not be pushed
apart as negatives, and a bit that flips freely inside a cluster carries no
meaning there, so the structural alignment ignores it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from ..options import MASK_RULES


@dataclass
class ClusterResult:
    """Chosen k, per-code cluster labels, centres, and the curve that the choice was made on."""

    k: int
    labels: np.ndarray  # (N,) int64
    centres: np.ndarray  # (k, L) float32
    method: str  # "fixed" or "silhouette"
    curve: list[dict[str, float]] = field(default_factory=list)


def _kmeans(codes: np.ndarray, k: int, seed: int, restarts: int) -> KMeans:
    return KMeans(n_clusters=k, init="k-means++", n_init=restarts, random_state=seed).fit(codes)


def cluster_codes(
    codes: np.ndarray,
    k: Optional[int] = None,
    seed: int = 0,
    restarts: int = 4,
    k_range: tuple[int, int] = (2, 20),
    silhouette_sample: int = 3000,
) -> ClusterResult:
    """k-means++ with several restarts on +-1 codes.

    ``k=None`` chooses k automatically: every k in ``k_range`` is fitted, and
    the k with the highest silhouette score (cosine-free Euclidean on the codes,
    on a fixed subsample for speed) wins; the inertia (elbow) and silhouette
    curves are returned so that the choice can be inspected and plotted.
    """
    codes = np.asarray(codes, dtype=np.float32)
    n = codes.shape[0]
    if n < 2:
        raise ValueError("clustering needs at least 2 codes")
    if k is not None:
        if not 1 <= k <= n:
            raise ValueError(f"clusters must be in 1..{n} for {n} codes, got {k}")
        km = _kmeans(codes, k, seed, restarts)
        return ClusterResult(k=k, labels=km.labels_.astype(np.int64), centres=km.cluster_centers_.astype(np.float32), method="fixed")

    lo, hi = k_range[0], min(k_range[1], n - 1)
    if hi < lo:
        raise ValueError(f"too few codes ({n}) to choose a number of clusters")
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, size=min(n, silhouette_sample), replace=False)
    best: Optional[tuple[float, KMeans]] = None
    curve: list[dict[str, float]] = []
    for kk in range(lo, hi + 1):
        km = _kmeans(codes, kk, seed, restarts)
        labels = km.labels_
        if len(np.unique(labels[sample])) < 2:
            score = -1.0
        else:
            score = float(silhouette_score(codes[sample], labels[sample], metric="euclidean"))
        curve.append({"k": kk, "inertia": float(km.inertia_), "silhouette": score})
        if best is None or score > best[0]:
            best = (score, km)
    assert best is not None
    km = best[1]
    return ClusterResult(
        k=int(km.n_clusters),
        labels=km.labels_.astype(np.int64),
        centres=km.cluster_centers_.astype(np.float32),
        method="silhouette",
        curve=curve,
    )


def bit_consistency(codes: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """m_ci = |mean of bit i over the codes of cluster c|, in [0, 1]; (k, L) float32."""
    codes = np.asarray(codes, dtype=np.float32)
    sums = np.zeros((k, codes.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, codes)
    counts = np.bincount(labels, minlength=k).astype(np.float64)[:, None]
    return (np.abs(sums) / np.maximum(counts, 1)).astype(np.float32)


def bit_masks(consistency: np.ndarray, margin: float = 0.5, rule: str = "consistent") -> np.ndarray:
    """Keep bit i of cluster c where m_ci >= margin ("consistent", the method) or where
    m_ci < margin ("opposite", an ablation); (k, L) uint8 of 0/1."""
    if rule not in MASK_RULES:
        raise ValueError(f"mask rule must be one of {', '.join(MASK_RULES)}, got {rule!r}")
    keep = consistency >= margin if rule == "consistent" else consistency < margin
    return keep.astype(np.uint8)

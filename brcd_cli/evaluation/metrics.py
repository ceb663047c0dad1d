"""Retrieval metrics for binary codes: mAP@K (plain and tie-aware), precision@N,
precision within a Hamming radius and the Hamming-radius precision/recall curve.

All functions take packed codes (uint8, LSB-first, as in docs/codes-format.md)
and labels and rank the database by (Hamming distance, database index).
Measures that only look at the top of the ranking (mAP@K, precision@N) ask
``brcd_cli.kernels.knn`` for the first K of each ranking, an exact native
selection that never sorts the whole database; measures that need every
distance (tie-aware mAP, radius precision, the PR curve) histogram the output
of ``brcd_cli.kernels.hamming_distances``. Both work on chunks of queries so
memory stays bounded for large query sets. Labels are either multi-hot arrays (q, C) and
(n, C) or 1-D integer class ids; a database item is relevant to a query when
they share at least one label.

Binary codes produce many equal distances, so the plain ranking depends on
database order. ``tie_aware_average_precision_at_k`` removes that arbitrariness
by taking the expectation over random orderings within each distance.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

MAX_CHUNK_QUERIES = 256
# Bounds the (queries x database) arrays of one chunk: 2**23 int64 entries is 64 MiB.
MAX_CHUNK_ELEMENTS = 1 << 23
# Ranked chunks hold only the top of each ranking, so they can take more queries per kernel call.
MAX_RANKED_CHUNK_QUERIES = 4096


@dataclass(frozen=True)
class RadiusPrecision:
    """Precision within a Hamming radius, with how often a query found anything at all.

    The retrieved fraction matters because a query that retrieves nothing
    scores 0, so low precision can mean "wrong neighbours" or "no neighbours".
    """

    precision: float
    retrieved_fraction: float
    per_query: np.ndarray


def average_precision_at_k(
    query_packed: np.ndarray,
    db_packed: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    k: int | None = None,
) -> np.ndarray:
    """AP@K per query (shape (q,)), ranking by (Hamming distance, database index).

    AP@K is the sum over ranks p <= K of rel_p * precision@p, divided by the
    number of relevant items within the top K (the usual hashing convention);
    a query with no relevant item in the top K scores 0. ``k=None`` means the
    whole database.
    """
    data = _retrieval(query_packed, db_packed, query_labels, db_labels)
    k = data.top_k(k)
    result = np.zeros(data.n_queries, dtype=np.float64)
    for rows, hits in data.ranked_chunks(k):
        found = np.cumsum(hits, axis=1, dtype=np.int64)
        ranks = np.arange(1, k + 1, dtype=np.float64)
        total = np.sum(np.where(hits, found / ranks, 0.0), axis=1)
        result[rows] = _safe_divide(total, found[:, -1])
    return result


def tie_aware_average_precision_at_k(
    query_packed: np.ndarray,
    db_packed: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    k: int | None = None,
) -> np.ndarray:
    """Expected AP@K per query when items at equal distance are ordered uniformly at random.

    For each distance d (increasing) with n_d items of which r_d are relevant,
    and N, R items / relevant items at smaller distances, position j of the
    group is relevant with probability r_d / n_d and then has expected precision
    (R + 1 + (j - 1)(r_d - 1)/(n_d - 1)) / (N + j). Summing over positions with
    N + j <= K uses harmonic numbers, so no per-item loop is needed.

    The sum is divided by the expected number of relevant items in the top K.
    For ``k=None`` (whole database) that number is fixed, R, so the result is
    exactly the expected AP. For K smaller than the database it is a ratio of
    expectations, E[sum] / E[relevant in top K], which is not in general the
    expectation of the ratio. It is still the exact expected AP@K whenever
    the K-th position does not split a group of equal distances, because the
    number of relevant items in the top K is then the same for every ordering.
    """
    data = _retrieval(query_packed, db_packed, query_labels, db_labels)
    k = data.top_k(k)
    harmonic = np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, data.n_db + 1))))
    result = np.zeros(data.n_queries, dtype=np.float64)
    for rows, distances, relevant in data.chunks():
        items, hits = _distance_histograms(distances, relevant, data.bits)
        before = np.cumsum(items, axis=1) - items  # N: items strictly closer
        hits_before = np.cumsum(hits, axis=1) - hits  # R: relevant items strictly closer
        taken = np.clip(k - before, 0, items)  # positions of the group inside the top K
        groups = np.maximum(items, 1)
        hit_rate = hits / groups
        slope = np.where(items > 1, (hits - 1) / np.maximum(items - 1, 1), 0.0)
        # sum_{j=1}^{m} (a + (j-1)s) / (N+j) = m s + (a - s(N+1)) (H(N+m) - H(N))
        harmonic_span = harmonic[before + taken] - harmonic[before]
        group_sum = taken * slope + (hits_before + 1 - slope * (before + 1)) * harmonic_span
        expected_sum = np.sum(hit_rate * group_sum, axis=1)
        expected_hits = np.sum(hit_rate * taken, axis=1)
        result[rows] = _safe_divide(expected_sum, expected_hits)
    return result


def mean_average_precision(
    query_packed: np.ndarray,
    db_packed: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    k: int | None = None,
    tie_aware: bool = False,
) -> float:
    """mAP@K, the mean over queries of per-query AP@K.

    ``tie_aware=False`` ranks ties by database index
    (:func:`average_precision_at_k`); ``tie_aware=True`` averages over random
    orders within ties (:func:`tie_aware_average_precision_at_k`). Reporting
    both shows how much a score owes to database order.
    """
    per_query = tie_aware_average_precision_at_k if tie_aware else average_precision_at_k
    return float(np.mean(per_query(query_packed, db_packed, query_labels, db_labels, k)))


def precision_at_n(
    query_packed: np.ndarray,
    db_packed: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    n_list: Iterable[int],
) -> dict[int, float]:
    """Mean over queries of the fraction of relevant items among the first N ranked, for each N."""
    data = _retrieval(query_packed, db_packed, query_labels, db_labels)
    n_values = sorted({int(n) for n in n_list})
    if not n_values or n_values[0] < 1 or n_values[-1] > data.n_db:
        raise ValueError(f"every N must be between 1 and the database size {data.n_db}, got {n_values}")
    sums = np.zeros(len(n_values), dtype=np.float64)
    for _, hits in data.ranked_chunks(n_values[-1]):
        found = np.cumsum(hits, axis=1, dtype=np.int64)
        sums += found[:, np.array(n_values) - 1].sum(axis=0)
    return {n: float(total / (n * data.n_queries)) for n, total in zip(n_values, sums, strict=True)}


def precision_within_radius_stats(
    query_packed: np.ndarray,
    db_packed: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    radius: int = 2,
) -> RadiusPrecision:
    """Precision of the items within Hamming distance <= radius, per query and averaged.

    A query that retrieves nothing scores 0 and counts against
    ``retrieved_fraction``.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    data = _retrieval(query_packed, db_packed, query_labels, db_labels)
    per_query = np.zeros(data.n_queries, dtype=np.float64)
    retrieved_any = np.zeros(data.n_queries, dtype=bool)
    for rows, distances, relevant in data.chunks():
        items, hits = _distance_histograms(distances, relevant, data.bits)
        retrieved = items[:, : radius + 1].sum(axis=1)
        per_query[rows] = _safe_divide(hits[:, : radius + 1].sum(axis=1), retrieved)
        retrieved_any[rows] = retrieved > 0
    return RadiusPrecision(float(per_query.mean()), float(retrieved_any.mean()), per_query)


def precision_within_radius(
    query_packed: np.ndarray,
    db_packed: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    radius: int = 2,
) -> float:
    """Mean precision within Hamming radius (inclusive); see :func:`precision_within_radius_stats`."""
    return precision_within_radius_stats(query_packed, db_packed, query_labels, db_labels, radius).precision


def precision_recall_curve(
    query_packed: np.ndarray,
    db_packed: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Hamming-radius precision and recall for radii 0..L (two arrays of length L + 1).

    Both are means over queries (macro averages) of the per-query precision and
    recall of the items within distance <= r, so ``precision[r]`` equals
    :func:`precision_within_radius` at radius r. A query that retrieves nothing
    has precision 0, and a query with no relevant item has recall 0, so
    ``recall[L]`` is the fraction of queries that have a relevant item.
    """
    data = _retrieval(query_packed, db_packed, query_labels, db_labels)
    precision = np.zeros(data.bits + 1, dtype=np.float64)
    recall = np.zeros(data.bits + 1, dtype=np.float64)
    for _, distances, relevant in data.chunks():
        items, hits = _distance_histograms(distances, relevant, data.bits)
        retrieved = np.cumsum(items, axis=1)
        found = np.cumsum(hits, axis=1)
        precision += _safe_divide(found, retrieved).sum(axis=0)
        recall += _safe_divide(found, found[:, -1:]).sum(axis=0)
    return precision / data.n_queries, recall / data.n_queries


@dataclass(frozen=True)
class _Retrieval:
    """Validated inputs of one evaluation; yields distances and relevance a chunk of queries at a time."""

    query_packed: np.ndarray
    db_packed: np.ndarray
    query_labels: np.ndarray
    db_labels: np.ndarray

    @property
    def bits(self) -> int:
        return 8 * self.db_packed.shape[1]

    @property
    def n_queries(self) -> int:
        return len(self.query_packed)

    @property
    def n_db(self) -> int:
        return len(self.db_packed)

    def top_k(self, k: int | None) -> int:
        """K for AP@K: None means everything, and K beyond the database is the whole database."""
        if k is None:
            return self.n_db
        if k < 1:
            raise ValueError(f"k must be >= 1 or None, got {k}")
        return min(int(k), self.n_db)

    def chunks(self) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Yield (query rows, Hamming distances (rows, n), relevance (rows, n)) per chunk of queries."""
        from brcd_cli import kernels  # imported late: the kernels are built separately from this package

        step = max(1, min(MAX_CHUNK_QUERIES, MAX_CHUNK_ELEMENTS // self.n_db))
        for start in range(0, self.n_queries, step):
            rows = slice(start, start + step)
            distances = np.asarray(kernels.hamming_distances(self.query_packed[rows], self.db_packed))
            yield rows, distances, _relevance(self.query_labels[rows], self.db_labels)

    def ranked_chunks(self, depth: int) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield (query rows, relevance of the first `depth` ranked items (rows, depth)) per chunk.

        The first `depth` items by (distance, index) come from the exact k-NN
        kernel, so they are exactly the first `depth` columns of a stable sort
        of the full distance rows, without computing or sorting those rows.
        """
        from brcd_cli import kernels

        query_keys, db_keys = _label_keys(self.query_labels, self.db_labels)
        as_bits = self.query_labels.ndim == 2
        width = 1 if db_keys.ndim == 1 else db_keys.shape[1]
        step = max(1, min(MAX_RANKED_CHUNK_QUERIES, MAX_CHUNK_ELEMENTS // (depth * width)))
        for start in range(0, self.n_queries, step):
            rows = slice(start, start + step)
            _, order = kernels.knn(self.query_packed[rows], self.db_packed, depth)
            yield rows, _gathered_relevance(query_keys[rows], db_keys, order, as_bits)


def _retrieval(
    query_packed: np.ndarray,
    db_packed: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
) -> _Retrieval:
    """Check shapes and types once, up front, so a mistake fails before any distance is computed."""
    query_packed = np.ascontiguousarray(query_packed)
    db_packed = np.ascontiguousarray(db_packed)
    for name, codes in (("query_packed", query_packed), ("db_packed", db_packed)):
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
            raise ValueError(f"{name} must be a non-empty 2-D uint8 array of packed codes, got {codes.dtype} {codes.shape}")
    if query_packed.shape[1] != db_packed.shape[1]:
        raise ValueError(f"queries have {8 * query_packed.shape[1]}-bit codes but the database has {8 * db_packed.shape[1]}-bit codes")
    query_labels, db_labels = _normalise_labels(query_labels, db_labels, len(query_packed), len(db_packed))
    return _Retrieval(query_packed, db_packed, query_labels, db_labels)


def _normalise_labels(
    query_labels: np.ndarray, db_labels: np.ndarray, n_queries: int, n_db: int
) -> tuple[np.ndarray, np.ndarray]:
    """Both 1-D class ids stay ids (compared by equality); otherwise both become 0/1 float32 multi-hot.

    float32 lets relevance be one BLAS product per chunk; counts of shared
    labels stay exact far beyond any real number of classes.
    """
    query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
    if len(query_labels) != n_queries or len(db_labels) != n_db:
        raise ValueError(
            f"labels for {len(query_labels)} queries and {len(db_labels)} database items do not match {n_queries} and {n_db} codes"
        )
    if query_labels.ndim == 1 and db_labels.ndim == 1:
        return query_labels, db_labels
    width = (query_labels if query_labels.ndim == 2 else db_labels).shape[1]
    return _multi_hot(query_labels, width), _multi_hot(db_labels, width)


def _multi_hot(labels: np.ndarray, width: int) -> np.ndarray:
    if labels.ndim == 2:
        if labels.shape[1] != width:
            raise ValueError(f"multi-hot labels have {labels.shape[1]} and {width} classes")
        return (labels != 0).astype(np.float32)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or np.any((labels < 0) | (labels >= width)):
        raise ValueError(f"class ids must be integers in [0, {width}) to match {width}-class multi-hot labels")
    one_hot = np.zeros((len(labels), width), dtype=np.float32)
    one_hot[np.arange(len(labels)), labels] = 1.0
    return one_hot


def _relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Boolean (q, n): the pair shares at least one label."""
    if query_labels.ndim == 1:
        return query_labels[:, None] == db_labels[None, :]
    return (query_labels @ db_labels.T) > 0


def _label_keys(query_labels: np.ndarray, db_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels in a form that is cheap to gather at ranked positions.

    Class ids stay as they are (compared by equality). Multi-hot rows become
    bit sets, one uint64 per 64 classes ((n,) for up to 64 classes, else
    (n, words)): two items share a label exactly when their bit sets intersect,
    the same test as a positive dot product of 0/1 vectors, with 8 bytes per
    item to gather instead of 4 bytes per class.
    """
    if query_labels.ndim == 1:
        return query_labels, db_labels

    def bits(labels: np.ndarray) -> np.ndarray:
        packed = np.packbits(labels != 0, axis=1, bitorder="little")
        words = -(-packed.shape[1] // 8)
        padded = np.zeros((len(labels), 8 * words), dtype=np.uint8)
        padded[:, : packed.shape[1]] = packed
        keys = padded.view(np.uint64)
        return keys[:, 0] if words == 1 else keys

    return bits(query_labels), bits(db_labels)


def _gathered_relevance(query_keys: np.ndarray, db_keys: np.ndarray, order: np.ndarray, as_bits: bool) -> np.ndarray:
    """Boolean (q, depth): whether query i shares a label with database item order[i, j].

    Same criterion as :func:`_relevance`, evaluated only at the ranked items,
    on the keys of :func:`_label_keys` (bit sets when ``as_bits``, else class ids).
    """
    if not as_bits:
        return query_keys[:, None] == db_keys[order]
    if db_keys.ndim == 1:
        return (query_keys[:, None] & db_keys[order]) != 0
    return ((query_keys[:, None, :] & db_keys[order]) != 0).any(axis=2)


def _distance_histograms(distances: np.ndarray, relevant: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, how many items and how many relevant items lie at each distance 0..bits."""
    width = bits + 1
    flat = (distances.astype(np.int64) + width * np.arange(len(distances))[:, None]).ravel()
    items = np.bincount(flat, minlength=width * len(distances)).reshape(-1, width)
    hits = np.bincount(flat, weights=relevant.ravel(), minlength=width * len(distances)).reshape(-1, width)
    return items, hits.astype(np.int64)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, with 0 where the denominator is 0 (nothing retrieved or relevant)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)

"""Seeded, deterministic train / validation / query / database splits.

Following the reference protocol: queries are held out of the database, half
of them are a validation set for early stopping and half the test set that
results are reported on (never used for choices); the training set is a
class-balanced sample of the database.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .sources import ImageSource


@dataclass(frozen=True)
class Split:
    """Index arrays into an :class:`ImageSource`."""

    train: np.ndarray
    database: np.ndarray
    val_queries: np.ndarray
    test_queries: np.ndarray

    def as_dict(self) -> dict[str, list[int]]:
        return {k: getattr(self, k).tolist() for k in ("train", "database", "val_queries", "test_queries")}


def _primary_class(labels: np.ndarray) -> np.ndarray:
    """One stratum per item: its first label (or -1 when it has none)."""
    has = labels.any(axis=1)
    return np.where(has, labels.argmax(axis=1), -1)


def _stratified_take(pool: np.ndarray, strata: np.ndarray, n_take: int, rng: np.random.Generator) -> np.ndarray:
    """Take ``n_take`` items of ``pool`` spread evenly over strata (round-robin over shuffled strata)."""
    if n_take >= len(pool):
        return np.sort(pool)
    groups = [rng.permutation(pool[strata[pool] == s]) for s in np.unique(strata[pool])]
    order = []
    depth = 0
    while len(order) < n_take:
        for g in groups:
            if depth < len(g):
                order.append(g[depth])
        depth += 1
    return np.sort(np.asarray(order[:n_take], dtype=np.int64))


def make_split(
    source: ImageSource,
    seed: int = 0,
    n_queries: int | None = None,
    n_train: int = 5000,
) -> Split:
    """Split a source deterministically for ``seed``.

    With a protocol (CIFAR-10): queries are the test images, the database is
    all training images, and the training set is ``n_train`` class-balanced
    database images (500 per class for the default). Otherwise ``n_queries``
    (default about a sixth of the data, at most 1,000) class-balanced items
    are held out as queries, the rest is the database.
    """
    n = len(source)
    if n < 4:
        raise DataError(f"{source.name} has {n} images; at least 4 are needed to split train and queries")
    rng = np.random.default_rng(seed)
    strata = _primary_class(source.labels) if source.labelled else np.zeros(n, dtype=np.int64)
    if "train" in source.protocol and "test" in source.protocol:
        database = np.sort(source.protocol["train"])
        queries = rng.permutation(source.protocol["test"])
        if n_queries is not None:
            queries = queries[:n_queries]
    else:
        if n_queries is None:
            n_queries = min(1000, max(2, n // 6))
        if not 2 <= n_queries < n - 1:
            raise DataError(f"cannot hold out {n_queries} queries from {n} images")
        everything = np.arange(n)
        query_set = _stratified_take(everything, strata, n_queries, rng)
        database = np.setdiff1d(everything, query_set)
        queries = rng.permutation(query_set)
    half = len(queries) // 2
    train = _stratified_take(database, strata, n_train, rng)
    return Split(
        train=train,
        database=database,
        val_queries=np.sort(queries[:half]),
        test_queries=np.sort(queries[half:]),
    )

"""Retrieval metrics: hand-worked cases, tie handling, and the tie-aware closed form against brute force."""
from __future__ import annotations

import itertools
import sys
import types
from fractions import Fraction

import numpy as np
import pytest

import brcd_cli
from brcd_cli.evaluation import (
    RadiusPrecision,
    average_precision_at_k,
    mean_average_precision,
    precision_at_n,
    precision_recall_curve,
    precision_within_radius,
    precision_within_radius_stats,
    tie_aware_average_precision_at_k,
)
from brcd_cli.evaluation import metrics


def reference_hamming_distances(q_packed: np.ndarray, db_packed: np.ndarray) -> np.ndarray:
    """Popcount of xor in plain numpy, used to check (or stand in for) brcd_cli.kernels."""
    xor = np.bitwise_xor(q_packed[:, None, :], db_packed[None, :, :])
    return np.unpackbits(xor, axis=2).sum(axis=2, dtype=np.int32)


@pytest.fixture(autouse=True)
def kernels(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The real kernels when they are importable, else a numpy stand-in with the same function."""
    try:
        from brcd_cli import kernels as real

        if hasattr(real, "hamming_distances"):
            return real
    except ImportError:
        pass
    stand_in = types.ModuleType("brcd_cli.kernels")
    stand_in.hamming_distances = reference_hamming_distances
    monkeypatch.setitem(sys.modules, "brcd_cli.kernels", stand_in)
    monkeypatch.setattr(brcd_cli, "kernels", stand_in, raising=False)
    return stand_in


def at_distances(distances: list[int], bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A zero query and database codes at exactly the given Hamming distances from it."""
    db = np.arange(bits)[None, :] < np.asarray(distances)[:, None]
    return np.zeros((1, bits // 8), np.uint8), np.packbits(db, axis=1, bitorder="little")


def relevance_labels(relevant: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Class ids: the query is class 1, relevant items class 1, the rest class 0."""
    return np.array([1]), np.asarray(relevant)


def brute_force_ap_parts(distances: list[int], relevant: list[int], k: int) -> tuple[Fraction, int]:
    """Numerator (sum of precision at relevant ranks) and relevant count of AP@K, one item at a time."""
    order = sorted(range(len(distances)), key=lambda i: (distances[i], i))[:k]
    found, total = 0, Fraction(0)
    for rank, item in enumerate(order, start=1):
        if relevant[item]:
            found += 1
            total += Fraction(found, rank)
    return total, found


def random_problem(rng: np.random.Generator, n_queries: int, n_db: int, bits: int, classes: int):
    q = rng.integers(0, 256, size=(n_queries, bits // 8), dtype=np.uint8)
    db = rng.integers(0, 256, size=(n_db, bits // 8), dtype=np.uint8)
    return q, db, rng.integers(0, classes, n_queries), rng.integers(0, classes, n_db)


def test_kernel_distances_match_popcount(kernels: types.ModuleType) -> None:
    q, db, _, _ = random_problem(np.random.default_rng(0), 4, 30, 72, 2)
    np.testing.assert_array_equal(kernels.hamming_distances(q, db), reference_hamming_distances(q, db))


# distances (2, 0, 1, 1, 3), relevance (1, 0, 1, 0, 1): ranked by (distance, index) the items are
# 1, 2, 3, 0, 4 with relevance 0, 1, 0, 1, 1, so relevant items sit at ranks 2, 4 and 5.
PAPER_DISTANCES = [2, 0, 1, 1, 3]
PAPER_RELEVANT = [1, 0, 1, 0, 1]


@pytest.mark.parametrize("k, expected", [
    (None, (1 / 2 + 2 / 4 + 3 / 5) / 3),  # = 8/15
    (5, (1 / 2 + 2 / 4 + 3 / 5) / 3),
    (99, (1 / 2 + 2 / 4 + 3 / 5) / 3),  # K beyond the database means all of it
    (4, (1 / 2 + 2 / 4) / 2),
    (3, (1 / 2) / 1),
    (1, 0.0),  # nothing relevant in the top 1
])
def test_average_precision_worked_on_paper(k: int | None, expected: float) -> None:
    q, db = at_distances(PAPER_DISTANCES)
    ql, dl = relevance_labels(PAPER_RELEVANT)
    np.testing.assert_allclose(average_precision_at_k(q, db, ql, dl, k=k), [expected])


def test_ties_are_broken_by_database_index() -> None:
    q, db = at_distances([0, 0, 0])
    assert average_precision_at_k(q, db, *relevance_labels([0, 1, 0]))[0] == pytest.approx(1 / 2)
    assert average_precision_at_k(q, db, *relevance_labels([1, 0, 0]))[0] == pytest.approx(1.0)
    assert average_precision_at_k(q, db, *relevance_labels([0, 0, 1]))[0] == pytest.approx(1 / 3)


def test_k_smaller_than_number_of_relevant() -> None:
    # distances 0..4 give the ranking 0..4; relevance 1, 0, 1, 1, 1
    q, db = at_distances([0, 1, 2, 3, 4])
    ql, dl = relevance_labels([1, 0, 1, 1, 1])
    np.testing.assert_allclose(average_precision_at_k(q, db, ql, dl, k=1), [1.0])
    np.testing.assert_allclose(average_precision_at_k(q, db, ql, dl, k=2), [1.0])
    np.testing.assert_allclose(average_precision_at_k(q, db, ql, dl, k=3), [(1 + 2 / 3) / 2])


def test_query_without_relevant_items_scores_zero() -> None:
    q, db = at_distances([0, 1, 1, 2])
    labels = (np.array([7]), np.array([0, 1, 2, 3]))
    assert average_precision_at_k(q, db, *labels)[0] == 0.0
    assert tie_aware_average_precision_at_k(q, db, *labels)[0] == 0.0
    assert tie_aware_average_precision_at_k(q, db, *labels, k=2)[0] == 0.0


def test_multi_hot_labels_share_any_label() -> None:
    q, db = at_distances([0, 1, 2, 3])
    query_labels = np.array([[1, 0, 1]])
    db_labels = np.array([[0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]])  # relevance 0, 1, 1, 0
    expected = (1 / 2 + 2 / 3) / 2
    np.testing.assert_allclose(average_precision_at_k(q, db, query_labels, db_labels), [expected])
    np.testing.assert_allclose(average_precision_at_k(q, db, np.array([2]), db_labels), [1 / 2])  # ids vs multi-hot
    np.testing.assert_allclose(average_precision_at_k(q, db, query_labels.astype(bool), db_labels * 5), [expected])


def test_tie_aware_worked_on_paper() -> None:
    # Only items 2 (relevant) and 3 tie, at distance 1 after item 1. Orders 2,3 and 3,2 give
    # AP (1/2 + 2/4 + 3/5)/3 and (1/3 + 2/4 + 3/5)/3; their mean is 91/180. The closed form
    # gives the distance-1 group 1/2 * (1/2 + 1/3) and the later items 2/4 and 3/5.
    q, db = at_distances(PAPER_DISTANCES)
    ql, dl = relevance_labels(PAPER_RELEVANT)
    np.testing.assert_allclose(tie_aware_average_precision_at_k(q, db, ql, dl), [91 / 180])


def test_tie_aware_equals_plain_without_ties() -> None:
    rng = np.random.default_rng(1)
    q, db = at_distances(list(rng.permutation(17)), bits=16)  # 17 distinct distances 0..16
    for relevant in (rng.integers(0, 2, 17) for _ in range(5)):
        ql, dl = relevance_labels(list(relevant))
        for k in (None, 1, 4, 16):
            np.testing.assert_allclose(
                tie_aware_average_precision_at_k(q, db, ql, dl, k=k), average_precision_at_k(q, db, ql, dl, k=k)
            )


@pytest.mark.parametrize("k", [None, 2, 3, 5])
def test_tie_aware_equals_exhaustive_enumeration(k: int | None) -> None:
    """Over all 720 orderings of 6 items: the exact mean AP for K = all, E[sum]/E[hits] otherwise."""
    distances, relevant = [1, 0, 1, 1, 2, 0], [1, 0, 0, 1, 1, 1]
    top = 6 if k is None else k
    sums, hits, aps = Fraction(0), 0, Fraction(0)
    perms = list(itertools.permutations(range(6)))
    for perm in perms:  # perm[i] is where item i goes: ties are then broken by that position
        d, r = [0] * 6, [0] * 6
        for item, place in enumerate(perm):
            d[place], r[place] = distances[item], relevant[item]
        total, found = brute_force_ap_parts(d, r, top)
        sums, hits = sums + total, hits + found
        aps += total / found if found else 0
    expected = aps / len(perms) if k is None else sums / hits
    q, db = at_distances(distances)
    ql, dl = relevance_labels(relevant)
    np.testing.assert_allclose(tie_aware_average_precision_at_k(q, db, ql, dl, k=k), [float(expected)], rtol=1e-12)


def test_tie_aware_matches_monte_carlo_over_ties() -> None:
    rng = np.random.default_rng(2)
    q, db, ql, dl = random_problem(rng, 6, 40, 8, 3)  # 8-bit codes: many equal distances
    expected = tie_aware_average_precision_at_k(q, db, ql, dl)
    draws = []
    for _ in range(3000):
        perm = rng.permutation(len(db))  # a random database order is a random order within ties
        draws.append(average_precision_at_k(q, db[perm], ql, dl[perm]))
    draws = np.array(draws)
    standard_error = draws.std(axis=0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - expected) <= 5 * standard_error + 1e-12)
    assert np.any(draws.std(axis=0) > 0), "the case should have ties that matter"


def test_average_precision_matches_brute_force_on_random_data() -> None:
    rng = np.random.default_rng(3)
    q, db, ql, dl = random_problem(rng, 20, 60, 16, 4)
    distances = reference_hamming_distances(q, db)
    for k in (None, 7, 60):
        got = average_precision_at_k(q, db, ql, dl, k=k)
        for i in range(len(q)):
            total, found = brute_force_ap_parts(list(distances[i]), list(dl == ql[i]), k or len(db))
            assert got[i] == pytest.approx(float(total / found) if found else 0.0)


def test_chunked_results_equal_unchunked(monkeypatch: pytest.MonkeyPatch, kernels: types.ModuleType) -> None:
    rng = np.random.default_rng(4)
    q, db, ql, dl = random_problem(rng, 23, 50, 24, 5)
    whole = [f(q, db, ql, dl) for f in (average_precision_at_k, tie_aware_average_precision_at_k)]
    whole_curve = precision_recall_curve(q, db, ql, dl)
    calls: list[int] = []

    def counting(q_chunk: np.ndarray, db_packed: np.ndarray) -> np.ndarray:
        calls.append(len(q_chunk))
        return reference_hamming_distances(q_chunk, db_packed)

    monkeypatch.setattr(kernels, "hamming_distances", counting)
    monkeypatch.setattr(metrics, "MAX_CHUNK_ELEMENTS", 5 * 50)
    chunked = [f(q, db, ql, dl) for f in (average_precision_at_k, tie_aware_average_precision_at_k)]
    np.testing.assert_allclose(chunked, whole)
    np.testing.assert_allclose(precision_recall_curve(q, db, ql, dl), whole_curve)
    assert calls[:5] == [5, 5, 5, 5, 3]


def test_mean_average_precision_both_variants() -> None:
    q, db = at_distances(PAPER_DISTANCES)
    ql, dl = relevance_labels(PAPER_RELEVANT)
    plain = mean_average_precision(q, db, ql, dl)
    aware = mean_average_precision(q, db, ql, dl, tie_aware=True)
    assert isinstance(plain, float) and isinstance(aware, float)
    assert plain == pytest.approx(8 / 15) and aware == pytest.approx(91 / 180)
    assert mean_average_precision(q, db, ql, dl, k=3) == pytest.approx(1 / 2)


def test_precision_at_n_worked_on_paper() -> None:
    q, db = at_distances(PAPER_DISTANCES)
    result = precision_at_n(q, db, *relevance_labels(PAPER_RELEVANT), n_list=[5, 1, 2])
    assert result == pytest.approx({1: 0.0, 2: 1 / 2, 5: 3 / 5})
    with pytest.raises(ValueError, match="between 1 and the database size"):
        precision_at_n(q, db, *relevance_labels(PAPER_RELEVANT), n_list=[6])


def test_precision_within_radius_with_empty_retrievals() -> None:
    # query 0 is code 0x00, query 1 is code 0xFF: at distances >= 5 from every database item
    q = np.array([[0x00], [0xFF]], dtype=np.uint8)
    _, db = at_distances([0, 2, 3, 1])
    query_labels, db_labels = np.array([1, 1]), np.array([1, 0, 1, 0])
    # query 0 retrieves items 0, 1, 3 within radius 2, of which item 0 is relevant
    stats = precision_within_radius_stats(q, db, query_labels, db_labels, radius=2)
    assert isinstance(stats, RadiusPrecision)
    np.testing.assert_allclose(stats.per_query, [1 / 3, 0.0])
    assert stats.precision == pytest.approx(1 / 6)
    assert stats.retrieved_fraction == pytest.approx(1 / 2)
    assert precision_within_radius(q, db, query_labels, db_labels, radius=2) == pytest.approx(1 / 6)
    assert precision_within_radius(q, db, query_labels, db_labels, radius=0) == pytest.approx(1 / 2)  # item 0 only
    nothing = precision_within_radius_stats(q[1:], db, query_labels[1:], db_labels, radius=4)
    assert (nothing.precision, nothing.retrieved_fraction) == (0.0, 0.0)


def test_precision_recall_curve_worked_on_paper() -> None:
    q, db = at_distances(PAPER_DISTANCES)
    ql, dl = relevance_labels(PAPER_RELEVANT)
    precision, recall = precision_recall_curve(q, db, ql, dl)
    assert precision.shape == recall.shape == (9,)
    np.testing.assert_allclose(precision, [0, 1 / 3, 2 / 4, 3 / 5, 3 / 5, 3 / 5, 3 / 5, 3 / 5, 3 / 5])
    np.testing.assert_allclose(recall, [0, 1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1])


def test_precision_recall_curve_agrees_with_radius_precision() -> None:
    q, db, ql, dl = random_problem(np.random.default_rng(5), 15, 40, 16, 3)
    precision, recall = precision_recall_curve(q, db, ql, dl)
    for radius in range(17):
        assert precision[radius] == pytest.approx(precision_within_radius(q, db, ql, dl, radius=radius))
    assert np.all(np.diff(recall) >= 0)
    has_relevant = np.mean([np.any(dl == label) for label in ql])
    assert recall[-1] == pytest.approx(has_relevant)


@pytest.mark.parametrize("call, message", [
    (lambda q, db, labels: average_precision_at_k(q, db[:, :1], labels, np.zeros(5, int)), "16-bit codes but the database has 8-bit"),
    (lambda q, db, labels: average_precision_at_k(q, db, labels, np.zeros(4, int)), "do not match"),
    (lambda q, db, labels: average_precision_at_k(q.astype(np.int32), db, labels, np.zeros(5, int)), "uint8"),
    (lambda q, db, labels: average_precision_at_k(q, db, labels, np.zeros(5, int), k=0), "k must be"),
    (lambda q, db, labels: average_precision_at_k(q, db, np.array([3]), np.zeros((5, 2))), "class ids must be integers"),
    (lambda q, db, labels: precision_within_radius(q, db, labels, np.zeros(5, int), radius=-1), "radius"),
])
def test_invalid_inputs_are_rejected(call, message: str) -> None:
    q, db = at_distances([0, 1, 2, 3, 4], bits=16)
    with pytest.raises(ValueError, match=message):
        call(q, db, np.array([1]))

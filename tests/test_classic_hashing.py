"""LSH and ITQ on fixed features: the layer they return, ITQ's objective, and retrieval on clustered data."""
from __future__ import annotations

import numpy as np
import pytest

from brcd_cli.errors import OptionError
from brcd_cli.training.classic import (
    CLASSIC_METHODS,
    _pca,
    fit_itq,
    fit_lsh,
    hash_codes,
    itq_rotation,
    quantisation_loss,
    random_rotation,
)


def _blobs(n_per_blob: int = 40, n_blobs: int = 10, d: int = 64, seed: int = 0,
           spread: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs (unit noise, centres ``spread`` apart per axis) in d dimensions, offset from the origin."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, spread, size=(n_blobs, d))
    labels = np.repeat(np.arange(n_blobs), n_per_blob)
    x = centres[labels] + rng.normal(0, 1, size=(len(labels), d)) + 5.0
    return x.astype(np.float32), labels


def _precision_at_10(codes: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out precision@10 under Hamming distance (ties broken by index)."""
    bits = codes.shape[1]
    distances = (bits - codes.astype(np.int64) @ codes.T.astype(np.int64)) // 2
    np.fill_diagonal(distances, bits + 1)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :10]
    return float(np.mean(labels[nearest] == labels[:, None]))


@pytest.mark.parametrize("name", sorted(CLASSIC_METHODS))
def test_fitters_return_a_float32_linear_layer(name):
    x, _ = _blobs()
    W, b = CLASSIC_METHODS[name](x, 16, 0)
    assert W.shape == (16, 64) and b.shape == (16,)
    assert W.dtype == np.float32 and b.dtype == np.float32
    codes = hash_codes(x, W, b)
    assert codes.shape == (len(x), 16) and set(np.unique(codes)) <= {-1, 1}
    expected = np.where(x.astype(np.float64) @ W.T.astype(np.float64) + b >= 0, 1, -1)
    assert np.array_equal(codes, expected)


@pytest.mark.parametrize("name", sorted(CLASSIC_METHODS))
def test_same_seed_same_layer_other_seed_other_layer(name):
    x, _ = _blobs()
    fit = CLASSIC_METHODS[name]
    W1, b1 = fit(x, 16, 3)
    W2, b2 = fit(x, 16, 3)
    W3, _ = fit(x, 16, 4)
    assert np.array_equal(W1, W2) and np.array_equal(b1, b2)
    assert not np.allclose(W1, W3)


def test_lsh_hyperplanes_pass_through_the_mean_so_bits_are_balanced():
    x, _ = _blobs(n_per_blob=100)
    W, b = fit_lsh(x, 64, 0)
    assert np.allclose(W @ x.mean(axis=0) + b, 0, atol=1e-2)
    ones = (hash_codes(x, W, b) > 0).mean(axis=0)
    assert 0.15 < ones.mean() < 0.85 and 0.35 < np.median(ones) < 0.65
    # through the origin instead, the offset data would make nearly every bit constant-ish
    origin_ones = (hash_codes(x, W, np.zeros_like(b)) > 0).mean(axis=0)
    assert np.mean(np.abs(ones - 0.5)) < np.mean(np.abs(origin_ones - 0.5))


def test_itq_loss_never_increases_and_beats_a_random_rotation():
    x, _ = _blobs()
    mean, P = _pca(x.astype(np.float64), 32)
    v = (x - mean) @ P
    rotation, losses = itq_rotation(v, seed=0, iterations=50)
    assert len(losses) == 51
    assert all(later <= earlier * (1 + 1e-9) + 1e-9 for earlier, later in zip(losses, losses[1:]))
    assert losses[-1] < 0.9 * losses[0]
    assert losses[-1] < quantisation_loss(v, random_rotation(32, seed=7))
    assert quantisation_loss(v, rotation) == pytest.approx(losses[-1])


def test_itq_rotation_is_orthogonal_and_the_layer_is_its_pca_rotation():
    x, _ = _blobs()
    mean, P = _pca(x.astype(np.float64), 24)
    rotation, _ = itq_rotation((x - mean) @ P, seed=5, iterations=20)
    assert np.allclose(rotation.T @ rotation, np.eye(24), atol=1e-10)
    assert np.allclose(rotation @ rotation.T, np.eye(24), atol=1e-10)
    W, b = fit_itq(x, 24, seed=5, iterations=20)
    assert np.allclose(W, (P @ rotation).T, atol=1e-5)
    assert np.allclose(b, -(P @ rotation).T @ mean, atol=1e-4)
    # rows of W are orthonormal: PCA directions turned by an orthogonal matrix
    assert np.allclose(W @ W.T, np.eye(24), atol=1e-5)


def test_random_rotation_is_orthogonal_and_seeded():
    r = random_rotation(16, seed=1)
    assert np.allclose(r.T @ r, np.eye(16), atol=1e-12)
    assert np.array_equal(r, random_rotation(16, seed=1)) and not np.allclose(r, random_rotation(16, seed=2))


def test_itq_refuses_more_bits_than_dimensions_and_bad_input():
    x, _ = _blobs(d=8)
    with pytest.raises(OptionError, match="at most the feature dimension"):
        fit_itq(x, 16, 0)
    fit_itq(x, 8, 0)  # bits == d is fine
    with pytest.raises(OptionError, match="positive"):
        fit_lsh(x, 0, 0)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        fit_lsh(x[0], 8, 0)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_itq(bad, 4, 0)


def test_itq_codes_find_same_blob_neighbours_far_better_than_chance():
    # overlapping blobs, so that 16 bits cannot separate them perfectly and the methods differ
    x, labels = _blobs(n_per_blob=40, n_blobs=10, spread=0.5)
    chance = 39 / 399
    W, b = fit_itq(x, 16, seed=0)
    itq = _precision_at_10(hash_codes(x, W, b), labels)
    W, b = fit_lsh(x, 16, seed=0)
    lsh = _precision_at_10(hash_codes(x, W, b), labels)
    assert itq > 4 * chance
    assert lsh > 1.5 * chance
    assert itq > lsh + 0.1  # the rotation of the PCA space beats random hyperplanes at few bits

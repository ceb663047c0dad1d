"""Classic unsupervised hashing on fixed features: LSH and ITQ, as pure functions.

Why: a learned teacher is only worth its training if its codes beat what a
few matrix operations get from the same frozen backbone features. Random
hyperplanes (LSH) are the floor any method must clear; ITQ (Gong & Lazebnik,
2011) is the classic strong baseline, PCA followed by the rotation that makes
the projected data closest to the vertices of the hypercube.

Neither has a training loop: each fitter is a closed-form or alternating
computation on an (n, d) feature matrix, seeded, with no torch. Both return
the same thing, a hashing layer ``(W, b)`` with ``W`` of shape (bits, d) and
``b`` of shape (bits,), and the code of a feature row ``x`` is
``sign(W @ x + b)`` with 0 mapping to +1, exactly what the model's Linear hash
head computes. So a baseline is stored as that head on the frozen backbone,
and its checkpoint and codes files have the same format as a learned one's.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import OptionError


class HashFitter(Protocol):
    """Fits a linear hashing layer to training features: ``(features (n, d), bits, seed) -> (W (bits, d), b (bits,))``."""

    def __call__(self, features: np.ndarray, bits: int, seed: int) -> tuple[np.ndarray, np.ndarray]: ...


def _checked(features: np.ndarray, bits: int) -> np.ndarray:
    """The features as float64 (n, d), with the checks every fitter needs, before any work."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"features must be an (n, d) matrix with n >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1:
        raise OptionError("bits", f"must be a positive integer, got {bits!r}")
    return x


def hash_codes(features: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """±1 codes (int8, (n, bits)) of ``features`` under a fitted layer; 0 maps to +1 as in the model's head."""
    logits = np.asarray(features, dtype=np.float64) @ np.asarray(W, dtype=np.float64).T + np.asarray(b, dtype=np.float64)
    return np.where(logits >= 0, 1, -1).astype(np.int8)


def fit_lsh(features: np.ndarray, bits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random gaussian hyperplanes through the training features' mean.

    Through the mean rather than the origin, because backbone features (after
    a ReLU, say) all lie on one side of most hyperplanes through 0, which would
    make most bits constant. ``features`` only set the offset; the directions
    depend on ``seed`` and ``d`` alone.
    """
    x = _checked(features, bits)
    mean = x.mean(axis=0)
    W = np.random.default_rng(seed).standard_normal((bits, x.shape[1]))
    return W.astype(np.float32), (-W @ mean).astype(np.float32)


def _pca(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the ``bits`` leading principal directions, as the columns of P (d, bits)."""
    mean = x.mean(axis=0)
    centred = x - mean
    covariance = centred.T @ centred / (len(x) - 1)
    _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    return mean, vectors[:, ::-1][:, :bits]


def random_rotation(dim: int, seed: int) -> np.ndarray:
    """A seeded random orthogonal (dim, dim) matrix (QR of a gaussian matrix, signs fixed so it is uniform)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def quantisation_loss(v: np.ndarray, rotation: np.ndarray) -> float:
    """ITQ's objective ``||B - V R||_F^2`` with ``B = sign(V R)``, the best codes for that rotation."""
    projected = v @ rotation
    return float(np.sum((np.where(projected >= 0, 1.0, -1.0) - projected) ** 2))


def itq_rotation(v: np.ndarray, seed: int, iterations: int = 50) -> tuple[np.ndarray, list[float]]:
    """ITQ's alternating minimisation on PCA-projected data ``v`` (n, c).

    Each iteration fixes R and takes ``B = sign(V R)``, then fixes B and takes
    the orthogonal R minimising ``||B - V R||_F`` (orthogonal Procrustes: with
    ``V^T B = U S Z^T``, ``R = U Z^T``). Neither step can raise the loss, so
    the returned losses (the random start's first, then one per iteration)
    never increase.
    """
    if iterations < 0:
        raise OptionError("iterations", f"must be 0 or more, got {iterations}")
    rotation = random_rotation(v.shape[1], seed)
    losses = [quantisation_loss(v, rotation)]
    for _ in range(iterations):
        codes = np.where(v @ rotation >= 0, 1.0, -1.0)
        u, _, zt = np.linalg.svd(v.T @ codes)
        rotation = u @ zt
        losses.append(quantisation_loss(v, rotation))
    return rotation, losses


def fit_itq(features: np.ndarray, bits: int, seed: int, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Iterative quantisation: centre, PCA to ``bits`` dimensions, then the rotation that best fits the hypercube.

    PCA keeps the directions of most variance, but bits there carry
    unequal variance and thresholding them loses much; rotating the PCA space
    to minimise the distance to the nearest ±1 vertex spreads the variance
    and shrinks that loss. As a layer: ``W = (P R)^T``, ``b = -W mean``.
    """
    x = _checked(features, bits)
    if bits > x.shape[1]:
        raise OptionError("bits", f"must be at most the feature dimension ({x.shape[1]}) for ITQ, got {bits}")
    mean, P = _pca(x, bits)
    rotation, _ = itq_rotation((x - mean) @ P, seed, iterations)
    W = (P @ rotation).T
    return W.astype(np.float32), (-W @ mean).astype(np.float32)


CLASSIC_METHODS: dict[str, HashFitter] = {"lsh": fit_lsh, "itq": fit_itq}
"""Name -> fitter, for choosing a baseline by name."""

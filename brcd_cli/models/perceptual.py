"""Built-in perceptual hashers: layout-sensitive DCT hashes behind the encoder contract (``--model perceptual:dct64``).

Why they exist: a learned model's codes describe what a picture shows, so two
different tiles of one photograph, or two shots of one scene, land close
together; that is right for retrieval and wrong for near-duplicate detection,
where only copies of the same pixels (resized, re-compressed, slightly
cropped or recoloured) should pair. A perceptual hash keeps the coarse
layout of the image's brightness instead, which survives those edits and
differs between two tiles. Here it is an :class:`~brcd_cli.models.export.Encoder`
like a learned model (a ``config`` and ``codes(images)``), so ``brcd encode``,
the codes file, the indexes, ``brcd search``, ``brcd serve`` and
``brcd duplicates`` use it unchanged. It is named, not loaded from a folder:
:func:`resolve` turns ``perceptual:<name>`` into a hasher from :data:`HASHERS`.

The hash (``dct64``; ``dct256`` is the same recipe one octave finer):

1. The encode pipeline decodes each image as it does for every model
   (:mod:`brcd_cli.data.loader`: shorter side to ``image_size``, centre
   square kept, uint8 RGB), at ``image_size`` 64 for ``dct64``. The centre
   crop is the contract's (every decoder ends in it, and queries are decoded
   the same way); for a square image it cuts nothing, for a wide or tall one
   the hash describes its centre square, which copies that keep the aspect
   ratio share. A resize or re-compression keeps it; a crop that changes the
   aspect ratio moves it, as it moves the picture.
2. Grayscale by the ITU-R BT.601 luma weights in integers,
   ``(299 R + 587 G + 114 B + 500) // 1000`` (the weights of Pillow's ``convert("L")``, whose own
   16-bit fixed point lands one level off on about one pixel in 2000).
3. Area (box) resize to ``dct`` x ``dct`` (32 x 32): each output cell is the
   sum of the input pixels it covers, weighted by the overlap, a fixed
   integer matrix on each side (for 64 -> 32 it is plain 2 x 2 sums). A box
   filter has no tuning and no ringing, and it is exact in integers.
4. 2-D DCT-II (orthonormal basis, rounded to 12 fractional bits so it is an
   integer matrix), keeping the top-left ``block`` x ``block`` coefficients
   (8 x 8 of 32 x 32: the lowest eight frequencies in each direction, the
   coarse layout that survives resizing and JPEG, which quantises the high
   ones away). Steps 3 and 4 are one ``block`` x ``H`` matrix per side, so a
   batch is hashed by two batched matrix multiplies.
5. Bit ``i`` (row-major over the block, ``u * block + v``) is 1 when that
   coefficient is **greater than the median of the block's AC coefficients**
   (the 63 others than DC). This is the classic pHash bit rule as imagededup's
   PHash applies it: the DC coefficient (the mean brightness) is kept in the
   block but left out of the median, so adding brightness, which moves DC
   alone, does not move the threshold (scaling it scales every coefficient
   and the median alike); DC itself is always above the median
   of a non-black image, so its bit is a constant 1 that never adds distance
   (63 informative bits). The median of an odd count is one of the
   coefficients, so exactly 31 of the 63 AC bits are 1, 32 of the 64 with DC
   (a balanced code), unless coefficients tie. Two such codes always differ in an even number of
   bits, so radius 2k + 1 finds what radius 2k finds.

Determinism: every operand is an integer (pixels, luma, box weights, the
rounded DCT basis) and every product and partial sum stays below 2**53, a
bound checked before the products, so the float64 matrix multiplies
are exact whatever the BLAS, the summation order, the SIMD path or the
device. The same decoded pixels give the same bits on every machine. (The
decoding before the hasher is Pillow's and libjpeg's, as for every model.)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..errors import ModelError
from .hashing import ModelConfig

PREFIX = "perceptual:"
FORMAT = "brcd-perceptual/1"
LUMA = (299, 587, 114)  # ITU-R BT.601 weights in thousandths
BASIS_BITS = 12  # fractional bits of the rounded DCT basis
EXACT = 2 ** 53  # float64 holds every integer below this exactly


@dataclass(frozen=True)
class HasherSpec:
    """One built-in hasher: input size of the pipeline, DCT size, kept block, and what it is for."""

    name: str
    image_size: int
    dct: int
    block: int
    summary: str
    radius: int  # a suggested near-duplicate radius: imagededup's PHash default (10 of 64) scaled to the bits, not fitted

    @property
    def bits(self) -> int:
        return self.block * self.block

    def record(self) -> dict[str, object]:
        """Everything that decides the bits: hashed into the fingerprint that the codes file records."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("summary", "radius")}
        return {"format": FORMAT, **fields, "luma": list(LUMA), "resize": "area", "basis_bits": BASIS_BITS,
                "bit": "coefficient > median of the block's AC coefficients, row-major, DC kept",
                "decode": "pipeline: shorter side to image_size, centre square"}


#: The built-in hashers by name (``--model perceptual:<name>``).
HASHERS: dict[str, HasherSpec] = {spec.name: spec for spec in (
    HasherSpec("dct64", image_size=64, dct=32, block=8,
               summary="classic pHash: 32 x 32 grayscale, 8 x 8 lowest DCT frequencies, 64 bits", radius=10),
    HasherSpec("dct256", image_size=128, dct=64, block=16,
               summary="one octave finer: 64 x 64 grayscale, 16 x 16 lowest DCT frequencies, 256 bits", radius=40),
)}


def names() -> list[str]:
    """Every built-in hasher as ``--model`` takes it."""
    return [PREFIX + name for name in HASHERS]


def is_perceptual(model: Union[str, os.PathLike]) -> bool:
    """Whether ``--model`` names a built-in hasher rather than a model folder (an existing folder of that name wins)."""
    text = os.fspath(model)
    return text.startswith(PREFIX) and not Path(text).is_dir()


def area_matrix(n: int, size: int) -> np.ndarray:
    """(n, size) integer weights of an area resize from ``size`` to ``n`` samples: the overlap of output cell i,
    [i * size, (i + 1) * size), with input pixel j, [j * n, (j + 1) * n), on a grid ``n * size`` long. Each row sums
    to ``size``: every output cell is ``size`` times the mean of what it covers."""
    i = np.arange(n, dtype=np.int64)[:, None]
    j = np.arange(size, dtype=np.int64)[None, :]
    return np.clip(np.minimum((i + 1) * size, (j + 1) * n) - np.maximum(i * size, j * n), 0, None)


def dct_basis(n: int) -> np.ndarray:
    """The orthonormal n-point DCT-II basis, row k = frequency k, rounded to integers at ``BASIS_BITS`` fractional bits."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    basis = np.cos(math.pi * (2 * x + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return np.rint(basis * (1 << BASIS_BITS)).astype(np.int64)


@lru_cache(maxsize=16)
def projection(dct: int, block: int, size: int) -> np.ndarray:
    """(block, size) integer matrix: area resize to ``dct`` samples, then the ``block`` lowest DCT-II frequencies."""
    return dct_basis(dct)[:block] @ area_matrix(dct, size)


def exact_bound(dct: int, block: int, height: int, width: int) -> int:
    """The largest magnitude any partial sum of the hash's two products can reach for 8-bit luma."""
    rows = int(np.abs(projection(dct, block, height)).sum(axis=1).max())
    cols = int(np.abs(projection(dct, block, width)).sum(axis=1).max())
    return 255 * rows * cols


def luma(images: torch.Tensor) -> torch.Tensor:
    """Integer-valued float64 luma (N, H, W) of (N, 3, H, W) or (N, 1, H, W) images in [0, 1] or uint8."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ModelError(f"a perceptual hasher takes (N, 3, H, W) or (N, 1, H, W) images, got shape {tuple(images.shape)}")
    x = images.to(torch.float64)
    if images.dtype != torch.uint8:
        x = x * 255.0
    x = x.round_().clamp_(0, 255)
    if x.shape[1] == 1:
        return x[:, 0]
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    return torch.floor((LUMA[0] * r + LUMA[1] * g + LUMA[2] * b + 500.0) / 1000.0)


def dct_coefficients(gray: torch.Tensor, dct: int, block: int) -> torch.Tensor:
    """(N, block, block) integer-valued low-frequency DCT coefficients of integer luma (N, H, W), computed exactly."""
    _, height, width = gray.shape
    if exact_bound(dct, block, height, width) >= EXACT:
        raise ModelError(f"a {height}x{width} input is too large for an exact {block}x{block} DCT hash; "
                         "give images at the hasher's input size")
    rows = torch.from_numpy(projection(dct, block, height)).to(gray.device, torch.float64)
    cols = torch.from_numpy(projection(dct, block, width)).to(gray.device, torch.float64)
    return rows @ gray @ cols.T


def hash_bits(coefficients: torch.Tensor) -> torch.Tensor:
    """Bool (N, block * block): each coefficient, row-major, greater than the median of the AC ones (DC excluded)."""
    flat = coefficients.reshape(coefficients.shape[0], -1)
    median = flat[:, 1:].median(dim=1).values  # an odd count: the middle coefficient itself
    return flat > median[:, None]


class PerceptualHasher:
    """A built-in hasher as an encoder: ``codes`` gives ±1 codes (1 for a set bit) of float images in [0, 1]."""

    def __init__(self, spec: HasherSpec) -> None:
        self.spec = spec
        self.record = spec.record()
        self.fingerprint = hashlib.sha256(json.dumps(self.record, sort_keys=True).encode()).hexdigest()
        self.config = ModelConfig(arch=PREFIX + spec.name, bits=spec.bits, image_size=spec.image_size,
                                  method="perceptual", extra={"perceptual": self.record})

    def eval(self) -> PerceptualHasher:
        return self

    def bits(self, images: torch.Tensor) -> torch.Tensor:
        """Bool (N, bits) hash of a batch of images (any size the exactness bound allows; the pipeline's is 64 or 128)."""
        return hash_bits(dct_coefficients(luma(images), self.spec.dct, self.spec.block))

    @torch.no_grad()
    def codes(self, images: torch.Tensor) -> torch.Tensor:
        """±1 float codes, as a model's ``codes`` gives them: set bits are +1, so packing writes them as 1."""
        return torch.where(self.bits(images), 1.0, -1.0).to(torch.float32).cpu()


def resolve(model: Union[str, os.PathLike]) -> Optional[PerceptualHasher]:
    """The built-in hasher ``--model`` names, None when it names a folder, or one clear error for an unknown name."""
    if not is_perceptual(model):
        return None
    name = os.fspath(model)[len(PREFIX):]
    spec = HASHERS.get(name)
    if spec is None:
        raise ModelError(f"unknown perceptual hasher {os.fspath(model)!r}; built in: {', '.join(names())}")
    return PerceptualHasher(spec)


def name_of_space(space: str) -> Optional[str]:
    """The built-in hasher whose codes live in code space ``space`` (its recipe's fingerprint), or None: lets an
    error about mixed code spaces say "perceptual:dct64" instead of a digest."""
    for name, spec in HASHERS.items():
        if PerceptualHasher(spec).fingerprint == space:
            return PREFIX + name
    return None

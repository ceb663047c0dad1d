"""Batched image decoding (through :mod:`brcd_cli.data.loader`) and augmentation.

Augmentations run on whole batches of tensors (one affine grid and a few
per-sample factors), because per-image Python transforms would cost more than
the forward pass of a small model on this kind of data. The recipe is chosen
per data set: flips and colour changes suit photos but turn a 2 into
something else, so digits get small affine moves and noise instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..options import AUGMENT_RECIPES
from .loader import BatchStream, LoadOptions, to_tensor  # noqa: F401 - to_tensor is imported from here too
from .sources import ImageSource

RECIPES = AUGMENT_RECIPES


def load_batch(source: ImageSource, indices: Sequence[int], size: int,
               loading: Optional[LoadOptions] = None) -> torch.Tensor:
    """Decode and resize items to a uint8 tensor (b, 3, size, size); an unreadable item raises its DataError."""
    if len(indices) == 0:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    with BatchStream(source, indices, size, len(indices), loading, tolerant=False) as stream:
        return next(iter(stream)).images


def load_batch_tolerant(
    source: ImageSource, indices: Sequence[int], size: int, loading: Optional[LoadOptions] = None
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Like load_batch, but an unreadable item is set aside with the reason instead of failing the batch.

    Returns (images of the readable items, their indices, [(index, reason)] of the rest).
    """
    if len(indices) == 0:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8), [], []
    with BatchStream(source, indices, size, len(indices), loading) as stream:
        batch = next(iter(stream))
    return batch.images, batch.ok, batch.skipped


def iter_batches(
    source: ImageSource, indices: Sequence[int], size: int, batch_size: int, loading: Optional[LoadOptions] = None
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (indices, uint8 images) batch by batch, decoded ahead by the loader's workers; memory stays flat."""
    with BatchStream(source, indices, size, batch_size, loading, tolerant=False) as stream:
        for batch in stream:
            yield batch.indices, batch.images


def preload(source: ImageSource, indices: Iterable[int], size: int, batch_size: int = 256,
            loading: Optional[LoadOptions] = None) -> torch.Tensor:
    """Decode a training set once into a uint8 tensor; training then augments on the fly."""
    indices = np.asarray(list(indices), dtype=np.int64)
    parts = [batch for _, batch in iter_batches(source, indices, size, batch_size, loading)]
    if not parts:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.cat(parts)


@dataclass(frozen=True)
class Augmenter:
    """Random views of a batch of float images in [0, 1]: the positives of contrastive hashing."""

    recipe: str = "photo"

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.recipe == "none":
            return images
        b = images.shape[0]
        dev = images.device

        def uniform(lo: float, hi: float, n: int = b) -> torch.Tensor:
            return torch.rand(n, generator=generator, device=dev) * (hi - lo) + lo

        if self.recipe == "digits":
            angle = uniform(-15, 15) * (math.pi / 180)
            scale = uniform(0.85, 1.15)
            aspect = torch.ones(b, device=dev)
            shift = 0.12
            flip = torch.ones(b, device=dev)
        else:
            angle = torch.zeros(b, device=dev)
            # random resized crop: zoom into 35-100% of the area with aspect 3/4..4/3
            area = uniform(0.35, 1.0)
            aspect = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
            scale = torch.sqrt(area)
            shift = 0.0
            flip = torch.where(torch.rand(b, generator=generator, device=dev) < 0.5, -1.0, 1.0)
        sx = scale * torch.sqrt(aspect) * flip
        sy = scale / torch.sqrt(aspect)
        # photo: the crop may move anywhere inside the image; digits: a fixed small shift
        max_shift = (1 - scale).clamp(min=0) if self.recipe == "photo" else torch.full((b,), shift, device=dev)
        tx = uniform(-1, 1) * max_shift
        ty = uniform(-1, 1) * max_shift
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [torch.stack([cos * sx, -sin * sy, tx], dim=1), torch.stack([sin * sx, cos * sy, ty], dim=1)], dim=1
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros" if self.recipe == "digits" else "reflection", align_corners=False)
        if self.recipe == "digits":
            out = out + 0.05 * torch.randn(out.shape, generator=generator, device=dev)
            return out.clamp(0, 1)
        return _colour_jitter(out, generator)


def _colour_jitter(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Brightness, contrast, saturation (strength 0.4, applied with p=0.8) and grayscale (p=0.2)."""
    b = x.shape[0]
    dev = x.device

    def factor(strength: float) -> torch.Tensor:
        f = 1 + (torch.rand(b, 1, 1, 1, generator=generator, device=dev) * 2 - 1) * strength
        apply = torch.rand(b, 1, 1, 1, generator=generator, device=dev) < 0.8
        return torch.where(apply, f, torch.ones_like(f))

    gray_weights = torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)
    x = x * factor(0.4)
    mean = (x * gray_weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * factor(0.4) + mean
    gray = (x * gray_weights).sum(1, keepdim=True)
    x = (x - gray) * factor(0.4) + gray
    to_gray = torch.rand(b, 1, 1, 1, generator=generator, device=dev) < 0.2
    gray = (x * gray_weights).sum(1, keepdim=True).expand_as(x)
    x = torch.where(to_gray, gray, x)
    return x.clamp(0, 1)

"""Images -> +-1 codes -> packed codes, in batches so memory stays flat."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .kernels import pack_codes
from .models import Encoder, HashModel


@torch.no_grad()
def codes_of_images(model: Encoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """+-1 codes (N, L) of uint8 (or [0, 1] float) images, resized to the model's input size if needed."""
    model.eval()
    size = model.config.image_size
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        out.append(model.codes(resized(x, size)))
    if not out:
        return torch.zeros((0, model.config.bits))
    return torch.cat(out)


def packed_codes_of_images(model: Encoder, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Packed uint8 codes (N, L/8), the layout of the codes file and the kernels."""
    return pack_codes(codes_of_images(model, images, batch_size).numpy())


def resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images at ``size`` x ``size`` (antialiased bilinear), unchanged when already there."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def features_of(model: HashModel, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Backbone features of uint8 images at the model's input size (the validation queries' side)."""
    model.eval()
    size = model.config.image_size
    parts = [model.features(resized(images[s : s + batch_size].float().div(255.0), size)) for s in range(0, len(images), batch_size)]
    return torch.cat(parts) if parts else torch.zeros((0, 0))

"""JPEG straight to 1/8 scale with brcd's own decoder: Pillow's draft pixels, sooner.

Why: a draft decode of a camera JPEG for a small model lands on 1/8 scale,
where each 8x8 luma block becomes one pixel, its DC coefficient. libjpeg-turbo
still decodes every AC coefficient of those blocks symbol by symbol; that
entropy decoding is nearly all of the time, and the time is nearly all of
``brcd encode`` on real photos. The native decoder (``csrc/jpeg_eighth.h``)
skips those coefficients several bits at a time and otherwise repeats
libjpeg-turbo's arithmetic at this scale, so its pixels are Pillow's, byte for
byte (tests compare them on real photos in every subsampling, quality and
restart layout, and on thousands of corrupted files).

It takes baseline Huffman JPEGs with 8-bit samples, one or three components
(YCbCr) and one scan; for anything else (progressive, CMYK, Adobe colour
transforms, a corrupt stream, data past what it understands) it declines and
Pillow decodes the file exactly as before.

The decoders are a backend registry like the kernels' (native > pillow): the
``pillow`` backend declines every file. ``BRCD_JPEG_DECODER=pillow`` turns the
native decoder off, ``native`` insists on it (an error where it is not built),
``auto`` (the default) takes the first that loads; ``brcd info`` lists both
and says which runs.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..kernels._loading import import_extension
from ..kernels._registry import BackendError, BackendRegistry

ENV_VAR = "BRCD_JPEG_DECODER"
#: the extension's interface version (csrc/jpeg_cpu.cpp); an older build is refused, and Pillow decodes
API_VERSION = 1

#: ``decode(data) -> (pixels, "")``, or ``(None, why)`` where Pillow is to decode the file
Decode = Callable[[bytes], tuple[Optional[np.ndarray], str]]


def _native() -> Decode:
    return import_extension("brcd_cli._jpeg_cpu", API_VERSION).decode_eighth


def _declines(_: bytes) -> tuple[Optional[np.ndarray], str]:
    return None, f"{ENV_VAR}=pillow"


REGISTRY = BackendRegistry("JPEG decoder", ENV_VAR, {"native": _native, "pillow": lambda: _declines})


def active() -> str:
    """The decoder a 1/8-scale draft goes through now; a :class:`BackendError` for a value it does not take."""
    return REGISTRY.select()[0]


def enabled() -> bool:
    """Whether 1/8-scale JPEG drafts go through the native decoder here (a :class:`BackendError` as for active)."""
    return active() == "native"


def status() -> str:
    """One line for ``brcd info``."""
    try:
        name = active()
    except BackendError as exc:
        return str(exc)
    if name == "native":
        return "native at 1/8 scale (the same pixels as Pillow's draft; Pillow for every other file and scale)"
    why = f"{ENV_VAR}=pillow" if REGISTRY.requested() == "pillow" else f"native: {REGISTRY.status('native')}"
    return f"pillow ({why})"


def decode(data: bytes) -> tuple[Optional[np.ndarray], str]:
    """``(pixels, "")``: uint8 (H, W) or (H, W, 3) at 1/8 scale, equal to Pillow's draft; or ``(None, reason)``."""
    return REGISTRY.select()[1](data)

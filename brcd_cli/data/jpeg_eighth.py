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
Pillow decodes the file exactly as before. ``BRCD_JPEG_DECODER=pillow`` turns
it off (``auto``, the default, uses it where it applies); ``brcd info`` says
which runs.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np

from ..errors import BrcdError

ENV_VAR = "BRCD_JPEG_DECODER"
CHOICES = ("auto", "pillow")

try:
    from .. import _jpeg_cpu  # type: ignore[attr-defined]
except ImportError as exc:  # no compiler at install time: Pillow decodes everything
    _jpeg_cpu = None
    _MISSING = f"native decoder not built ({exc})"
else:
    _MISSING = ""


def choice() -> str:
    """The decoder ``BRCD_JPEG_DECODER`` asks for; a value it does not take is one error naming the variable."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise BrcdError(f"{ENV_VAR}={os.environ.get(ENV_VAR)!r} is not one of {', '.join(CHOICES)}")
    return value


def enabled() -> bool:
    """Whether 1/8-scale JPEG drafts go through the native decoder here."""
    return _jpeg_cpu is not None and choice() == "auto"


def status() -> str:
    """One line for ``brcd info``."""
    try:
        wanted = choice()
    except BrcdError as exc:
        return str(exc)
    if _jpeg_cpu is None:
        return f"pillow ({_MISSING})"
    if wanted == "pillow":
        return f"pillow ({ENV_VAR}=pillow)"
    return "native at 1/8 scale (the same pixels as Pillow's draft; Pillow for every other file and scale)"


@contextmanager
def forced(value: str) -> Iterator[None]:
    """``BRCD_JPEG_DECODER=value`` for the duration (benchmarks compare the decoders in one run)."""
    if value not in CHOICES:
        raise ValueError(f"{ENV_VAR} takes {', '.join(CHOICES)}, not {value!r}")
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def decode(data: bytes) -> tuple[Optional[np.ndarray], str]:
    """``(pixels, "")``: uint8 (H, W) or (H, W, 3) at 1/8 scale, equal to Pillow's draft; or ``(None, reason)``."""
    if _jpeg_cpu is None:
        return None, _MISSING
    return _jpeg_cpu.decode_eighth(data)

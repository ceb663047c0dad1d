"""Which images of a collection can be read, checked once before training or evaluating on it.

Why: ``encode`` skips an unreadable image, names it and goes on, but training
and evaluation read their images in several passes (training set, validation
queries, database), and each stopped at the first bad file, so a folder with
three bad files took three failed runs to learn of them. One tolerant pass at a
small draft size (a 12 MP JPEG costs about as much as one training decode at
1/8 scale) names every bad file in one error; with ``--skip-bad`` the run goes
on without them, as encode does. In-memory data sets (digits, the embedded
photographs, CIFAR-10 batches) have no files to go bad and are not checked.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..errors import DataError
from .loader import BatchStream, LoadOptions
from .sources import ImageSource

#: the input size the check decodes for: small, so that JPEGs take their cheapest DCT scale
CHECK_SIZE = 32
#: bad files named in the error; the rest are counted
SHOWN = 5


def unreadable(source: ImageSource, loading: Optional[LoadOptions] = None,
               batch_size: int = 64) -> tuple[list[int], list[tuple[str, str]]]:
    """(indices of the items that decode, (id, reason) of those that do not), in collection order."""
    if source.files is None:
        return list(range(len(source))), []
    kept: list[int] = []
    bad: list[tuple[str, str]] = []
    with BatchStream(source, np.arange(len(source)), CHECK_SIZE, batch_size, loading, tolerant=True) as stream:
        for batch in stream:
            kept += batch.ok
            bad += [(source.ids[i], reason) for i, reason in batch.skipped]
    return kept, bad


def readable(source: ImageSource, skip_bad: bool, log: Callable[[str], None] = print,
             loading: Optional[LoadOptions] = None) -> ImageSource:
    """``source`` when every image decodes; else a DataError naming the bad ones, or with ``skip_bad`` the
    others as a source of their own (:meth:`ImageSource.take`), each bad one logged with its reason."""
    kept, bad = unreadable(source, loading)
    if not bad:
        return source
    if not skip_bad:
        shown = "; ".join(reason for _, reason in bad[:SHOWN]) + (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
        raise DataError(f"{len(bad)} of {len(source)} images cannot be read ({shown}); fix or remove them, "
                        "or pass --skip-bad to go on without them")
    for _, reason in bad:
        log(f"skipped: {reason}")
    log(f"going on with the {len(kept)} readable images of {len(source)}")
    return source.take(kept)

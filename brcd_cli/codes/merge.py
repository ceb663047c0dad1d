"""Building a codes file from runs of items of other codes files: concatenating shards, removing items, updating.

One primitive, :func:`splice_codes`, serves every operation that rewrites a
collection: a shard merge is one run per shard, a removal the runs between the
removed items, an update the unchanged runs of the old file interleaved with
runs of newly encoded items. Runs are copied as they are stored (codes as
bytes, ids still encoded), so the cost is a sequential copy and the memory is
one chunk, whatever the collection's size.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .header import file_error
from .reader import CodesFile, read_codes, release_pages
from .writer import CodesWriter

_CHUNK = 1 << 16  # items copied per step of a long run


@dataclass(frozen=True)
class Run:
    """Items ``start..stop-1`` of part ``part``, in order."""

    part: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def check_same_model(parts: Sequence[CodesFile]) -> None:
    """Every part must come from one model (bits, producer and code space): mixed code spaces rank nonsense."""
    first = parts[0]
    for other in parts[1:]:
        if (other.bits, other.producer, other.code_space) != (first.bits, first.producer, first.code_space):
            raise file_error(other.path, f"was written by another model than {first.path} (bits, producer or code space differ)")


def splice_codes(parts: Sequence[CodesFile], runs: Iterable[Run], out: str | os.PathLike[str], overwrite: bool = False,
                 metadata: Optional[dict[str, Any]] = None, chunk: int = _CHUNK) -> int:
    """Write the items of ``runs``, in order, from the open ``parts`` into a new codes file; returns the count.

    The header (bits, producer, code space) is the first part's, and so is the
    metadata unless ``metadata`` is given. The file is written atomically, so
    ``out`` may be one of the parts' own path: they stay readable until the rename.
    """
    if not parts:
        raise ValueError("nothing to splice")
    check_same_model(parts)
    first = parts[0]
    with CodesWriter(Path(out), first.bits, first.producer, first.code_space, overwrite=overwrite,
                     metadata=first.metadata if metadata is None else metadata) as writer:
        for run in runs:
            part = parts[run.part]
            if not 0 <= run.start <= run.stop <= part.count:
                raise ValueError(f"run {run} lies outside the {part.count} items of {part.path}")
            for start in range(run.start, run.stop, chunk):
                stop = min(start + chunk, run.stop)
                lengths, blob = part.ids.raw(start, stop)
                codes = part.codes[start:stop]
                writer.append_encoded(codes, lengths, blob)
                release_pages(codes)
                release_pages(blob)
        return writer.count


def concatenate_codes(parts: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], overwrite: bool = False,
                      chunk: int = _CHUNK) -> int:
    """Write the codes and ids of ``parts``, in order, into one new codes file; returns the count.

    The header and metadata are the first part's, so concatenating the shards
    of one collection gives the same file a single encode would have written.
    """
    if not parts:
        raise ValueError("nothing to concatenate")
    opened = [read_codes(p) for p in parts]
    try:
        return splice_codes(opened, [Run(k, 0, part.count) for k, part in enumerate(opened)], out, overwrite=overwrite,
                            chunk=chunk)
    finally:
        for part in opened:
            part.close()

"""Concatenating codes files: how sharded encodes become one file."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .header import file_error
from .reader import read_codes
from .writer import CodesWriter


def concatenate_codes(parts: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], overwrite: bool = False,
                      chunk: int = 65536) -> int:
    """Write the codes and ids of ``parts``, in order, into one new codes file; returns the count.

    Every part must come from the same model (bits, producer and code space),
    since a file mixing code spaces would rank nonsense. The header and
    metadata are the first part's, so concatenating the shards of one
    collection gives the same file a single encode would have written.
    """
    if not parts:
        raise ValueError("nothing to concatenate")
    opened = [read_codes(p) for p in parts]
    try:
        first = opened[0]
        for other in opened[1:]:
            if (other.bits, other.producer, other.code_space) != (first.bits, first.producer, first.code_space):
                raise file_error(other.path, f"was written by another model than {first.path} (bits, producer or code space differ)")
        with CodesWriter(Path(out), first.bits, first.producer, first.code_space, overwrite=overwrite,
                         metadata=first.metadata) as writer:
            for part in opened:
                for start in range(0, part.count, chunk):
                    stop = min(start + chunk, part.count)
                    writer.append(part.codes[start:stop], part.ids[start:stop])
        return sum(part.count for part in opened)
    finally:
        for part in opened:
            part.close()

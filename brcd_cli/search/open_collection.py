"""``open_collection``: the one way to get a searchable collection from what a user names.

    one codes file                the indexed collection when a valid index lies beside it, else the flat one
    several codes files           a sharded collection of those, in the order given
    a Milvus URI and a collection the Milvus collection brcd export milvus wrote

``use_index=False`` scans even where an index exists (the results are the
same; only the speed differs).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from ..errors import BrcdError
from .base import Collection
from .flat import FlatCodes
from .sharded import ShardedCollection

PathLike = Union[str, os.PathLike]


def open_codes_file(path: PathLike, use_index: bool = True, threads: Optional[int] = None,
                    log: Callable[[str], None] = lambda _: None) -> Collection:
    """One codes file, through its index when it has a valid one (and ``use_index``), else scanned."""
    from ..codes import read_codes
    from .indexed import open_indexed

    codes = read_codes(path)
    indexed = open_indexed(codes, log, threads) if use_index else None
    return indexed if indexed is not None else FlatCodes.of_file(codes, threads=threads)


def open_collection(source: Union[PathLike, Sequence[PathLike]], *, collection: Optional[str] = None,
                    use_index: bool = True, threads: Optional[int] = None,
                    log: Callable[[str], None] = lambda _: None) -> Collection:
    """The collection behind ``source`` (see the module docstring); close it, or use it as a context manager."""
    if collection is not None:
        from .milvus import MilvusCollection

        if not isinstance(source, (str, os.PathLike)):
            raise BrcdError("a Milvus collection is named by one URI")
        return MilvusCollection(os.fspath(source), collection)
    paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    if not paths:
        raise BrcdError("give at least one codes file")
    if len(paths) == 1:
        return open_codes_file(paths[0], use_index, threads, log)
    parts: list[Collection] = []
    try:
        for path in paths:
            parts.append(open_codes_file(path, use_index, threads, log))
        return ShardedCollection(parts)
    except BaseException:
        for part in parts:
            part.close()
        raise

"""Removing items from a codes file by id (``brcd remove``), atomically, the index and the record of files following.

The codes file is rewritten without the removed items (:func:`brcd_cli.codes.merge.splice_codes`
copies the runs between them), through the same staged commit as an update,
so a crash leaves the old file or the new one. Ids are matched as the bytes
the file stores, streamed in batches, so memory stays flat in the
collection's size whatever the number of items.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..codes import CodesFile, read_codes
from ..codes.merge import Run, splice_codes
from ..codes.partial import skipped_path
from ..codes.reader import release_pages
from ..codes.writer import encode_id
from ..errors import BrcdError
from .commit import STAGED_CODES, STAGED_SKIPPED, STAGED_TABLE, commit, finish_pending, staging_dir
from .stat_table import CodesIdentity, read_table, table_path, write_table

_BATCH = 1 << 16
_SHOWN = 5  # unknown ids named in the error


@dataclass
class RemoveResult:
    """How many items went, how many are left, and the ids that were not in the file."""

    path: Path
    removed: int
    count: int
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "removed": self.removed, "count": self.count, "missing": self.missing}


#: how brcd prints a byte of a file name that is not UTF-8 (\xe9; pipeline.display_id): always 0x80 or above
_SHOWN_BYTE = re.compile(rb"\\x([89a-fA-F][0-9a-fA-F])")


def id_forms(item_id: str) -> set[bytes]:
    """The stored ids that an id a user gives may stand for: itself, and, where it holds ``\\xNN`` escapes, the
    bytes they stand for. Why: brcd prints a non-UTF-8 file name's bytes as such escapes, and its help says ids
    are given as brcd prints them, so an id copied from its output must find its item."""
    raw = encode_id(item_id)
    return {raw, _SHOWN_BYTE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)}


def positions_of(codes: CodesFile, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """The sorted positions of every item whose id is one of ``ids`` (in any of its :func:`id_forms`), and the
    ids found nowhere."""
    wanted: dict[bytes, list[str]] = {}
    for item_id in ids:
        for raw in id_forms(item_id):
            wanted.setdefault(raw, []).append(item_id)
    lengths_wanted = np.fromiter({len(raw) for raw in wanted}, np.uint64)
    found: list[int] = []
    seen: set[bytes] = set()
    for start in range(0, codes.count, _BATCH):
        lengths, blob = codes.ids.raw(start, min(start + _BATCH, codes.count))
        ends = np.cumsum(lengths).tolist()
        raw = bytes(blob)
        release_pages(blob)
        for j in np.flatnonzero(np.isin(lengths, lengths_wanted)).tolist():  # only ids of a wanted length can match
            candidate = raw[ends[j] - int(lengths[j]) : ends[j]]
            if candidate in wanted:
                found.append(start + j)
                seen.add(candidate)
    found_ids = {item_id for raw in seen for item_id in wanted[raw]}
    missing = list(dict.fromkeys(item_id for item_id in ids if item_id not in found_ids))
    return np.asarray(found, np.int64), missing


def remove_items(codes_path: Path, ids: Sequence[str], ignore_missing: bool = False,
                 log: Callable[[str], None] = lambda _: None) -> RemoveResult:
    """Remove the items with these ids from ``codes_path`` (every item of a repeated id); see the module docstring.

    An id that is in no item is an error naming it (nothing is changed),
    unless ``ignore_missing``; then the others are removed and the missing ones listed in the result.
    """
    path = Path(codes_path)
    finish_pending(path, log)
    staging = staging_dir(path)
    with read_codes(path) as old:
        positions, missing = positions_of(old, ids)
        if missing and not ignore_missing:
            shown = ", ".join(repr(m) for m in missing[:_SHOWN]) + (f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else "")
            raise BrcdError(f"{len(missing)} of the {len(set(ids))} ids are not in {path}: {shown}; nothing was removed "
                            "(pass --ignore-missing to remove the others)")
        if not len(positions):
            return RemoveResult(path, 0, old.count, missing)
        runs = list(_between(positions, old.count))
        table, _ = read_table(table_path(path), CodesIdentity.of(old))
        staging.mkdir(parents=True, exist_ok=True)
        count = splice_codes([old], runs, staging / STAGED_CODES, overwrite=True)
        if table is not None:
            with read_codes(staging / STAGED_CODES) as merged:  # the unreadable files stay, as the skipped list does
                write_table(staging / STAGED_TABLE, (table.records[r.start : r.stop] for r in runs),
                            CodesIdentity.of(merged), table.unreadable)
        if skipped_path(path).exists():  # the list of unreadable images stays as it was
            shutil.copyfile(skipped_path(path), staging / STAGED_SKIPPED)
    commit(path, log)
    return RemoveResult(path, len(positions), count, missing)


def _between(positions: np.ndarray, count: int) -> Iterator[Run]:
    """The runs of items that are not at ``positions`` (sorted, distinct)."""
    start = 0
    for p in positions.tolist():
        if p > start:
            yield Run(0, start, p)
        start = p + 1
    if start < count:
        yield Run(0, start, count)

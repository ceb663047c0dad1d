"""Near-duplicate images of a codes file: pairs within a Hamming radius, grouped (``brcd duplicates``).

Every item is a query against the whole collection through the collection's
own radius search (:meth:`brcd_cli.search.base.Collection.range_search`), in
batches, so the pairs come from the same exact search as ``brcd search
--radius`` and never from a Python loop over all pairs. The multi-index
hashing index answers when it suits the radius: the one beside the codes
file (``brcd index``) when it is valid, else one built in memory for the
run (a fraction of a second per million codes; nothing is written).

Pairs are grouped into connected components (single linkage): A ~ B and
B ~ C put A, B and C in one group even when A and C are farther apart than
the radius, which is what a person reviewing near-duplicates wants to see
together. Each group's **reference** is its earliest item in the codes
file's order (for a folder, the first path in sorted order), so the report
is the same on every run; every member is listed with its Hamming distance
to the reference, and the group's pairs within the radius stay available.
"""
from __future__ import annotations

import csv
import html
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .atomic import atomic_write_text
from .codes import CodesFile, read_codes
from .errors import BrcdError
from .search.base import CollectionBase, check_radius
from .search.flat import FlatCodes

QUERY_BATCH = 1 << 15  # items searched per range_search call


@dataclass(frozen=True)
class Member:
    """One item of a group: its position in the codes file, its id, and its Hamming distance to the reference."""

    index: int
    id: str
    distance: int

    def to_dict(self) -> dict:
        return {"index": self.index, "id": self.id, "distance": self.distance}


@dataclass(frozen=True)
class DuplicateGroup:
    """Items connected by pairs within the radius; ``members[0]`` is the reference (the earliest item)."""

    members: list[Member]

    @property
    def reference(self) -> Member:
        return self.members[0]

    def to_dict(self) -> dict:
        return {"reference": self.reference.to_dict(), "size": len(self.members),
                "members": [m.to_dict() for m in self.members]}


@dataclass
class DuplicateReport:
    """Every pair within ``radius`` (i < j, by position) and the groups they form."""

    codes: str
    radius: int
    items: int
    pairs: np.ndarray  # int64 (p, 2)
    pair_distances: np.ndarray  # int32 (p,)
    groups: list[DuplicateGroup] = field(default_factory=list)
    searched_by: str = "scan"
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"codes": self.codes, "radius": self.radius, "items": self.items, "pairs": int(len(self.pairs)),
                "groups": [g.to_dict() for g in self.groups], "duplicates": sum(len(g.members) - 1 for g in self.groups),
                "searched_by": self.searched_by, "seconds": round(self.seconds, 3)}


def searchable(codes: CodesFile, radius: int, threads: Optional[int] = None,
               log: Callable[[str], None] = lambda _: None) -> CollectionBase:
    """The collection to search ``codes`` with: through its index file when valid, else through an index built in
    memory when an index suits the radius, else the flat scan. Every choice gives the same pairs."""
    from .kernels import mih
    from .search.indexed import IndexedCodes, index_suits, open_indexed
    from .search.mih import IndexFile, IndexInfo

    found = open_indexed(codes, log, threads)
    if found is not None:
        return found
    m = mih.default_substrings(codes.count, codes.bits)
    if codes.count == 0 or not index_suits(codes.count, codes.bits, m, radius=radius):
        return FlatCodes.of_file(codes, threads=threads)
    tables = mih.build_tables(np.asarray(codes.codes), m)
    info = IndexInfo(Path(f"{codes.path} (index in memory)"), codes.bits, len(tables), codes.count, b"",
                     bytes.fromhex(codes.producer), bytes.fromhex(codes.code_space), 0)
    return IndexedCodes(codes, IndexFile(info, mih.MultiIndex(codes.bits, tables)), threads=threads)


def find_pairs(collection: CollectionBase, codes: np.ndarray, radius: int,
               batch: int = QUERY_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i, j), i < j, of items within ``radius``, from range searches of the items themselves."""
    pairs, distances = [], []
    for start in range(0, len(codes), batch):
        stop = min(start + batch, len(codes))
        found = collection.range_search(np.asarray(codes[start:stop]), radius)
        rows = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(found.lims))
        later = found.indices > rows  # each pair once, and never an item with itself
        pairs.append(np.stack([rows[later], found.indices[later]], axis=1))
        distances.append(found.distances[later])
    if not pairs:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int32)
    return np.concatenate(pairs), np.concatenate(distances).astype(np.int32)


def components(count: int, pairs: np.ndarray) -> list[np.ndarray]:
    """The connected components of more than one item, each as sorted positions, ordered by their first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(pairs):
        return []
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    touched = np.unique(pairs)
    order = np.lexsort((touched, labels[touched]))
    members = touched[order]
    cuts = np.flatnonzero(np.diff(labels[members])) + 1
    groups = [g for g in np.split(members, cuts) if len(g) > 1]
    return sorted(groups, key=lambda g: int(g[0]))


def hamming_to(codes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Hamming distance of each packed code to one packed code."""
    return np.unpackbits(np.bitwise_xor(codes, reference[None, :]), axis=1).sum(axis=1).astype(np.int32)


def find_duplicates(path: Path, radius: int, threads: Optional[int] = None, batch: int = QUERY_BATCH,
                    log: Callable[[str], None] = lambda _: None) -> DuplicateReport:
    """Pairs within ``radius`` among the items of a codes file and the groups they form (see the module docstring).

    ``threads``: threads of each batch's search (default: every core this process may use).
    """
    from .kernels.dispatch import default_threads

    radius = check_radius(radius)
    threads = threads if threads is not None else default_threads()
    started = time.perf_counter()
    with read_codes(path) as codes:
        collection = searchable(codes, radius, threads, log)
        try:
            pairs, distances = find_pairs(collection, codes.codes, radius, batch)
            groups = []
            for positions in components(codes.count, pairs):
                block = np.asarray(codes.codes[positions])
                dist = hamming_to(block, block[0])
                groups.append(DuplicateGroup([Member(int(p), codes.ids[int(p)], int(d))
                                              for p, d in zip(positions.tolist(), dist.tolist())]))
            return DuplicateReport(os.fspath(path), radius, codes.count, pairs, distances, groups,
                                   "index" if type(collection).__name__ == "IndexedCodes" else "scan",
                                   time.perf_counter() - started)
        finally:
            collection.close()


# -- reports ---------------------------------------------------------------------------------------------

def csv_rows(report: DuplicateReport) -> Iterator[list]:
    """One row per member: group number (from 1), position, id, whether it is the reference, distance to it."""
    yield ["group", "index", "id", "reference", "distance"]
    for number, group in enumerate(report.groups, start=1):
        for member in group.members:
            yield [number, member.index, member.id, int(member is group.reference), member.distance]


def to_csv(report: DuplicateReport) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(csv_rows(report))
    return buffer.getvalue()


def text_lines(report: DuplicateReport, display: Callable[[str], str] = str) -> list[str]:
    lines = [f"{len(report.groups)} groups of near-duplicates within radius {report.radius} among {report.items} items "
             f"({len(report.pairs)} pairs, {report.seconds:.2f} s)"]
    for number, group in enumerate(report.groups, start=1):
        lines.append(f"group {number}: {len(group.members)} images, reference {display(group.reference.id)}")
        lines += [f"  d={m.distance:<3} {display(m.id)}" for m in group.members[1:]]
    return lines


def write_duplicates_sheet(out: Path, report: DuplicateReport, codes_path: Path, roots: Sequence[Path] = (),
                           max_groups: int = 1000) -> Path:
    """A self-contained HTML page: each group's thumbnails side by side, the reference first, for review."""
    from .errors import DataError
    from .pipeline import display_id
    from .results_sheet import _STYLE, _figure
    from .search import open_collection
    from .serve.images import ItemImages

    title = (f"brcd duplicates: {len(report.groups)} groups within radius {report.radius} "
             f"among {report.items} items of {report.codes}")
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if len(report.groups) > max_groups:
        parts.append(f"<p class='none'>showing the first {max_groups} groups; the JSON and CSV reports list all</p>")
    if not report.groups:
        parts.append("<p class='none'>no near-duplicates found</p>")
    with open_collection(codes_path, use_index=False) as collection:
        images = ItemImages.beside(collection, codes_path, roots)
        for number, group in enumerate(report.groups[:max_groups], start=1):
            parts.append(f"<section class='query'><p><b>group {number}</b> · {len(group.members)} images</p><div class='row'>")
            for member in group.members:
                try:
                    jpeg = images.thumbnail(member.index)
                except DataError:
                    jpeg = None
                label = "<b>reference</b>" if member is group.reference else f"d = {member.distance}"
                parts.append(_figure(jpeg, f"{label}<br>{html.escape(display_id(member.id))}",
                                     "q" if member is group.reference else ""))
            parts.append("</div></section>")
    parts.append("</body></html>")
    atomic_write_text(out, "".join(parts))
    return out


def check_output(path: Optional[Path]) -> None:
    """An output that is a folder is the user's mistake: say so before the search."""
    if path is not None and Path(path).is_dir():
        raise BrcdError(f"{path} is a folder; give a file name for the sheet")

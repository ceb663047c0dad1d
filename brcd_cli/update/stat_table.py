"""The record of the files behind a codes file: what each item's file looked like when its code was made.

``brcd encode --update`` encodes again only the images that are new or changed.
It tells a change by each file's stat signature (size, modification time and
status-change time, in nanoseconds), not by a hash of its content: a content
hash means reading every byte of every image, which for camera JPEGs costs
about as much as the draft decode of a full encode, so an update could never
be much faster than encoding anew; a stat costs microseconds per file. The
status-change time (ctime) is there because tools that copy or restore files
(``cp -p``, ``rsync -t``, ``tar``) set the modification time back, but nothing
can set the ctime; a chmod or a new hard link also moves it, which only costs
one unneeded encode of that image. A file changed while (or shortly before)
it was being encoded could look unchanged later if the change fell within
the file system's timestamp granularity, so such an item is recorded as
unknown (:data:`UNKNOWN`, never equal to a real stat) and is encoded again by
the next update.

The record is a side file, ``CODES.stat``, one 24-byte record per item in the
codes file's order (docs/codes-format.md describes its bytes). It names the
codes file it describes (count, the crc32 of its ids and metadata, the sha256
of its codes), so a record of another version of the file is never trusted:
an update without a valid record encodes every image once and records them.
Losing it costs time, never correctness, which is why it is not part of the
codes file itself and the codes format stays as every reader knows it.

Version 2 adds the files that could not be read (the items of
``CODES.skipped.tsv``) with their signatures, after the records: an update
leaves such a file alone while it is unchanged, instead of decoding it (and
counting it as new) every time, and tries it again once it changes.
"""
from __future__ import annotations

import hashlib
import os
import stat
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from ..atomic import AtomicFile
from ..codes import CodesFile
from ..codes.reader import release_pages

MAGIC = b"BRCDSTAT"
VERSION = 2
#: the versions :func:`read_table` reads (version 1 has no section of unreadable files)
READS = (1, 2)
SUFFIX = ".stat"
RECORD = np.dtype([("size", "<u8"), ("mtime_ns", "<i8"), ("ctime_ns", "<i8")])
#: the record of an item whose file could not be stat'ed, or that may have changed while it was read
UNKNOWN = np.array((np.iinfo(np.uint64).max, -1, -1), dtype=RECORD)
#: a file modified this close to (or after) the start of the encode that read it is recorded as UNKNOWN:
#: enough for the coarsest common timestamps (FAT's 2 s) and for small clock skews of network file systems
RACY_SECONDS = 2.0
# magic, version, record size, count, ids crc32 (the codes file's tail crc), data crc32, codes sha256, header crc32
_HEADER = struct.Struct("<8s2IQ2I32sI4x")
HEADER_SIZE = _HEADER.size  # 72, so the records that follow are 8-byte aligned
_BLOCK = 1 << 16
_HASH_ROWS = 1 << 20  # codes hashed per step


def table_path(codes_path: str | os.PathLike[str]) -> Path:
    """Where the record of the files behind a codes file lives."""
    p = Path(codes_path)
    return p.with_name(p.name + SUFFIX)


@dataclass(frozen=True)
class CodesIdentity:
    """What names one version of a codes file: its count, the crc32 of its ids and metadata, the sha256 of its codes."""

    count: int
    tail_crc32: int
    codes_sha256: bytes

    @classmethod
    def of(cls, codes: CodesFile) -> CodesIdentity:
        """Hashes the codes in blocks, releasing each (the same digest as the index's ``codes_digest``)."""
        digest = hashlib.sha256()
        for start in range(0, codes.count, _HASH_ROWS):
            block = codes.codes[start : start + _HASH_ROWS]
            digest.update(memoryview(np.ascontiguousarray(block)).cast("B"))
            release_pages(block)
        return cls(codes.count, codes.tail_crc32, digest.digest())


def stat_files(files: Sequence[Path]) -> np.ndarray:
    """The current stat signature of every file (following symbolic links, as decoding does); UNKNOWN where
    there is no regular file to stat."""
    out = np.empty(len(files), dtype=RECORD)
    for i, path in enumerate(files):
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            out[i] = UNKNOWN
            continue
        out[i] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns) if stat.S_ISREG(st.st_mode) else UNKNOWN
    return out


def trusted(records: np.ndarray, since_ns: int) -> np.ndarray:
    """``records`` with every file changed at or after ``since_ns`` (less :data:`RACY_SECONDS`) set to UNKNOWN.

    ``since_ns`` is when the encode that read the files began: a file changed
    after that may have been read before its change.
    """
    limit = since_ns - int(RACY_SECONDS * 1e9)
    racy = (records["mtime_ns"] >= limit) | (records["ctime_ns"] >= limit)
    out = records.copy()
    out[racy] = UNKNOWN
    return out


def unchanged(recorded: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Which items' files have the signature recorded for them (an UNKNOWN record never matches)."""
    known = recorded["size"] != UNKNOWN["size"]
    return known & (recorded == current)


def write_table(path: Path, records: Iterable[np.ndarray], identity: CodesIdentity,
                unreadable: Mapping[str, np.ndarray] = {}) -> Path:  # noqa: B006 - read only
    """Write the record of ``identity``'s files to ``path`` atomically, from blocks of records in codes order,
    then the signatures of the files that could not be read, by id."""
    count, crc = 0, 0
    with AtomicFile(path, "wb") as out:
        out.file.write(bytes(HEADER_SIZE))
        for block in records:
            raw = np.ascontiguousarray(block, dtype=RECORD).tobytes()
            out.file.write(raw)
            crc = zlib.crc32(raw, crc)
            count += len(block)
        if count != identity.count:
            raise ValueError(f"{count} file records for a codes file of {identity.count} items")
        section = _unreadable_section(unreadable)
        out.file.write(section)
        crc = zlib.crc32(section, crc)
        head = _HEADER.pack(MAGIC, VERSION, RECORD.itemsize, count, identity.tail_crc32, crc, identity.codes_sha256, 0)
        out.file.seek(0)
        out.file.write(head[:-8] + struct.pack("<I", zlib.crc32(head[:-8])) + bytes(4))
    return path


@dataclass(frozen=True)
class FileRecord:
    """A whole record of one codes file's files, as :func:`read_table` found it."""

    records: np.ndarray  # RECORD, memory-mapped, in codes order
    #: the files that could not be read when the codes were made, id -> signature then (none in version 1)
    unreadable: dict[str, np.ndarray]


def read_table(path: Path, identity: CodesIdentity) -> tuple[Optional[FileRecord], str]:
    """The record if ``path`` is a whole record of exactly that codes file; else None and why not, in words
    for a note."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(HEADER_SIZE)
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        return None, "there is no record of its files"
    except OSError as exc:
        return None, f"its record of files cannot be read ({exc.strerror or exc})"
    if len(raw) < HEADER_SIZE or raw[:8] != MAGIC:
        return None, f"{path} is not a brcd record of files"
    magic, version, record_size, count, ids_crc, data_crc, sha, header_crc = _HEADER.unpack(raw)
    if version not in READS or record_size != RECORD.itemsize:
        return None, f"{path} has format version {version}, which this brcd does not read"
    end = HEADER_SIZE + count * RECORD.itemsize
    if zlib.crc32(raw[:-8]) != header_crc or (size != end if version == 1 else size < end + 8):
        return None, f"{path} is damaged"
    if (count, ids_crc, sha) != (identity.count, identity.tail_crc32, identity.codes_sha256):
        return None, f"{path} describes another version of the codes file"
    records = (np.memmap(path, dtype=RECORD, mode="r", offset=HEADER_SIZE, shape=(count,)) if count
               else np.empty(0, RECORD))
    crc = 0
    for start in range(0, count, _BLOCK):
        crc = zlib.crc32(records[start : start + _BLOCK].tobytes(), crc)
    section = b""
    if version > 1:
        try:
            with open(path, "rb") as fh:
                fh.seek(end)
                section = fh.read()
        except OSError as exc:
            return None, f"its record of files cannot be read ({exc.strerror or exc})"
        crc = zlib.crc32(section, crc)
    if crc != data_crc:
        return None, f"{path} is damaged"
    try:
        unreadable = _parse_unreadable(section) if section else {}
    except (struct.error, ValueError):
        return None, f"{path} is damaged"
    return FileRecord(records, unreadable), ""


def _parse_unreadable(section: bytes) -> dict[str, np.ndarray]:
    """The id -> signature map :func:`_unreadable_section` wrote."""
    (n,) = struct.unpack_from("<Q", section)
    signatures = np.frombuffer(section, dtype=RECORD, count=n, offset=8)
    out, pos = {}, 8 + n * RECORD.itemsize
    for i in range(n):
        (length,) = struct.unpack_from("<I", section, pos)
        out[section[pos + 4 : pos + 4 + length].decode("utf-8", "surrogateescape")] = signatures[i]
        pos += 4 + length
    return out


def _unreadable_section(unreadable: Mapping[str, np.ndarray]) -> bytes:
    """n (u64), n signatures, then n ids as (u32 length, UTF-8 bytes with surrogateescape)."""
    ids = [item_id.encode("utf-8", "surrogateescape") for item_id in unreadable]
    signatures = np.array([tuple(unreadable[item_id].tolist()) for item_id in unreadable], dtype=RECORD)
    return (struct.pack("<Q", len(ids)) + signatures.tobytes()
            + b"".join(struct.pack("<I", len(raw)) + raw for raw in ids))


def now_ns() -> int:
    """The clock that file times are compared with."""
    return time.time_ns()

"""Reading codes files: validated up front, then served lazily from a memory map.

Everything cheap to check (header, sizes, ids checksum, offsets table) is
checked when the file is opened, so later code can trust it; the codes
themselves are only mapped, never read whole, so opening a multi-gigabyte
collection costs little memory.
"""
from __future__ import annotations

import json
import mmap
import os
import stat
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, overload

import numpy as np

from .header import HEADER_SIZE, Header, file_error, unpack_header

_CRC_BLOCK = 1 << 24  # checksum the tail in 16 MiB slices so the whole map is never copied
_ID_BATCH = 4096  # ids decoded per slice of the blob when iterating


def release_pages(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped array from this process's resident memory once they have been read.

    Streaming a large codes file through its map (a checksum, a copy) would
    otherwise leave every page it touched counted in the process's memory: at
    100M items that is gigabytes for one pass. The pages are clean page cache,
    so nothing is lost; a later access simply reads them again. Arrays that are
    not memory-mapped are left alone.
    """
    mapped = getattr(array, "_mmap", None)
    if mapped is None or not hasattr(mapped, "madvise") or array.nbytes == 0:
        return
    start = array.ctypes.data - np.frombuffer(mapped, np.uint8).ctypes.data
    first = start - start % mmap.PAGESIZE
    mapped.madvise(mmap.MADV_DONTNEED, first, start + array.nbytes - first)


def decode_id(raw: bytes) -> str:
    """Inverse of the writer's encoding: undecodable bytes come back as escaped surrogates."""
    return raw.decode("utf-8", "surrogateescape")


class CodeIds(Sequence[str]):
    """The ids of a codes file, decoded only when accessed."""

    def __init__(self, offsets: np.ndarray, blob: np.ndarray) -> None:
        self._offsets = offsets
        self._blob = blob

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        position = range(len(self))[index]  # normalises negatives, raises IndexError
        start, end = int(self._offsets[position]), int(self._offsets[position + 1])
        return decode_id(bytes(self._blob[start:end]))

    def raw(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids ``start..stop-1`` still encoded: each one's length in bytes (u64), and their bytes back to back.

        What copying items into another codes file needs (``CodesWriter.append_encoded``): nothing is decoded.
        The offsets read are released at once; a streaming caller releases the bytes with :func:`release_pages`
        once it has used them.
        """
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"ids {start}..{stop} lie outside 0..{len(self)}")
        table = self._offsets[start : stop + 1]
        bounds = np.array(table, dtype=np.uint64)
        release_pages(table)
        return np.diff(bounds), self._blob[int(bounds[0]) : int(bounds[-1])]

    def __iter__(self) -> Iterator[str]:
        for first in range(0, len(self), _ID_BATCH):
            table = self._offsets[first : first + _ID_BATCH + 1]
            bounds = np.array(table, dtype=np.int64)
            blob = self._blob[bounds[0] : bounds[-1]]
            raw = bytes(blob)
            release_pages(table)
            release_pages(blob)
            relative = bounds - bounds[0]
            for start, end in zip(relative[:-1].tolist(), relative[1:].tolist(), strict=True):
                yield decode_id(raw[start:end])


class CodesFile:
    """An open, validated codes file.

    ``codes`` is a read-only ``np.memmap`` of shape (count, bytes_per_code);
    ``ids`` decodes on access. :meth:`close` drops this object's references to
    the mapping; the operating system unmaps it once arrays sliced from
    ``codes`` are gone too (numpy cannot revoke views it has handed out).
    """

    def __init__(self, path: Path, header: Header, mapping: np.memmap, metadata: dict[str, Any]) -> None:
        self.path = path
        self.version = header.version
        self.bits = header.bits
        self.count = header.count
        self.bytes_per_code = header.bytes_per_code
        self.producer = header.producer.hex()
        self.code_space = header.code_space.hex()
        #: crc32 of the ids section and metadata, as the header stores it: names the ids without reading them
        self.tail_crc32 = header.tail_crc32
        self.metadata = metadata
        table_end = header.ids_offset + 8 * (header.count + 1)
        self._codes: np.memmap | None = mapping[header.codes_offset : header.codes_end].reshape(header.count, header.bytes_per_code)
        self._ids: CodeIds | None = CodeIds(
            mapping[header.ids_offset : table_end].view("<u8"),
            mapping[table_end : header.ids_offset + header.ids_length],
        )

    @property
    def codes(self) -> np.memmap:
        if self._codes is None:
            raise ValueError(f"codes file {os.fspath(self.path)!r} is closed")
        return self._codes

    @property
    def ids(self) -> CodeIds:
        if self._ids is None:
            raise ValueError(f"codes file {os.fspath(self.path)!r} is closed")
        return self._ids

    def close(self) -> None:
        self._codes = None
        self._ids = None

    def __enter__(self) -> CodesFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CodesFile({os.fspath(self.path)!r}, bits={self.bits}, count={self.count}, code_space={self.code_space[:12]}...)"


def read_codes(path: str | os.PathLike[str]) -> CodesFile:
    """Open and validate a codes file; raises :class:`CodesFileError` naming the file and the problem."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise file_error(path, "does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        raise file_error(path, "is not a regular file")
    with open(path, "rb") as handle:
        header = unpack_header(path, handle.read(HEADER_SIZE))
        size = os.fstat(handle.fileno()).st_size
        _check_length(path, header, size)
        # Map through the handle we validated, so a concurrent rename cannot swap the file.
        mapping = np.memmap(handle, dtype=np.uint8, mode="r", shape=(size,))
    _check_tail(path, header, mapping)
    return CodesFile(path, header, mapping, _parse_metadata(path, mapping[header.file_size - header.metadata_length :]))


def _check_length(path: Path, header: Header, size: int) -> None:
    """Compare the real size with the one the header declares, naming the short section."""
    sections = (
        ("codes section", header.codes_end),
        ("ids section", header.ids_offset + header.ids_length),
        ("metadata section", header.file_size),
    )
    for name, end in sections:
        if size < end:
            raise file_error(path, f"is truncated: the header declares {end} bytes up to the end of the {name}, but the file has {size}")
    if size > header.file_size:
        raise file_error(path, f"has {size - header.file_size} bytes of trailing garbage after its declared end at byte {header.file_size}")


def _check_tail(path: Path, header: Header, mapping: np.memmap) -> None:
    """Verify the ids checksum and that the offsets table describes the blob exactly."""
    crc = 0
    for start in range(header.codes_end, header.file_size, _CRC_BLOCK):
        block = mapping[start : min(start + _CRC_BLOCK, header.file_size)]
        crc = zlib.crc32(block, crc)
        release_pages(block)
    if crc != header.tail_crc32:
        raise file_error(path, "has a corrupt ids section (ids checksum mismatch)")
    table_end = header.ids_offset + 8 * (header.count + 1)
    offsets = mapping[header.ids_offset : table_end].view("<u8")
    blob_length = header.ids_length - 8 * (header.count + 1)
    if offsets[0] != 0 or offsets[-1] != blob_length or not _non_decreasing(offsets):
        raise file_error(path, "has inconsistent sizes: its ids offsets table does not describe its ids blob")


def _non_decreasing(offsets: np.ndarray) -> bool:
    """Checked in slices (overlapping by one), so a table of 100M offsets costs no 100M-entry temporaries."""
    step = _CRC_BLOCK // 8
    for start in range(0, max(len(offsets) - 1, 0), step):
        part = offsets[start : start + step + 1]
        ordered = not np.any(part[1:] < part[:-1])
        release_pages(part)
        if not ordered:
            return False
    return True


def _parse_metadata(path: Path, raw: np.ndarray) -> dict[str, Any]:
    if raw.size == 0:
        return {}
    try:
        metadata = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise file_error(path, "has metadata that is not valid UTF-8 JSON") from None
    if not isinstance(metadata, dict):
        raise file_error(path, "has metadata that is not a JSON object")
    return metadata

"""Writing codes files: streamed to a temp file, then renamed into place.

Codes go straight to disk as they arrive, so a collection larger than memory
can be encoded. The ids cannot: their offsets table precedes them and its size
is known only at the end. So they stream to two anonymous side files beside
the target (the ids' bytes, and each id's end offset) and are copied after
the codes when the file closes: memory stays flat whatever the count (writing
20M ids once held 4.1 GB of Python lists), at the cost of one sequential copy
of the ids. The header is written last: until then the temp file starts with
zeros, and until the rename the destination is untouched, so a crash leaves
either the old file or no file, never a half file that looks whole (the side
files are unlinked from the start, so a crash leaves nothing of them either).
"""
from __future__ import annotations

import dataclasses
import json
import operator
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from ..atomic import AtomicFile
from .header import FINGERPRINT_BYTES, HEADER_SIZE, Header, file_error

_COPY_BLOCK = 1 << 23  # the side files are copied into the codes file in 8 MiB blocks


def encode_id(item_id: str | os.PathLike[str]) -> bytes:
    """UTF-8 with surrogateescape, so names os.listdir decoded from non-UTF-8 bytes round-trip.

    The codec is fixed rather than taken from ``os.fsencode`` so a file means
    the same on every platform.
    """
    text = os.fspath(item_id)
    if not isinstance(text, str):
        raise TypeError(f"ids must be str or os.PathLike[str], got {type(text).__name__}")
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ValueError(f"id {text!r} holds a lone surrogate that is not an escaped byte, so it cannot be stored") from exc


def parse_fingerprint(name: str, value: str) -> bytes:
    """Turn a 64-character hex digest into the 32 raw bytes the header stores."""
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != FINGERPRINT_BYTES:
        raise ValueError(f"{name} must be {2 * FINGERPRINT_BYTES} hex characters (a sha256 digest), got {value!r}")
    return raw


def encode_metadata(metadata: dict[str, Any] | None) -> bytes:
    """Compact, key-sorted JSON so equal metadata gives byte-identical files; empty means absent."""
    if metadata is None or metadata == {}:
        return b""
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class CodesWriter:
    """Stream packed codes and their ids into a new codes file.

    Use as a context manager: leaving the block normally finalises the file,
    leaving it with an exception removes the temp file and keeps any earlier
    file at ``path`` untouched. Without ``with``, call :meth:`close` (or
    :meth:`abort`) yourself.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        bits: int,
        producer: str,
        code_space: str,
        overwrite: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.bits = _code_length(bits)
        self.path = Path(path)
        self.overwrite = overwrite
        self._producer = parse_fingerprint("producer", producer)
        self._code_space = parse_fingerprint("code_space", code_space)
        self._metadata = encode_metadata(metadata)
        self._refuse_existing()
        self._count = 0
        self._blob_length = 0
        self._target = AtomicFile(self.path, "wb")
        self._file: IO[bytes] | None = self._target.file
        try:
            # Beside the target, so they need no other file system's space; anonymous, so nothing is left behind.
            self._blob: IO[bytes] = tempfile.TemporaryFile(dir=self.path.parent)
            self._ends: IO[bytes] = tempfile.TemporaryFile(dir=self.path.parent)
        except BaseException:
            self._target.abort()
            raise
        self._file.write(bytes(HEADER_SIZE))  # placeholder: zeros are never a valid header

    @property
    def count(self) -> int:
        """Codes appended so far."""
        return self._count

    def append(self, packed: np.ndarray, ids: Sequence[str | os.PathLike[str]]) -> None:
        """Write a batch of packed codes (uint8, shape (b, bits/8)) and their ids."""
        handle = self._open_file()
        self._check_codes(packed)
        if len(ids) != packed.shape[0]:
            raise ValueError(f"got {packed.shape[0]} codes but {len(ids)} ids")
        encoded = [encode_id(item_id) for item_id in ids]
        lengths = np.fromiter(map(len, encoded), dtype="<u8", count=len(encoded))
        handle.write(np.ascontiguousarray(packed).data)
        self._append_ids(lengths, b"".join(encoded))

    def append_encoded(self, packed: np.ndarray, lengths: np.ndarray, blob: bytes | memoryview | np.ndarray) -> None:
        """Write codes whose ids are already encoded: ``lengths[i]`` bytes of ``blob`` per id, back to back.

        What copying items between codes files uses (:func:`brcd_cli.codes.merge.splice_codes`):
        the ids' bytes move as they are, without being decoded and encoded again.
        """
        handle = self._open_file()
        self._check_codes(packed)
        lengths = np.asarray(lengths, dtype="<u8")
        if lengths.ndim != 1 or len(lengths) != packed.shape[0]:
            raise ValueError(f"got {packed.shape[0]} codes but {lengths.size} id lengths")
        raw = memoryview(np.ascontiguousarray(blob, dtype=np.uint8) if isinstance(blob, np.ndarray) else blob).cast("B")
        if int(lengths.sum()) != raw.nbytes:
            raise ValueError(f"the id lengths add up to {int(lengths.sum())} bytes but the ids hold {raw.nbytes}")
        handle.write(np.ascontiguousarray(packed).data)
        self._append_ids(lengths, raw)

    def _check_codes(self, packed: np.ndarray) -> None:
        if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 2:
            raise ValueError("packed codes must be a 2-D uint8 numpy array (np.packbits(x > 0, axis=1, bitorder='little'))")
        if packed.shape[1] != self.bits // 8:
            raise ValueError(f"packed codes have {packed.shape[1]} bytes per code but {self.bits} bits need {self.bits // 8}")

    def _append_ids(self, lengths: np.ndarray, raw: bytes | memoryview) -> None:
        """Stream ids to the side files: their bytes, and where each ends in the blob."""
        ends = np.cumsum(lengths, dtype="<u8")
        ends += np.uint64(self._blob_length)
        self._ends.write(ends.data)
        self._blob.write(raw)
        if len(ends):
            self._blob_length = int(ends[-1])
        self._count += len(lengths)

    def close(self) -> None:
        """Write ids and header, make the file durable, and rename it into place.

        Closing twice is harmless, like closing a file twice.
        """
        if self._file is None:
            return
        handle = self._file
        try:
            header = self._write_tail(handle)
            handle.seek(0)
            handle.write(header.pack())
        except BaseException:
            self.abort()
            raise
        self._file = None
        self._close_side_files()
        self._target.commit(check=self._refuse_existing)  # someone may have created it while we were writing

    def abort(self) -> None:
        """Drop the temp file; the destination keeps whatever it had before."""
        self._file = None
        self._close_side_files()
        self._target.abort()

    def _close_side_files(self) -> None:
        self._blob.close()
        self._ends.close()

    def __enter__(self) -> CodesWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open_file(self) -> IO[bytes]:
        if self._file is None:
            raise ValueError(f"codes writer for {os.fspath(self.path)!r} is already closed")
        return self._file

    def _refuse_existing(self) -> None:
        if not self.overwrite and os.path.lexists(self.path):
            raise file_error(self.path, "already exists; pass overwrite=True to replace it")

    def _write_tail(self, handle: IO[bytes]) -> Header:
        """Write alignment padding, the ids section and metadata; return the matching header."""
        header = Header(
            bits=self.bits,
            count=self._count,
            ids_length=8 * (self._count + 1) + self._blob_length,
            metadata_length=len(self._metadata),
            producer=self._producer,
            code_space=self._code_space,
            tail_crc32=0,
        )
        crc = 0
        # padding, offsets[0] = 0, then the ends (offsets[1:]), the ids' bytes and the metadata
        for chunk in _chunks(bytes(header.ids_offset - header.codes_end + 8), self._ends, self._blob, self._metadata):
            handle.write(chunk)
            crc = zlib.crc32(chunk, crc)
        return dataclasses.replace(header, tail_crc32=crc)


def _chunks(*parts: bytes | IO[bytes]):
    """The bytes of each part in turn: a bytes object whole, a side file from its start in blocks."""
    for part in parts:
        if isinstance(part, bytes):
            yield part
            continue
        part.flush()
        part.seek(0)
        while block := part.read(_COPY_BLOCK):
            yield block


def _code_length(bits: int) -> int:
    """Accept any integer type (numpy ints from configs included) but only multiples of 8."""
    try:
        value = operator.index(bits)
    except TypeError:
        value = 0
    if value <= 0 or value % 8:
        raise ValueError(f"bits must be a positive multiple of 8, got {bits!r}")
    return value


def write_codes(
    path: str | os.PathLike[str],
    packed: np.ndarray,
    ids: Sequence[str | os.PathLike[str]],
    bits: int,
    producer: str,
    code_space: str,
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write a whole codes file at once; byte-identical to streaming the same data."""
    with CodesWriter(path, bits, producer, code_space, overwrite=overwrite, metadata=metadata) as writer:
        writer.append(packed, ids)

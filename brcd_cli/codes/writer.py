"""Writing codes files: streamed to a temp file, then renamed into place.

Codes go straight to disk as they arrive, so a collection larger than memory
can be encoded; only the ids are held until the end because their offsets
table precedes them. The header is written last: until then the temp file
starts with zeros, and until the rename the destination is untouched, so a
crash leaves either the old file or no file, never a half file that looks whole.
"""
from __future__ import annotations

import dataclasses
import json
import operator
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from ..atomic import AtomicFile
from .header import FINGERPRINT_BYTES, HEADER_SIZE, Header, file_error


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
        self._ids: list[bytes] = []
        self._target = AtomicFile(self.path, "wb")
        self._file: IO[bytes] | None = self._target.file
        self._file.write(bytes(HEADER_SIZE))  # placeholder: zeros are never a valid header

    @property
    def count(self) -> int:
        """Codes appended so far."""
        return len(self._ids)

    def append(self, packed: np.ndarray, ids: Sequence[str | os.PathLike[str]]) -> None:
        """Write a batch of packed codes (uint8, shape (b, bits/8)) and their ids."""
        handle = self._open_file()
        if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 2:
            raise ValueError("packed codes must be a 2-D uint8 numpy array (np.packbits(x > 0, axis=1, bitorder='little'))")
        if packed.shape[1] != self.bits // 8:
            raise ValueError(f"packed codes have {packed.shape[1]} bytes per code but {self.bits} bits need {self.bits // 8}")
        if len(ids) != packed.shape[0]:
            raise ValueError(f"got {packed.shape[0]} codes but {len(ids)} ids")
        encoded = [encode_id(item_id) for item_id in ids]
        handle.write(np.ascontiguousarray(packed).data)
        self._ids.extend(encoded)

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
        self._target.commit(check=self._refuse_existing)  # someone may have created it while we were writing

    def abort(self) -> None:
        """Drop the temp file; the destination keeps whatever it had before."""
        self._file = None
        self._target.abort()

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
        lengths = np.fromiter(map(len, self._ids), dtype="<u8", count=len(self._ids))
        offsets = np.zeros(len(self._ids) + 1, dtype="<u8")
        np.cumsum(lengths, out=offsets[1:])
        header = Header(
            bits=self.bits,
            count=len(self._ids),
            ids_length=offsets.nbytes + int(offsets[-1]),
            metadata_length=len(self._metadata),
            producer=self._producer,
            code_space=self._code_space,
            tail_crc32=0,
        )
        crc = 0
        for chunk in (bytes(header.ids_offset - header.codes_end), offsets.tobytes(), b"".join(self._ids), self._metadata):
            handle.write(chunk)
            crc = zlib.crc32(chunk, crc)
        return dataclasses.replace(header, tail_crc32=crc)


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

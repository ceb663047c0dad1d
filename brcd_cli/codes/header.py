"""The fixed 128-byte header of a codes file, and the layout rules derived from it.

Reader and writer share this module so that the byte layout is written down in
exactly one place; docs/codes-format.md describes the same layout for people
who read codes files from other programs.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

MAGIC = b"BRCDCODE"
VERSION = 1
HEADER_SIZE = 128
CODES_ALIGNMENT = 64
IDS_ALIGNMENT = 8
FINGERPRINT_BYTES = 32

# magic, version, bits, bytes_per_code, metadata_length, count, codes_offset,
# ids_offset, ids_length, producer, code_space, tail_crc32, header_crc32
_LAYOUT = struct.Struct("<8s4I4Q32s32s2I")
_CHECKED_BYTES = HEADER_SIZE - 4  # the header crc covers everything before itself
_VERSION_FIELD = struct.Struct("<I")  # at offset 8 in every version, so newer files are recognised

assert _LAYOUT.size == HEADER_SIZE


class CodesFileError(ValueError):
    """A codes file is missing, corrupt, from a newer brcd, or would be overwritten.

    A ``ValueError`` because it describes bad data rather than a failing system
    call; the CLI turns it into one line and its own exit code.
    """


def file_error(path: str | os.PathLike[str], problem: str) -> CodesFileError:
    """Build the one-sentence error every codes-file problem is reported with."""
    return CodesFileError(f"codes file {os.fspath(path)!r} {problem}.")


def align(value: int, alignment: int) -> int:
    """Round ``value`` up to a multiple of ``alignment``."""
    return -(-value // alignment) * alignment


@dataclass(frozen=True)
class Header:
    """The decoded header fields; offsets and lengths are in bytes from the file start."""

    bits: int
    count: int
    ids_length: int
    metadata_length: int
    producer: bytes
    code_space: bytes
    tail_crc32: int
    version: int = VERSION

    @property
    def bytes_per_code(self) -> int:
        return self.bits // 8

    @property
    def codes_offset(self) -> int:
        return align(HEADER_SIZE, CODES_ALIGNMENT)

    @property
    def codes_end(self) -> int:
        return self.codes_offset + self.count * self.bytes_per_code

    @property
    def ids_offset(self) -> int:
        """Aligned so the u64 offsets table can be mapped as an aligned array."""
        return align(self.codes_end, IDS_ALIGNMENT)

    @property
    def file_size(self) -> int:
        return self.ids_offset + self.ids_length + self.metadata_length

    def pack(self) -> bytes:
        """Serialise, appending the crc32 of the first 124 bytes."""
        body = _LAYOUT.pack(
            MAGIC, self.version, self.bits, self.bytes_per_code, self.metadata_length,
            self.count, self.codes_offset, self.ids_offset, self.ids_length,
            self.producer, self.code_space, self.tail_crc32, 0,
        )[:_CHECKED_BYTES]
        return body + struct.pack("<I", zlib.crc32(body))


def unpack_header(path: str | os.PathLike[str], data: bytes) -> Header:
    """Decode and check the header bytes read from the start of ``path``.

    Checks run in the order that gives the most useful message: a file that is
    not ours is called that rather than "corrupt", and a newer version is
    reported before its (possibly different) checksum layout is trusted.
    """
    if data[: len(MAGIC)] != MAGIC:
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            raise file_error(path, f"is truncated: it has {len(data)} bytes, less than the {HEADER_SIZE}-byte header")
        raise file_error(path, "is not a brcd codes file (its first bytes are not the magic BRCDCODE)")
    if len(data) < HEADER_SIZE:
        raise file_error(path, f"is truncated: it has {len(data)} bytes, less than the {HEADER_SIZE}-byte header")
    (version,) = _VERSION_FIELD.unpack_from(data, len(MAGIC))
    if version > VERSION:
        raise file_error(
            path, f"was written by a newer brcd (format version {version}); this brcd reads version {VERSION}, so upgrade brcd"
        )
    if version != VERSION:
        raise file_error(path, f"has format version {version}, which no brcd ever wrote")
    (_, _, bits, bytes_per_code, metadata_length, count, codes_offset, ids_offset, ids_length,
     producer, code_space, tail_crc32, header_crc32) = _LAYOUT.unpack(data[:HEADER_SIZE])
    if zlib.crc32(data[:_CHECKED_BYTES]) != header_crc32:
        raise file_error(path, "has a corrupt header (header checksum mismatch)")
    header = Header(bits, count, ids_length, metadata_length, producer, code_space, tail_crc32, version)
    _check_sizes(path, header, bytes_per_code, codes_offset, ids_offset)
    return header


def _check_sizes(path: str | os.PathLike[str], header: Header, bytes_per_code: int, codes_offset: int, ids_offset: int) -> None:
    """Reject headers whose stored sizes disagree with what bits and count imply."""
    if header.bits <= 0 or header.bits % 8:
        raise file_error(path, f"has inconsistent sizes: {header.bits} bits is not a positive multiple of 8")
    stored = (bytes_per_code, codes_offset, ids_offset)
    implied = (header.bytes_per_code, header.codes_offset, header.ids_offset)
    if stored != implied:
        raise file_error(
            path,
            "has inconsistent sizes: bytes_per_code, codes_offset and ids_offset are "
            f"{stored} but {header.bits} bits and {header.count} codes imply {implied}",
        )
    table = 8 * (header.count + 1)
    if header.ids_length < table:
        raise file_error(
            path,
            f"has inconsistent sizes: the ids section is {header.ids_length} bytes, "
            f"smaller than the {table}-byte offsets table for {header.count} ids",
        )

"""The multi-index hashing index file of a codes file: build it, open it (memory-mapped), search through it.

``brcd index codes.bin`` writes ``codes.bin.mih`` beside the codes (or
``--out``). The byte layout is documented in docs/index-format.md; in short a
checksummed header (magic, version, bits, count, m, the sha256 of the indexed
codes and the codes file's producer and code space), one directory record per
substring table, then the tables' arrays, each 64-byte aligned so they map as
typed numpy arrays without a copy.

An index belongs to exactly one codes file: opening it against other codes is
refused with the reason. When codes were appended (a codes file rewritten
with the same first ``count`` codes and more after them) the index still
holds for that prefix: a search answers from the index for the prefix and
scans only the appended tail, exactly (:mod:`brcd_cli.search.indexed`); ``brcd index`` rebuilds it to cover
everything (a rebuild costs about as much as re-reading the codes, which any
check of the prefix must do anyway), and ``brcd encode`` does so by itself
when it finds an index beside the codes file it writes (:func:`refresh_index`).
"""
from __future__ import annotations

import hashlib
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..atomic import atomic_write
from ..errors import BrcdError
from ..kernels import mih

MAGIC = b"BRCDMIDX"
VERSION = 1
SUFFIX = ".mih"
ALIGNMENT = 64
# magic, version, bits, m, flags, count, codes_sha256, producer, code_space, data_crc32, header_crc32
_HEADER = struct.Struct("<8s4IQ32s32s32s2I")
HEADER_SIZE = _HEADER.size  # 136
# start, width, direct, reserved, n_buckets, keys_offset, offsets_offset, ids_offset, codes_offset
_TABLE = struct.Struct("<4I5Q")
_CRC_BLOCK = 1 << 24


class IndexFileError(BrcdError):
    """An index file is missing, corrupt, or does not belong to the codes file it is opened with."""

    exit_code = 5


class IndexStale(IndexFileError):
    """The codes file grew since the index was built; the index still covers its first ``count`` codes."""


def default_index_path(codes_path: os.PathLike[str] | str) -> Path:
    """Where ``brcd index`` puts the index of a codes file, and where ``brcd search`` looks for it."""
    p = Path(codes_path)
    return p.with_name(p.name + SUFFIX)


def _align(x: int) -> int:
    return -(-x // ALIGNMENT) * ALIGNMENT


def codes_digest(codes: np.ndarray) -> bytes:
    """sha256 of the packed codes' bytes: what ties an index to the codes it was built from."""
    digest = hashlib.sha256()
    flat = np.ascontiguousarray(codes).reshape(-1)
    for start in range(0, flat.size, _CRC_BLOCK):
        digest.update(memoryview(flat[start : start + _CRC_BLOCK]))
    return digest.digest()


@dataclass
class IndexInfo:
    """What the header of an index file says."""

    path: Path
    bits: int
    m: int
    count: int
    codes_sha256: bytes
    producer: bytes
    code_space: bytes
    file_size: int

    @property
    def bytes_per_code(self) -> float:
        """Index file bytes per indexed code (tables, ids, per-table code copies, header)."""
        return self.file_size / max(self.count, 1)


class IndexFile:
    """An open index: its header and a :class:`brcd_cli.kernels.mih.MultiIndex` over the mapped tables."""

    def __init__(self, info: IndexInfo, index: mih.MultiIndex) -> None:
        self.info = info
        self.index = index

    @property
    def count(self) -> int:
        return self.info.count


# -- writing --------------------------------------------------------------------------------------------------


def write_index(path: Path, tables: list[mih.Table], bits: int, codes_sha256: bytes, producer: bytes = b"",
                code_space: bytes = b"") -> int:
    """Write tables to ``path`` atomically (temp file, fsync, rename); returns the file size."""
    path = Path(path)
    count = len(tables[0].ids) if tables else 0
    directory_end = HEADER_SIZE + _TABLE.size * len(tables)
    pos = _align(directory_end)
    records, chunks = [], []
    for t in tables:
        arrays = {}
        for name, arr in (("keys", t.keys), ("offsets", t.offsets), ("ids", t.ids), ("codes", t.codes)):
            if arr is None:
                arrays[name] = 0
                continue
            raw = np.ascontiguousarray(arr, dtype=np.uint8 if name == "codes" else "<u4")
            arrays[name] = pos
            chunks.append((pos, raw))
            pos = _align(pos + raw.nbytes)
        n_buckets = len(t.keys) if t.keys is not None else 2**t.width
        records.append(_TABLE.pack(t.start, t.width, int(t.keys is None), 0, n_buckets, arrays["keys"],
                                   arrays["offsets"], arrays["ids"], arrays["codes"]))
    size = pos
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w+b") as fh:
        fh.truncate(size)
        fh.seek(HEADER_SIZE)
        fh.write(b"".join(records))
        for offset, raw in chunks:
            fh.seek(offset)
            fh.write(memoryview(raw).cast("B"))
        fh.flush()
        crc = _crc_of(fh, HEADER_SIZE, size)
        header = _HEADER.pack(MAGIC, VERSION, bits, len(tables), 0, count, codes_sha256,
                              producer.ljust(32, b"\0")[:32], code_space.ljust(32, b"\0")[:32], crc, 0)[:-4]
        fh.seek(0)
        fh.write(header + struct.pack("<I", zlib.crc32(header)))
    return size


def _crc_of(fh, start: int, end: int) -> int:
    crc = 0
    fh.seek(start)
    remaining = end - start
    while remaining > 0:
        block = fh.read(min(_CRC_BLOCK, remaining))
        if not block:
            break
        crc = zlib.crc32(block, crc)
        remaining -= len(block)
    return crc


# -- reading --------------------------------------------------------------------------------------------------


def _problem(path: Path, text: str) -> IndexFileError:
    return IndexFileError(f"index file {os.fspath(path)!r} {text}")


def read_index_info(path: Path) -> IndexInfo:
    """Decode and check the header (magic, version, header checksum, size)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(HEADER_SIZE)
            size = os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        raise _problem(path, "does not exist; build it with brcd index") from None
    except OSError as exc:
        raise _problem(path, f"cannot be read ({exc.strerror or exc})") from None
    if raw[:8] != MAGIC:
        raise _problem(path, "is not a brcd index file (its first bytes are not the magic BRCDMIDX)")
    if len(raw) < HEADER_SIZE:
        raise _problem(path, "is truncated (shorter than its header)")
    magic, version, bits, m, _flags, count, sha, producer, space, _crc, header_crc = _HEADER.unpack(raw)
    if version != VERSION:
        newer = "a newer brcd; upgrade brcd or rebuild it" if version > VERSION else "an unknown version"
        raise _problem(path, f"has format version {version}, from {newer}")
    if zlib.crc32(raw[:-4]) != header_crc:
        raise _problem(path, "has a corrupt header (header checksum mismatch); rebuild it with brcd index --force")
    return IndexInfo(path, bits, m, count, sha, producer, space, size)


def open_index(path: Path, *, backend: Optional[str] = None, verify: bool = True) -> IndexFile:
    """Map an index file and check it is whole (checksum, layout); ``verify=False`` skips the data checksum."""
    info = read_index_info(path)
    path = info.path
    mapping = np.memmap(path, dtype=np.uint8, mode="r") if info.file_size else np.zeros(0, np.uint8)
    if verify:
        crc = 0
        for start in range(HEADER_SIZE, info.file_size, _CRC_BLOCK):
            crc = zlib.crc32(mapping[start : min(start + _CRC_BLOCK, info.file_size)], crc)
        if crc != _HEADER.unpack(bytes(mapping[:HEADER_SIZE]))[9]:
            raise _problem(path, "is corrupt (data checksum mismatch); rebuild it with brcd index --force")
    nb = info.bits // 8
    try:
        layout = mih.substring_layout(info.bits, info.m)
        tables = []
        for j, (start, width) in enumerate(layout):
            rec = _TABLE.unpack_from(bytes(mapping[HEADER_SIZE + j * _TABLE.size : HEADER_SIZE + (j + 1) * _TABLE.size]))
            t_start, t_width, direct, _, n_buckets, keys_at, offsets_at, ids_at, codes_at = rec
            if (t_start, t_width) != (start, width):
                raise ValueError(f"table {j} covers bits {t_start}+{t_width}, expected {start}+{width}")
            keys = None if direct else _view(mapping, keys_at, "<u4", (n_buckets,))
            offsets = _view(mapping, offsets_at, "<u4", (n_buckets + 1,))
            ids = _view(mapping, ids_at, "<u4", (info.count,))
            codes = _view(mapping, codes_at, np.uint8, (info.count, nb))
            tables.append(mih.Table(start, width, keys, offsets, ids, codes))
        index = mih.MultiIndex(info.bits, tables, backend=backend)
    except (ValueError, struct.error) as exc:
        raise _problem(path, f"is corrupt ({exc}); rebuild it with brcd index --force") from None
    return IndexFile(info, index)


def _view(mapping: np.ndarray, offset: int, dtype, shape: tuple[int, ...]) -> np.ndarray:
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dt.itemsize
    if offset % ALIGNMENT or offset < HEADER_SIZE or offset + nbytes > mapping.size:
        raise ValueError("an array lies outside the file")
    return mapping[offset : offset + nbytes].view(dt).reshape(shape)


def check_matches(info: IndexInfo, codes) -> None:
    """Refuse an index built from other codes; raise :class:`IndexStale` when codes were only appended.

    ``codes`` is an open :class:`brcd_cli.codes.CodesFile`.
    """
    where = f"index file {os.fspath(info.path)!r}"
    if info.bits != codes.bits:
        raise IndexFileError(f"{where} indexes {info.bits}-bit codes but {codes.path} holds {codes.bits}-bit codes")
    if (info.producer.hex(), info.code_space.hex()) != (codes.producer, codes.code_space):
        raise IndexFileError(f"{where} was built from codes of another model than {codes.path}; rebuild it with brcd index --force")
    if info.count > codes.count or codes_digest(np.asarray(codes.codes[: info.count])) != info.codes_sha256:
        raise IndexFileError(f"{where} was built from other codes than {codes.path}; rebuild it with brcd index --force")
    if info.count < codes.count:
        raise IndexStale(f"{where} covers the first {info.count} of the {codes.count} codes in {codes.path}; "
                         "run brcd index to extend it")


# -- building -------------------------------------------------------------------------------------------------


@dataclass
class BuildReport:
    """What ``brcd index`` did."""

    path: Path
    count: int
    m: int
    bits: int
    seconds: float
    file_bytes: int
    action: str  # "built", "rebuilt" or "up to date"

    @property
    def bytes_per_code(self) -> float:
        return self.file_bytes / max(self.count, 1)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "count": self.count, "m": self.m, "bits": self.bits,
                "seconds": round(self.seconds, 4), "file_bytes": self.file_bytes,
                "bytes_per_code": round(self.bytes_per_code, 2), "action": self.action}


def build_index(codes_path: Path, out: Optional[Path] = None, m: Optional[int] = None, force: bool = False,
                log: Callable[[str], None] = lambda _: None) -> BuildReport:
    """Index a codes file; returns what was done.

    An existing index of the same codes (and the same m, when one is asked
    for) is left alone; one whose codes file has grown since is rebuilt over
    all codes (keeping its m unless another is asked for); an index of other
    codes is replaced only with ``force``.
    """
    from ..codes import read_codes

    codes_path = Path(codes_path)
    out = Path(out) if out is not None else default_index_path(codes_path)
    if out.is_dir():
        raise BrcdError(f"{out} is a folder; give a file name for the index")
    with read_codes(codes_path) as codes:
        action = "built"
        if out.exists():
            try:
                info = read_index_info(out)
                check_matches(info, codes)
            except IndexStale:
                action = "rebuilt"
                m = info.m if m is None else m
                log(f"{codes_path} grew from {info.count} to {codes.count} codes since {out} was built; rebuilding it")
            except IndexFileError as exc:
                if not force:
                    raise BrcdError(f"{exc}; pass --force to replace it") from None
                action = "rebuilt"
            else:
                if m is None or m == info.m:
                    return BuildReport(out, info.count, info.m, info.bits, 0.0, info.file_size, "up to date")
                action = "rebuilt"
        data = np.asarray(codes.codes)
        if m is not None and not 1 <= m <= codes.bits:
            raise BrcdError(f"--m must be between 1 and {codes.bits}, got {m}")
        t0 = time.perf_counter()
        try:
            tables = mih.build_tables(data, m)
        except ValueError as exc:
            raise BrcdError(str(exc)) from None
        size = write_index(out, tables, codes.bits, codes_digest(data), bytes.fromhex(codes.producer),
                           bytes.fromhex(codes.code_space))
        seconds = time.perf_counter() - t0
    return BuildReport(out, int(data.shape[0]), len(tables), codes.bits, seconds, size, action)


def refresh_index(codes_path: Path, log: Callable[[str], None] = lambda _: None) -> Optional[BuildReport]:
    """Bring the index beside a codes file up to date after the codes were written; None when there is none.

    ``brcd encode`` calls this once its output is complete: an index left
    behind its codes would answer only for the old prefix (or, for other
    codes, not at all), while rebuilding costs a fraction of a second per
    million codes next to the minutes of encoding. The index keeps its m. A
    failure to rebuild leaves the old index (written atomically) and is
    reported as a note: the codes themselves are already safe.
    """
    path = default_index_path(codes_path)
    if not path.exists():
        return None
    try:
        m: Optional[int] = read_index_info(path).m
    except IndexFileError:
        m = None
    try:
        report = build_index(codes_path, path, m=m, force=True)
    except (BrcdError, OSError) as exc:
        log(f"note: could not update the index {path} ({exc}); run brcd index {codes_path} --force")
        return None
    if report.action != "up to date":
        log(f"index {path} {report.action} over {report.count} codes (m={report.m}, {report.seconds:.2f} s)")
    return report

"""A resumable staging area for a codes file that is still being encoded.

Encoding a large collection can take hours, and a job can be killed at any
moment (kill -9, a full disk, a reboot). The final codes file carries its
ids table after the codes, so it cannot be appended to in place; instead the
encoder appends to plain files in ``<out>.partial/`` and, after every batch,
makes them durable and then records the committed sizes in ``state.json``
(written atomically). A restart truncates the files back to the last commit,
so a batch is either wholly in or wholly out and every item ends up in the
final file exactly once, in source order.

    <out>.partial/state.json   what was committed, and what the job is for
    <out>.partial/codes.u8     packed codes, back to back
    <out>.partial/ids.bin      ids, each as a little-endian u32 length + UTF-8 bytes
    <out>.partial/skipped.tsv  id TAB reason, for items that could not be read

``finish`` streams the staged codes into a normal codes file (atomic, as
ever) and removes the staging folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_json
from .header import file_error
from .reader import release_pages
from .writer import CodesWriter, encode_id

STATE_VERSION = 1
_FILES = ("codes.u8", "ids.bin", "skipped.tsv")
_ID_BLOCK = 1 << 22  # ids.bin is read back in 4 MiB blocks when the job finishes


def partial_dir(out: Path) -> Path:
    """Where the staging area of ``out`` lives."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def skipped_path(out: Path) -> Path:
    """The side file listing the items an encode skipped, beside the codes file."""
    out = Path(out)
    return out.with_name(out.name + ".skipped.tsv")


def write_skipped(out: Path, skipped: Sequence[tuple[str, str]]) -> Optional[Path]:
    """Record the items an encode of ``out`` skipped beside it (a TSV with a header line), atomically.

    With nothing skipped, a list left by an earlier encode of ``out`` is
    removed, since it would describe another file. Returns the list's path, or None.
    """
    side = skipped_path(out)
    if not skipped:
        side.unlink(missing_ok=True)
        return None
    atomic_write_bytes(side, b"id\treason\n" + _tsv_rows(skipped))
    return side


def read_skipped(out: Path) -> list[tuple[str, str]]:
    """The (id, reason) pairs :func:`write_skipped` recorded for ``out``; empty when there is no list."""
    side = skipped_path(out)
    if not side.exists():
        return []
    lines = side.read_bytes().decode("utf-8", "surrogateescape").splitlines()[1:]
    return [tuple(line.split("\t", 1)) for line in lines]  # type: ignore[misc]


def job_digest(ids: Sequence[str], description: dict[str, Any]) -> str:
    """sha256 over the item ids and the job description: a resume must continue the same job."""
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode("utf-8"))
    for item_id in ids:
        digest.update(encode_id(item_id))
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass
class _Committed:
    next_index: int = 0
    count: int = 0
    ids_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    #: when the job first started (ns since the epoch), kept across resumes: a file changed after it may have
    #: been read before the change, which is what a record of the files behind the codes must know
    started_ns: int = 0


class PartialCodes:
    """Append batches of codes durably; resume after any crash; finish into a codes file."""

    def __init__(self, out: Path, bits: int, producer: str, code_space: str, digest: str, total: int,
                 metadata: Optional[dict[str, Any]] = None) -> None:
        #: whether the job was started with permission to replace an existing ``out``; kept across resumes
        self.replace_existing = False
        self.out = Path(out)
        self.dir = partial_dir(self.out)
        self.bits, self.producer, self.code_space = bits, producer, code_space
        self.digest, self.total, self.metadata = digest, total, metadata or {}
        self.state = _Committed()
        self._handles: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------
    def exists(self) -> bool:
        return (self.dir / "state.json").is_file()

    def start(self, replace_existing: bool = False) -> None:
        """A fresh staging area (any earlier one is discarded)."""
        self.discard()
        self.replace_existing = replace_existing
        self.state = _Committed(started_ns=time.time_ns())
        self.dir.mkdir(parents=True)
        for name in _FILES:
            (self.dir / name).touch()
        self._commit()
        self._open()

    def resume(self) -> int:
        """Reopen an interrupted job; returns the index to continue from.

        Refuses a staging area made for another model, bit length or image
        list, because mixing two jobs would give a file that looks whole but
        is not.
        """
        try:
            raw = json.loads((self.dir / "state.json").read_text(encoding="utf-8"))
            fields = {k: int(raw[k]) for k in ("next_index", "count", "ids_bytes", "skipped", "skipped_bytes")}
            fields["started_ns"] = int(raw.get("started_ns", 0))  # 0: a job from before the field was kept
            job = (int(raw["version"]), int(raw["bits"]), str(raw["producer"]), str(raw["digest"]))
            self.replace_existing = bool(raw.get("replace_existing", False))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise file_error(self.dir, f"interrupted encode cannot be resumed ({exc}); pass --force to start over") from None
        if job != (STATE_VERSION, self.bits, self.producer, self.digest):
            raise file_error(
                self.dir,
                "holds an interrupted encode of other images or another model; pass --force to start over",
            )
        self.state = _Committed(**fields)
        sizes = {"codes.u8": self.state.count * (self.bits // 8), "ids.bin": self.state.ids_bytes,
                 "skipped.tsv": self.state.skipped_bytes}
        for name, size in sizes.items():
            path = self.dir / name
            if not path.is_file() or path.stat().st_size < size:
                raise file_error(self.dir, f"{name} is shorter than its last commit; pass --force to start over")
            os.truncate(path, size)  # drop a batch that was written but never committed
        self._open()
        return self.state.next_index

    def discard(self) -> None:
        self._close_handles()
        if self.dir.exists():
            shutil.rmtree(self.dir)

    # -- writing ---------------------------------------------------------------
    def append(self, packed: np.ndarray, ids: Sequence[str], skipped: Sequence[tuple[str, str]], next_index: int) -> None:
        """Commit one batch: its codes, its ids, the items it skipped, and how far the job got."""
        if packed.shape[0] != len(ids):
            raise ValueError(f"got {packed.shape[0]} codes but {len(ids)} ids")
        raw_ids = b"".join(len(b).to_bytes(4, "little") + b for b in map(encode_id, ids))
        raw_skips = _tsv_rows(skipped)
        self._handles["codes.u8"].write(np.ascontiguousarray(packed, dtype=np.uint8).tobytes())
        self._handles["ids.bin"].write(raw_ids)
        self._handles["skipped.tsv"].write(raw_skips)
        for handle in self._handles.values():
            handle.flush()
            os.fsync(handle.fileno())
        self.state.count += packed.shape[0]
        self.state.ids_bytes += len(raw_ids)
        self.state.skipped += len(skipped)
        self.state.skipped_bytes += len(raw_skips)
        self.state.next_index = next_index
        self._commit()

    def skipped(self) -> list[tuple[str, str]]:
        """Every (id, reason) skipped so far, resumed runs included."""
        text = (self.dir / "skipped.tsv").read_bytes()[: self.state.skipped_bytes].decode("utf-8", "surrogateescape")
        return [tuple(line.split("\t", 1)) for line in text.splitlines()]  # type: ignore[misc]

    def finish(self, chunk: int = 65536) -> None:
        """Turn the staged codes into ``out`` (atomically) and remove the staging area."""
        self._close_handles()
        width = self.bits // 8
        count = self.state.count
        codes = (np.memmap(self.dir / "codes.u8", dtype=np.uint8, mode="r", shape=(count, width)) if count
                 else np.zeros((0, width), np.uint8))
        with CodesWriter(self.out, self.bits, self.producer, self.code_space, overwrite=self.replace_existing,
                         metadata=self.metadata) as writer:
            for lengths, blob in _staged_ids(self.dir / "ids.bin", self.state.ids_bytes, chunk):
                start = writer.count
                if start + len(lengths) > count:
                    break
                block = codes[start : start + len(lengths)]
                writer.append_encoded(block, lengths, blob)
                release_pages(block)
            if writer.count != count:
                writer.abort()
                raise file_error(self.dir, f"holds {count} codes but not as many ids; pass --force to start over")
        del codes
        shutil.rmtree(self.dir)

    # -- internals -------------------------------------------------------------
    def _open(self) -> None:
        self._handles = {name: open(self.dir / name, "ab") for name in _FILES}

    def _close_handles(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def _commit(self) -> None:
        atomic_write_json(self.dir / "state.json", {
            "version": STATE_VERSION, "bits": self.bits, "producer": self.producer, "digest": self.digest,
            "total": self.total, "replace_existing": self.replace_existing, **self.state.__dict__,
        })


def _tsv_rows(skipped: Sequence[tuple[str, str]]) -> bytes:
    """id TAB reason lines; file names that are not UTF-8 keep their bytes."""
    return "".join(f"{_one_line(i)}\t{_one_line(r)}\n" for i, r in skipped).encode("utf-8", "surrogateescape")


def _one_line(text: str) -> str:
    """Keep an id or reason on one TSV line without otherwise changing it."""
    return str(text).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _staged_ids(path: Path, size: int, batch: int) -> Iterator[tuple[np.ndarray, bytes]]:
    """The committed ids of ids.bin (u32 length + bytes each) in batches of at most ``batch``:
    (lengths, their bytes back to back), read in blocks so memory stays flat for any count."""
    with open(path, "rb") as handle:
        pending, remaining = b"", size
        lengths: list[int] = []
        parts: list[bytes] = []
        while remaining > 0 or pending:
            block = handle.read(min(_ID_BLOCK, remaining)) if remaining > 0 else b""
            remaining -= len(block)
            if not block and remaining > 0:
                raise file_error(path, "is shorter than its last commit; pass --force to start over")
            data, pos = pending + block, 0
            while pos + 4 <= len(data):
                n = int.from_bytes(data[pos : pos + 4], "little")
                if pos + 4 + n > len(data):
                    break
                lengths.append(n)
                parts.append(data[pos + 4 : pos + 4 + n])
                pos += 4 + n
                if len(lengths) == batch:
                    yield np.asarray(lengths, dtype=np.uint64), b"".join(parts)
                    lengths, parts = [], []
            pending = data[pos:]
            if not block and pending:
                raise file_error(path, "ends inside an id; pass --force to start over")
        if lengths:
            yield np.asarray(lengths, dtype=np.uint64), b"".join(parts)

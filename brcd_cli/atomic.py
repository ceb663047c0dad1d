"""Atomic file output: every file brcd writes appears whole or not at all.

Each output is written to a hidden temp file in the target's own folder (so
the final rename never crosses a file system), made durable with fsync, and
renamed over the target; the folder is then fsynced where the platform allows,
so the rename itself survives a crash. Any failure before the rename removes
the temp file and leaves an earlier file at the target untouched.

Only the standard library is used, so modules that must stay free of torch
(the codes file format, the indexes) can share it.
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Optional


class AtomicFile:
    """A temp file beside ``target`` that becomes ``target`` on :meth:`commit`.

    Use it as a context manager (commit on success, abort on an exception),
    or call :meth:`commit` / :meth:`abort` yourself when the writing spans
    several calls, as a streaming writer's does. ``file`` is the open handle
    and ``temp`` its path.
    """

    def __init__(self, target: str | os.PathLike[str], mode: str = "wb", *, encoding: Optional[str] = None,
                 newline: Optional[str] = None) -> None:
        if not mode.startswith("w"):
            raise ValueError(f"an atomic file is always new, so its mode must be a write mode ('w...'), got {mode!r}")
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, self.temp = _create_temp(self.target)
        try:
            self.file: IO[Any] = open(fd, mode, encoding=encoding, newline=newline)
        except BaseException:
            os.close(fd)
            self.temp.unlink(missing_ok=True)
            raise
        self._finished = False

    def commit(self, check: Optional[Callable[[], None]] = None) -> None:
        """Make the data durable and rename it over the target.

        ``check`` runs after the fsync, just before the rename, so a condition
        that may have changed while writing (the target appeared) can still
        veto the rename by raising. On any failure the temp file is removed.
        """
        if self._finished:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if check is not None:
                check()
            os.replace(self.temp, self.target)
        except BaseException:
            self.abort()
            raise
        self._finished = True
        _fsync_directory(self.target.parent)

    def abort(self) -> None:
        """Drop the temp file; the target keeps whatever it had before. Harmless after commit."""
        if self._finished:
            return
        self._finished = True
        self.file.close()
        self.temp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@contextmanager
def atomic_write(target: str | os.PathLike[str], mode: str = "wb", *, encoding: Optional[str] = None,
                 newline: Optional[str] = None) -> Iterator[IO[Any]]:
    """Yield an open file that replaces ``target`` when the block ends normally.

    ``mode`` is any write mode: "wb" to stream, "w+b" to also seek and read
    back (for a checksum), "w" with ``encoding`` for text. Nothing is held in
    memory beyond the file's own buffer, so the file may be larger than RAM.
    """
    with AtomicFile(target, mode, encoding=encoding, newline=newline) as out:
        yield out.file


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``target`` with ``data`` atomically."""
    with atomic_write(target) as fh:
        fh.write(data)


def atomic_write_text(target: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Replace ``target`` with ``text`` atomically; newlines are written as given, on every platform."""
    atomic_write_bytes(target, text.encode(encoding))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Replace ``target`` with indented, key-sorted JSON, so equal records give identical files."""
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _create_temp(target: Path) -> tuple[int, Path]:
    """A new hidden file next to ``target``, named ``.<name>.<random>.tmp``.

    Unlike ``tempfile.mkstemp`` (always mode 0600) this honours the umask, so
    the renamed file gets the permissions any other new file would.
    """
    while True:
        candidate = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return os.open(candidate, flags, 0o666), candidate
        except FileExistsError:
            continue


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself; skipped where folders cannot be opened (Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Replacing a codes file and the files that belong to it as one step, and finishing one a crash interrupted.

An update or a removal rewrites three files: the codes file, its record of
files (:mod:`.stat_table`) and its list of skipped items. Each is written
atomically, but no file system renames three files at once. So the new
versions are first written whole into the staging folder ``CODES.update/``
(``merged.*``), then ``commit.json`` says they are complete and which version
of the codes file they replace, and only then are they renamed into place,
the codes file last. A crash before ``commit.json`` leaves the old files as
they were; a crash after it is finished by the next update or removal
(:func:`finish_pending`), unless the codes file was replaced meanwhile by
something else, in which case the staged versions are dropped. The index
beside the codes file is rebuilt after the rename (it checks its codes
itself, so a crash before that only leaves it answering for the old codes'
prefix or refusing them).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

from ..atomic import atomic_write_json
from ..codes.partial import skipped_path
from .stat_table import table_path

STAGED_CODES = "merged.codes"
STAGED_TABLE = "merged.stat"
STAGED_SKIPPED = STAGED_CODES + ".skipped.tsv"  # what write_skipped names the staged codes' list
JOURNAL = "commit.json"


def staging_dir(out: Path) -> Path:
    """The folder where an update or removal of ``out`` prepares its files."""
    out = Path(out)
    return out.with_name(out.name + ".update")


def _version_of(path: Path) -> Optional[dict[str, int]]:
    """Which file is at ``path`` now (so a commit replaces only the version it was made from)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def commit(out: Path, log: Callable[[str], None]) -> None:
    """Put the staged files of ``out`` in place: the journal first, then the renames, then the index.

    A record of files or a skipped list that was not staged means the new
    codes file has none, so an old one beside it is removed.
    """
    staging = staging_dir(out)
    atomic_write_json(staging / JOURNAL, {"replaces": _version_of(out), "table": (staging / STAGED_TABLE).exists(),
                                          "skipped": (staging / STAGED_SKIPPED).exists()})
    finish_pending(out, log)


def finish_pending(out: Path, log: Callable[[str], None] = lambda _: None) -> bool:
    """Complete a commit of ``out`` that a crash interrupted; returns whether there was one to complete.

    Staged files without a journal were never committed and are removed (their
    update recomputes them). The staging folder's other contents (an
    interrupted encode of new images) are kept for the update to resume.
    """
    out = Path(out)
    staging = staging_dir(out)
    journal = staging / JOURNAL
    staged = [staging / STAGED_TABLE, staging / STAGED_SKIPPED, staging / STAGED_CODES]
    if not journal.is_file():
        for path in staged:
            path.unlink(missing_ok=True)
        return False
    codes = staging / STAGED_CODES
    try:
        entry = json.loads(journal.read_text(encoding="utf-8"))
        replaces, with_table, with_skipped = entry["replaces"], bool(entry["table"]), bool(entry["skipped"])
    except (OSError, ValueError, KeyError, TypeError):
        replaces, with_table, with_skipped = "unreadable", False, False
    if codes.exists() and replaces != _version_of(out):
        log(f"note: dropped an interrupted update of {out}: the file was replaced since")
    elif codes.exists():
        _place(staging / STAGED_TABLE, table_path(out), with_table)
        _place(staging / STAGED_SKIPPED, skipped_path(out), with_skipped)
        os.replace(codes, out)
    from ..search.mih import refresh_index

    refresh_index(out, log)
    shutil.rmtree(staging, ignore_errors=True)
    return True


def _place(staged: Path, target: Path, committed: bool) -> None:
    """Move a committed file into place (once: a rerun finds it moved), or remove the target of one that is not."""
    if not committed:
        target.unlink(missing_ok=True)
    elif staged.exists():
        os.replace(staged, target)

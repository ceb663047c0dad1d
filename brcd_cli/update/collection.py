"""Keeping a codes file current as its folder changes: encode only what is new or changed (``brcd encode --update``).

An update compares every image's stat signature with the record kept beside
the codes file (:mod:`.stat_table`), encodes the new and changed images with
the ordinary resumable encode, and splices the result with the unchanged
codes of the old file in the order a full encode of today's folder has
(source order), dropping the items whose files are gone. So the new file is
the one a full encode of the folder would write, codes, ids, order and
metadata alike, at the cost of encoding only what changed.

Crash safety comes from the parts it is made of: the new images are encoded
by :func:`brcd_cli.pipeline.encode_collection` into ``CODES.update/new.codes``
(staged and resumable as any encode), and the rewritten files are committed
through :mod:`.commit`. A rerun after ``kill -9`` continues the staged encode
when the images it was encoding are unchanged, else starts that encode over;
the old codes file is untouched until the final rename.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import numpy as np

from ..atomic import atomic_write_json
from ..codes import CodesFile, read_codes
from ..codes.merge import Run, splice_codes
from ..codes.partial import partial_dir, read_skipped, skipped_path, write_skipped
from ..errors import BrcdError, DataError
from .commit import STAGED_CODES, STAGED_TABLE, commit, finish_pending, staging_dir
from .stat_table import CodesIdentity, now_ns, read_table, stat_files, table_path, trusted, unchanged, write_table

if TYPE_CHECKING:  # the data layer imports torch, which removing items or reading records never needs
    from ..data import ImageSource
    from ..data.loader import LoadOptions

NEW_CODES = "new.codes"
PLAN = "plan.json"


@dataclass
class UpdateResult:
    """What an update did: the final count, how the folder changed, and the images it could not read."""

    out: Path
    count: int
    unchanged: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_file: Optional[Path] = None
    seconds: float = 0.0
    #: images that could not be read last time either, their files unchanged: left alone (and still in ``skipped``)
    unreadable_as_before: int = 0

    @property
    def encoded(self) -> int:
        """Images that went through the model (new and changed ones, the unreadable included)."""
        return self.added + self.changed

    @property
    def up_to_date(self) -> bool:
        return self.encoded == 0 and self.removed == 0

    def to_dict(self) -> dict:
        return {"out": str(self.out), "count": self.count, "unchanged": self.unchanged, "added": self.added,
                "changed": self.changed, "removed": self.removed, "skipped": len(self.skipped),
                "unreadable_as_before": self.unreadable_as_before,
                "seconds": round(self.seconds, 3)}


@dataclass
class UpdatePlan:
    """Where each item of today's folder gets its code: ``reuse[i]`` from old position ``positions[i]``, else encoded."""

    positions: np.ndarray  # int64, the item's position in the old file, -1 when it is not there
    reuse: np.ndarray  # bool, the old code is still the image's code
    stats: np.ndarray  # stat_table.RECORD, the files' signatures when the plan was made
    old_count: int

    @property
    def to_encode(self) -> np.ndarray:
        return np.flatnonzero(~self.reuse)

    @property
    def added(self) -> int:
        return int((self.positions < 0).sum())

    @property
    def changed(self) -> int:
        return int(((self.positions >= 0) & ~self.reuse).sum())

    @property
    def removed(self) -> int:
        return self.old_count - int(np.unique(self.positions[self.positions >= 0]).size)

    def keeps_old_file(self) -> bool:
        """Nothing to encode and the old file's items, in its order: the old file is already the answer."""
        return bool(self.reuse.all()) and np.array_equal(self.positions, np.arange(self.old_count))

    def runs(self, produced: np.ndarray, has_old: bool) -> list[Run]:
        """The splice of the final file: old codes (part 0) and new ones (the next part) in today's order.

        ``produced[j]`` says whether the j-th image to encode gave a code (an unreadable one is skipped).
        """
        encoded = self.to_encode
        part = np.where(self.reuse, 0, 1) - (0 if has_old else 1)
        position = self.positions.copy()
        position[encoded] = np.cumsum(produced) - 1
        kept = self.reuse.copy()
        kept[encoded[produced]] = True
        part, position = part[kept], position[kept]
        if not len(part):
            return []
        breaks = np.flatnonzero((part[1:] != part[:-1]) | (position[1:] != position[:-1] + 1)) + 1
        starts, stops = np.r_[0, breaks], np.r_[breaks, len(part)]
        return [Run(int(part[a]), int(position[a]), int(position[a]) + int(b - a)) for a, b in zip(starts, stops)]


def image_files(source: "ImageSource") -> list[Path]:
    """The file behind each item: an update compares files, so a source without them cannot be updated."""
    if source.files is None:
        raise BrcdError(f"--update follows image files, and {source.name} is not a folder or a list file of them; "
                        "encode it without --update")
    return source.files


def plan_update(ids: Sequence[str], stats: np.ndarray, old: Optional[CodesFile], records: Optional[np.ndarray]) -> UpdatePlan:
    """Match today's items with the old file by id; an item keeps its code when its file's signature is the recorded one.

    The old ids are streamed once against a dict of today's ids, so the old
    file is never held in memory as strings.
    """
    positions = np.full(len(ids), -1, np.int64)
    if old is not None:
        where = {item_id: i for i, item_id in enumerate(ids)}
        found_new, found_old = [], []
        for p, item_id in enumerate(old.ids):
            i = where.pop(item_id, None)
            if i is not None:
                found_new.append(i)
                found_old.append(p)
        positions[np.asarray(found_new, np.int64)] = np.asarray(found_old, np.int64)
    reuse = np.zeros(len(ids), bool)
    present = np.flatnonzero(positions >= 0)
    if records is not None and len(present):
        reuse[present] = unchanged(np.asarray(records[positions[present]]), stats[present])
    return UpdatePlan(positions, reuse, stats, old.count if old is not None else 0)


def update_collection(source: "ImageSource", model_dir: Path, out: Path, batch_size: int = 128,
                      log: Callable[[str], None] = print, loading: Optional["LoadOptions"] = None) -> UpdateResult:
    """Bring ``out`` in line with ``source`` (a folder or list file), encoding only new and changed images.

    Creates ``out`` when it does not exist. Refuses codes of another model or
    decoding, since mixing them would give a file that no full encode writes.
    The index beside ``out`` (``out.mih``) is rebuilt when it exists.
    """
    from ..data.loader import LoadOptions

    started = time.perf_counter()
    out = Path(out)
    loading = loading or LoadOptions()
    files = image_files(source)
    if out.is_dir():
        raise BrcdError(f"{out} is a folder; give a file name for the codes")
    finish_pending(out, log)
    with contextlib.ExitStack() as stack:
        old = stack.enter_context(read_codes(out)) if out.exists() else None
        records, known_bad = None, {}
        if old is not None:
            check_reusable(old, model_dir, loading)
            table, why = read_table(table_path(out), CodesIdentity.of(old))
            if table is None and old.count:
                log(f"note: {why}, so every image of {out} is encoded again this once")
            records, known_bad = (table.records, table.unreadable) if table is not None else (None, {})
        stats = stat_files(files)
        source, stats, still_bad = _set_aside_still_unreadable(source, stats, known_bad, read_skipped(out))
        carried = [(item_id, reason) for item_id, (reason, _) in still_bad.items()]  # still in the skipped list
        plan = plan_update(source.ids, stats, old, records)
        result = UpdateResult(out, count=0, unchanged=int(plan.reuse.sum()), added=plan.added, changed=plan.changed,
                              removed=plan.removed, unreadable_as_before=len(still_bad))
        as_before = f"; {len(still_bad)} unreadable as before" if still_bad else ""
        if old is not None and plan.keeps_old_file():
            result.count = old.count
            result.skipped = carried
            result.skipped_file = skipped_path(out) if still_bad else None
            result.seconds = time.perf_counter() - started
            log(f"{out} is up to date ({old.count} images unchanged{as_before})")
            return result
        log(f"updating {out}: {result.unchanged} unchanged, {result.added} new, {result.changed} changed, "
            f"{result.removed} gone{as_before}; encoding {result.encoded}")
        if old is not None and old.count and len(source.ids) and result.removed == old.count:
            log(_no_id_matched(old, source.ids))
        encoded = plan.to_encode
        new, skipped, since_ns = _encode_new(source.take(encoded), plan.stats[encoded], model_dir, out, batch_size,
                                             log, loading)
        stack.enter_context(new)
        skipped_ids = {item_id for item_id, _ in skipped}
        produced = np.fromiter((source.ids[i] not in skipped_ids for i in encoded), bool, count=len(encoded))
        staging = staging_dir(out)
        parts = [old, new] if old is not None else [new]
        result.count = splice_codes(parts, plan.runs(produced, old is not None), staging / STAGED_CODES,
                                    overwrite=True, metadata=new.metadata)
        records_now = plan.stats.copy()
        records_now[encoded] = trusted(plan.stats[encoded], since_ns)
        kept = plan.reuse.copy()
        kept[encoded[produced]] = True
        unreadable = {source.ids[i]: records_now[i] for i in encoded[~produced]}
        unreadable.update((item_id, signature) for item_id, (_, signature) in still_bad.items())
        skipped = skipped + carried
        with read_codes(staging / STAGED_CODES) as merged:
            write_table(staging / STAGED_TABLE, _blocks(records_now[kept]), CodesIdentity.of(merged), unreadable)
        write_skipped(staging / STAGED_CODES, skipped)
    commit(out, log)
    result.skipped = skipped
    result.skipped_file = skipped_path(out) if skipped else None
    result.seconds = time.perf_counter() - started
    return result


def encode_recorded(source: "ImageSource", model_dir: Path, out: Path, batch_size: int = 128, overwrite: bool = False,
                    resume: bool = False, log: Callable[[str], None] = print, loading: Optional["LoadOptions"] = None):
    """A full encode (:func:`brcd_cli.pipeline.encode_collection`) that also records the files behind the codes,
    so that the next ``--update`` encodes only what changed. Returns the encode's result."""
    from ..pipeline import encode_collection

    since_ns = _job_started(Path(out), resume)
    result = encode_collection(source, model_dir, out, batch_size=batch_size, overwrite=overwrite, resume=resume, log=log,
                               loading=loading)
    shutil.rmtree(staging_dir(Path(out)), ignore_errors=True)  # an interrupted update of the replaced file is moot
    if source.files is not None:
        record_files(source.ids, source.files, Path(out), since_ns, result.skipped, log)
    return result


def _set_aside_still_unreadable(source: "ImageSource", stats: np.ndarray, known_bad: dict[str, np.ndarray],
                                reasons: Sequence[tuple[str, str]]) -> tuple["ImageSource", np.ndarray, dict[str, tuple[str, np.ndarray]]]:
    """Today's items less those whose file could not be read last time and has not changed since (by its
    signature; an unknown one never matches), with their stats; and those set aside, id -> (reason, signature)."""
    if not known_bad:
        return source, stats, {}
    why = dict(reasons)
    bad = np.fromiter((item_id in known_bad for item_id in source.ids), bool, count=len(source.ids))
    for i in np.flatnonzero(bad).tolist():
        bad[i] = bool(unchanged(known_bad[source.ids[i]][None], stats[i : i + 1])[0])
    if not bad.any():
        return source, stats, {}
    aside = {source.ids[i]: (why.get(source.ids[i], "could not be read"), stats[i]) for i in np.flatnonzero(bad).tolist()}
    rest = np.flatnonzero(~bad)
    return source.take(rest), stats[rest], aside


def _no_id_matched(old: CodesFile, ids: Sequence[str]) -> str:
    """The note for an update in which no old id came back: most often the images were named another way
    (an absolute path where a relative one was given, another working folder), which costs a full encode."""
    first_old = next(iter(old.ids), "")
    return (f"note: none of the {old.count} ids in the codes file is among today's (it has {first_old!r}, today's first "
            f"is {ids[0]!r}); ids are the paths as given, so give the images as they were given when it was written "
            "to keep their codes")


def record_files(ids: Sequence[str], files: Sequence[Path], out: Path, since_ns: int, skipped: Sequence[tuple[str, str]],
                 log: Callable[[str], None] = lambda _: None) -> Optional[Path]:
    """Record the files behind the codes ``out`` was just encoded from (every item but the skipped ones), stat'ed now.

    ``since_ns`` is when the encode began: a file changed after that is
    recorded as unknown, since it may have been read before the change. A
    record that cannot be written costs only time (the next update encodes
    everything), so it is a note, not an error.
    """
    gone = {item_id for item_id, _ in skipped}
    kept = np.fromiter((item_id not in gone for item_id in ids), bool, count=len(ids))
    records = trusted(stat_files(files), since_ns)
    unreadable = {ids[i]: records[i] for i in np.flatnonzero(~kept).tolist()}
    try:
        with read_codes(out) as codes:
            return write_table(table_path(out), _blocks(records[kept]), CodesIdentity.of(codes), unreadable)
    except (OSError, ValueError) as exc:
        log(f"note: could not record the files behind {out} ({exc}); the next --update encodes every image")
        table_path(out).unlink(missing_ok=True)
        return None


def _job_started(out: Path, resume: bool) -> int:
    """When the encode of ``out`` that is about to run began: now, or when the interrupted job it resumes began
    (0, so every file counts as changed since, for a job that did not say)."""
    state = partial_dir(out) / "state.json"
    if resume and state.is_file():
        try:
            return int(json.loads(state.read_text(encoding="utf-8")).get("started_ns", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            return 0
    return now_ns()


def check_reusable(old: CodesFile, model_dir: Path, loading: "LoadOptions") -> None:
    """An update keeps old codes, so the model and the decoding must be the ones they were made with."""
    from ..models import code_space_of
    from ..models.checkpoint import read_config

    config, fingerprint = read_config(Path(model_dir))
    if (old.bits, old.producer, old.code_space) != (config.bits, fingerprint, code_space_of(config, fingerprint)):
        raise BrcdError(f"{old.path} was encoded by another model than {model_dir}; --update keeps its codes, so pass the "
                        "model it was encoded with, or encode everything again with --force (without --update)")
    was = str(old.metadata.get("decode", "exact"))  # files from before decodings had names were decoded exactly
    if was != loading.decoding:
        raise BrcdError(f"{old.path} was encoded with the {was} decoding and this update would use the {loading.decoding} "
                        "one; pass the decoding flags it was encoded with (--exact-decode, --decode-device), or encode "
                        "everything again with --force")


def _plan_digest(sub: "ImageSource", stats: np.ndarray) -> str:
    digest = hashlib.sha256(stats.tobytes())
    for item_id in sub.ids:
        digest.update(item_id.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def _encode_new(sub: "ImageSource", stats: np.ndarray, model_dir: Path, out: Path, batch_size: int,
                log: Callable[[str], None], loading: "LoadOptions") -> tuple[CodesFile, list[tuple[str, str]], int]:
    """Encode the new and changed images into the staging folder, continuing an interrupted encode of the same
    images (same files, same signatures); returns the codes, the skipped items and when the first attempt began."""
    from ..pipeline import encode_collection

    staging = staging_dir(out)
    target = staging / NEW_CODES
    digest = _plan_digest(sub, stats)
    plan_file = staging / PLAN
    try:
        staged = json.loads(plan_file.read_text(encoding="utf-8"))
        same = staged.get("digest") == digest
        since_ns = int(staged["since_ns"]) if same else now_ns()
    except (OSError, ValueError, KeyError, TypeError):
        same, since_ns = False, now_ns()
    if not same:
        if staging.exists():
            if target.exists() or partial_dir(target).exists():
                log(f"note: the images changed since the interrupted update of {out}; encoding them again")
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        atomic_write_json(plan_file, {"digest": digest, "since_ns": since_ns})
    if same and target.exists() and not partial_dir(target).exists():
        return read_codes(target), read_skipped(target), since_ns  # encoded before the interruption
    try:
        result = encode_collection(sub, model_dir, target, batch_size=batch_size, overwrite=True, resume=same, log=log,
                                   loading=loading)
        skipped = result.skipped
    except DataError:
        if target.exists() or partial_dir(target).exists() or not len(sub):
            raise
        skipped = _reasons(sub)  # no new image could be read: the update still drops the gone ones
        encode_collection(sub.take(np.zeros(0, np.int64)), model_dir, target, overwrite=True, log=log, loading=loading)
    return read_codes(target), skipped, since_ns


def _reasons(sub: "ImageSource") -> list[tuple[str, str]]:
    """Why each image of a source that could not be read at all failed (the encode said so only for the first)."""
    out = []
    for i, item_id in enumerate(sub.ids):
        try:
            sub.load(i)
            reason = "could not be read during the encode"
        except DataError as exc:
            reason = str(exc).removeprefix(f"cannot read image {item_id}: ")
        out.append((item_id, reason))
    return out


def _blocks(records: np.ndarray, size: int = 1 << 16) -> Iterator[np.ndarray]:
    for start in range(0, len(records), size):
        yield records[start : start + size]

"""The user-level operations behind ``brcd encode`` and ``brcd search``."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from .data import ImageSource, read_image_file, to_tensor
from .data.loader import BatchStream, LoadOptions
from .encoding import packed_codes_of_images
from .errors import BrcdError, DataError
from .models import code_space_of, load_encoder
from .options import positive
from . import search
from .search import Hit, check_compatible, open_collection
from .search.mih import refresh_index


@dataclass
class EncodeResult:
    """What an encode run produced: how many codes, which items it could not read, and where the list went."""

    out: Path
    count: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_file: Optional[Path] = None
    resumed_at: int = 0


def encode_collection(
    source: ImageSource,
    model_dir: Path,
    out: Path,
    batch_size: int = 128,
    overwrite: bool = False,
    resume: bool = False,
    log: Callable[[str], None] = print,
    loading: Optional[LoadOptions] = None,
) -> EncodeResult:
    """Stream a collection through a model into a codes file.

    Codes are staged batch by batch in ``<out>.partial/`` (memory stays flat,
    and after a crash ``resume=True`` continues from the last batch); the
    codes file appears under its name only when complete, so an earlier file
    survives any failure. Items that cannot be decoded are skipped and listed
    with their reasons in the result and in ``<out>.skipped.tsv``; whether
    skips are acceptable is the caller's decision.

    ``loading`` says how images are decoded (draft JPEG decoding by default,
    ``exact=True`` for every pixel) and by how many workers, which decode the
    next batches while the model encodes this one. Batches are committed in
    source order whatever the workers, so the file is the one a serial run of
    the same decoding writes; a resume must use the decoding the job began with.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .codes.partial import PartialCodes, job_digest, write_skipped

    out = Path(out)
    positive("batch_size", batch_size)
    if out.is_dir():
        raise BrcdError(f"{out} is a folder; give a file name for the codes")
    loading = loading or LoadOptions()
    model, fingerprint = load_encoder(model_dir)
    decoder = loading.decoder()  # before anything is written: a decoding that cannot run here stops the job now
    metadata = {"model": str(model_dir), "arch": model.config.arch, "role": model.config.role, "data": source.name,
                "decode": decoder.name}
    size = model.config.image_size
    job = PartialCodes(out, model.config.bits, fingerprint, code_space_of(model.config, fingerprint),
                       digest=job_digest(source.ids, _job_description(size, fingerprint, decoder.name)),
                       total=len(source), metadata=metadata)
    start = 0
    if resume and job.exists():
        _check_decoding_of(job, source.ids, size, fingerprint, decoder.name)
        start = job.resume()
        log(f"resuming the interrupted encode of {out} at image {start} of {len(source)}")
    else:
        if job.exists() and not overwrite:
            raise BrcdError(f"an interrupted encode of {out} exists ({job.dir}); pass --resume to continue it or --force to start over")
        if out.exists() and not overwrite:
            raise BrcdError(f"{out} exists; pass --force to overwrite it" + (" (nothing to resume)" if resume else ""))
        if resume:
            log(f"no interrupted encode of {out} found; starting from the first image")
        _guard_write(out, lambda: job.start(replace_existing=overwrite))

    ids = source.ids
    with Progress(TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True,
                  console=Console(stderr=True), disable=len(source) < batch_size) as progress, \
            BatchStream(source, range(start, len(source)), size, batch_size, loading, decoder=decoder) as batches:
        task = progress.add_task("encode", total=len(source), completed=start)
        for batch in batches:
            packed = (packed_codes_of_images(model, batch.images, batch_size) if batch.ok
                      else np.zeros((0, model.config.bits // 8), np.uint8))
            skipped = [(ids[i], reason.removeprefix(f"cannot read image {ids[i]}: ")) for i, reason in batch.skipped]
            for item_id, reason in skipped:
                log(f"skipped {display_id(item_id)}: {reason}")
            next_index = int(batch.indices[-1]) + 1
            _guard_write(out, lambda: job.append(packed, [ids[i] for i in batch.ok], skipped, next_index=next_index))
            progress.advance(task, len(batch.indices))

    skipped = job.skipped()
    if job.state.count == 0 and len(source) > 0:
        job.discard()
        first = skipped[0][1] if skipped else "unknown reason"
        raise DataError(f"none of the {len(source)} images could be read (first reason: {first}); {out} was not written")
    _guard_write(out, job.finish)
    side = write_skipped(out, skipped)
    refresh_index(out, log)
    return EncodeResult(out=out, count=job.state.count, skipped=skipped, skipped_file=side, resumed_at=start)


#: How a user asks for each decoding on the command line.
_DECODING_FLAGS = {"draft": "the default", "exact": "--exact-decode", "cuda": "--decode-device cuda"}


def _job_description(image_size: int, fingerprint: str, decoding: str) -> dict[str, Any]:
    """What a resumed encode must share with the interrupted one. The exact decoding keeps the description
    encodes had before decodings had names, so their interrupted jobs still resume (with --exact-decode)."""
    description: dict[str, Any] = {"image_size": image_size, "model": fingerprint}
    if decoding != "exact":
        description["decode"] = decoding
    return description


def _check_decoding_of(job: Any, ids: Sequence[str], image_size: int, fingerprint: str, decoding: str) -> None:
    """Refuse, in words, to resume a job that another decoding began: its codes would differ from the rest."""
    from .codes.partial import job_digest
    from .data.loader import DECODINGS

    try:
        staged = json.loads((job.dir / "state.json").read_text(encoding="utf-8")).get("digest")
    except (OSError, ValueError, AttributeError):
        return  # the job's own resume names what is wrong with it
    if staged == job.digest:
        return
    for other in DECODINGS:
        if other != decoding and staged == job_digest(ids, _job_description(image_size, fingerprint, other)):
            raise BrcdError(f"the interrupted encode of {job.out} used the {other} decoding ({_DECODING_FLAGS[other]}); "
                            f"resume it with the same flags, or pass --force to start over")


def shard_path(out: Path, rank: int, size: int) -> Path:
    """Where rank ``rank`` of ``size`` writes its part of a sharded encode of ``out``."""
    out = Path(out)
    return out.with_name(f"{out.name}.shard-{rank:03d}-of-{size:03d}")


def encode_distributed(
    source: ImageSource,
    model_dir: Path,
    out: Path,
    world,
    batch_size: int = 128,
    overwrite: bool = False,
    resume: bool = False,
    log: Callable[[str], None] = print,
    loading: Optional[LoadOptions] = None,
) -> EncodeResult:
    """Encode under torchrun: each rank encodes a contiguous shard into its own codes file, then
    rank 0 concatenates the shards in rank order into ``out`` (atomically) and removes them.

    Contiguous shards in rank order reproduce the source order, so the result
    is the file a single process would have written: every image once, none
    missing. Each shard is staged and resumable like a normal encode, so
    ``resume=True`` after a crash redoes only what no rank had committed.
    """
    from . import distributed
    from .codes import concatenate_codes, read_codes
    from .codes.partial import partial_dir, read_skipped, skipped_path, write_skipped

    out = Path(out)
    shard = shard_path(out, world.rank, world.size)
    lo, hi = world.shard(len(source))

    def check() -> None:
        interrupted = any(shard_path(out, r, world.size).exists() or partial_dir(shard_path(out, r, world.size)).exists()
                          for r in range(world.size))
        if out.is_dir():
            raise BrcdError(f"{out} is a folder; give a file name for the codes")
        if out.exists() and not overwrite and not (resume and interrupted):
            raise BrcdError(f"{out} exists; pass --force to overwrite it")

    def encode_shard() -> tuple[int, list[tuple[str, str]]]:
        if resume and shard.exists() and not partial_dir(shard).exists():
            with read_codes(shard) as done:  # this shard had finished before the interruption
                count = done.count
            return count, read_skipped(shard)
        result = encode_collection(source.slice(lo, hi), model_dir, shard, batch_size=batch_size, overwrite=True,
                                   resume=resume, log=log, loading=loading)
        return result.count, result.skipped

    distributed.agree(world, check)
    count, skipped = distributed.agree(world, encode_shard)
    outcomes = distributed.gather_objects(world, (count, skipped))
    all_skipped = [item for _, part in outcomes for item in part]
    total = sum(c for c, _ in outcomes)
    def merge() -> Optional[Path]:
        if not world.is_main:
            return None
        parts = [shard_path(out, r, world.size) for r in range(world.size)]
        if total == 0:
            raise DataError(f"none of the {len(source)} images could be read; {out} was not written")
        _guard_write(out, lambda: concatenate_codes(parts, out, overwrite=True))
        side = write_skipped(out, all_skipped)
        for part in parts:
            part.unlink(missing_ok=True)
            skipped_path(part).unlink(missing_ok=True)
        log(f"merged {world.size} shards into {out}")
        refresh_index(out, log)
        return side

    side = distributed.agree(world, merge)
    return EncodeResult(out=out, count=total, skipped=all_skipped, skipped_file=skipped_path(out) if all_skipped else side)


def _guard_write(out: Path, action: Callable[[], None]) -> None:
    """A full disk or a read-only folder is the user's to fix: one line, and the earlier file is untouched."""
    try:
        action()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise BrcdError(
            f"cannot write {out}: {reason}; any earlier {out.name} is untouched and the codes encoded so far are kept, "
            "so rerun with --resume once the problem is fixed"
        ) from None


def display_id(item_id: str) -> str:
    """An id that is safe to print: undecodable bytes from non-UTF-8 file names shown as escapes."""
    return item_id.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_query_image(path: Path, size: int, exact_decode: bool = False):
    """Decode one query image to a uint8 tensor batch of one, or fail with one clear line.

    A JPEG is decoded at the smallest DCT scale that covers ``size``, as
    ``brcd encode`` decodes the collection (``exact_decode``: every pixel).
    """
    if not os.path.lexists(path):
        raise DataError(f"query image not found: {path}")
    try:
        image = read_image_file(Path(path), draft=None if exact_decode else size)
    except DataError as exc:
        raise DataError(str(exc).replace("cannot read image", "cannot read query image", 1)) from None
    return to_tensor(image, size).unsqueeze(0)


def encode_query(query: Path, model_dir: Path, exact_decode: bool = False) -> tuple[np.ndarray, int, str]:
    """The packed code of a query image, with the model's bit length and code space."""
    model, fingerprint = load_encoder(model_dir)
    packed = packed_codes_of_images(model, read_query_image(query, model.config.image_size, exact_decode))
    return packed, model.config.bits, code_space_of(model.config, fingerprint)


@dataclass
class QueryResult:
    """One query of a batch: its hits (with their positions in the collection), or why it could not be read."""

    query: Path
    hits: list[Hit] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    error: Optional[str] = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"query": str(self.query), "error": self.error}
        return {"query": str(self.query), "results": [h.to_dict() for h in self.hits]}


def expand_queries(paths: Sequence[Path]) -> list[Path]:
    """Query images from what the user named: image files, folders of them (recursively, sorted), or list files.

    A list file names one image per line, relative to the file, read as a
    data list file's line is (:func:`~brcd_cli.data.sources.split_list_line`:
    a path may hold spaces; labels after it, the deep-hashing layout, are
    ignored). A name that does not exist stays as it is, so that its search
    says it was not found.
    """
    from .data.sources import IMAGE_EXTENSIONS, find_images, split_list_line

    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = find_images(path)
            if not found:
                raise DataError(f"no query images found under {path} (a folder, not a regular file)")
            out += found
        elif path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read query list {path}: {exc}") from None
            out += [path.parent / split_list_line(line)[0] for line in lines if line.strip()]
        else:
            out.append(path)
    return out


def search_images(queries: Sequence[Path], source: Union[Path, str, Sequence[Path]], model_dir: Path, k: int = 10,
                  radius: Optional[int] = None, exact_scan: bool = False, collection: Optional[str] = None,
                  batch_size: int = 64, log: Callable[[str], None] = lambda _: None,
                  exact_decode: bool = False) -> list[QueryResult]:
    """Search with many query images in one process: the model and the collection are loaded once.

    Readable queries are encoded in batches and searched together; one that
    cannot be read gets its reason in its result and the others go on. The
    collection is opened as :func:`search_image` opens it. Queries are decoded
    as :func:`read_query_image` decodes them.
    """
    search.check_request(k, radius)
    positive("batch_size", batch_size)
    model, fingerprint = load_encoder(model_dir)
    size = model.config.image_size
    results = [QueryResult(Path(q)) for q in queries]
    with open_collection(source, collection=collection, use_index=not exact_scan, log=log) as codes:
        check_compatible(codes, model.config.bits, code_space_of(model.config, fingerprint))
        for start in range(0, len(results), batch_size):
            chunk, tensors = [], []
            for r in results[start : start + batch_size]:
                try:
                    tensors.append(read_query_image(r.query, size, exact_decode))
                    chunk.append(r)
                except DataError as exc:
                    r.error = str(exc)
            if not chunk:
                continue
            found = search.query(codes, packed_codes_of_images(model, torch.cat(tensors)), k=k, radius=radius)
            for q, r in enumerate(chunk):
                r.hits, r.positions = found.hits(q), found.row(q)[1].tolist()
    return results


def search_image(query: Path, source: Union[Path, str, Sequence[Path]], model_dir: Path, k: int = 10,
                 radius: Optional[int] = None, exact_scan: bool = False, collection: Optional[str] = None,
                 log: Callable[[str], None] = lambda _: None, exact_decode: bool = False) -> list[Hit]:
    """Encode ``query`` with the model, open the collection, search it: the hits, nearest first.

    ``source`` is what :func:`brcd_cli.search.open_collection` opens: a codes
    file (through its index when one suits the request; ``exact_scan`` scans
    regardless, with the same hits), several codes files searched as one, or a
    Milvus URI with ``collection``. Codes of another code space are refused,
    and so is a query that cannot be read (a DataError saying why).
    """
    result = search_images([query], source, model_dir, k, radius, exact_scan, collection, log=log,
                           exact_decode=exact_decode)[0]
    if result.error is not None:
        raise DataError(result.error)
    return result.hits

"""The user-level operations behind ``brcd encode`` and ``brcd search``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .data import ImageSource, load_batch_tolerant, read_image_file, to_tensor
from .encoding import packed_codes_of_images
from .errors import BrcdError, DataError
from .models import code_space_of, load_model
from .search import Hit, check_compatible, knn, within_radius


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
) -> EncodeResult:
    """Stream a collection through a model into a codes file.

    Codes are staged batch by batch in ``<out>.partial/`` (memory stays flat,
    and after a crash ``resume=True`` continues from the last batch); the
    codes file appears under its name only when complete, so an earlier file
    survives any failure. Items that cannot be decoded are skipped and listed
    with their reasons in the result and in ``<out>.skipped.tsv``; whether
    skips are acceptable is the caller's decision.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .codes.partial import PartialCodes, job_digest, skipped_path

    out = Path(out)
    if batch_size < 1:
        raise BrcdError(f"batch size must be >= 1, got {batch_size}")
    if out.is_dir():
        raise BrcdError(f"{out} is a folder; give a file name for the codes")
    model, fingerprint = load_model(model_dir)
    metadata = {"model": str(model_dir), "arch": model.config.arch, "role": model.config.role, "data": source.name}
    size = model.config.image_size
    job = PartialCodes(out, model.config.bits, fingerprint, code_space_of(model.config, fingerprint),
                       digest=job_digest(source.ids, {"image_size": size, "model": fingerprint}),
                       total=len(source), metadata=metadata)
    start = 0
    if resume and job.exists():
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
                  console=Console(stderr=True), disable=len(source) < batch_size) as progress:
        task = progress.add_task("encode", total=len(source), completed=start)
        for chunk_start in range(start, len(source), batch_size):
            chunk = range(chunk_start, min(chunk_start + batch_size, len(source)))
            images, ok, bad = load_batch_tolerant(source, chunk, size)
            packed = packed_codes_of_images(model, images, batch_size) if ok else np.zeros((0, model.config.bits // 8), np.uint8)
            skipped = [(ids[i], reason.removeprefix(f"cannot read image {ids[i]}: ")) for i, reason in bad]
            for item_id, reason in skipped:
                log(f"skipped {display_id(item_id)}: {reason}")
            _guard_write(out, lambda: job.append(packed, [ids[i] for i in ok], skipped, next_index=chunk.stop))
            progress.advance(task, len(chunk))

    skipped = job.skipped()
    if job.state.count == 0 and len(source) > 0:
        job.discard()
        first = skipped[0][1] if skipped else "unknown reason"
        raise DataError(f"none of the {len(source)} images could be read (first reason: {first}); {out} was not written")
    side = skipped_path(out)
    _guard_write(out, job.finish)
    if skipped:
        from .models.checkpoint import atomic_write_bytes

        table = "".join(f"{i}\t{r}\n" for i, r in skipped).encode("utf-8", "surrogateescape")
        atomic_write_bytes(side, b"id\treason\n" + table)
    elif side.exists():
        side.unlink()  # it described an earlier run of this output
    return EncodeResult(out=out, count=job.state.count, skipped=skipped, skipped_file=side if skipped else None, resumed_at=start)


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


def read_query_image(path: Path, size: int):
    """Decode one query image to a uint8 tensor batch of one, or fail with one clear line."""
    if not os.path.lexists(path):
        raise DataError(f"query image not found: {path}")
    try:
        image = read_image_file(Path(path))
    except DataError as exc:
        raise DataError(str(exc).replace("cannot read image", "cannot read query image", 1)) from None
    return to_tensor(image, size).unsqueeze(0)


def search_image(query: Path, codes_path: Path, model_dir: Path, k: int = 10, radius: Optional[int] = None) -> list[Hit]:
    """Encode ``query`` with the model and rank the codes file against it."""
    from .codes import read_codes

    model, fingerprint = load_model(model_dir)
    codes = read_codes(codes_path)
    try:
        check_compatible(codes.bits, codes.code_space, model.config.bits, code_space_of(model.config, fingerprint), str(codes_path))
        packed = packed_codes_of_images(model, read_query_image(query, model.config.image_size))
        if radius is not None:
            return within_radius(packed, np.asarray(codes.codes), codes.ids, radius)[0]
        return knn(packed, np.asarray(codes.codes), codes.ids, k)[0]
    finally:
        codes.close()

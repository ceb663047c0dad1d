"""The user-level operations behind ``brcd encode`` and ``brcd search``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .data import ImageSource, load_batch, to_tensor
from .encoding import encode_source, packed_codes_of_images
from .errors import BrcdError, DataError
from .models import code_space_of, load_model
from .search import Hit, check_compatible, knn, within_radius


def encode_collection(
    source: ImageSource,
    model_dir: Path,
    out: Path,
    batch_size: int = 128,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> int:
    """Stream a collection through a model into a codes file; returns the number of codes.

    Codes go to disk batch by batch (memory stays flat); the file appears under
    its name only when complete, so an interrupted run leaves any earlier file intact.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .codes import CodesWriter

    out = Path(out)
    if out.exists() and not overwrite:
        raise BrcdError(f"{out} exists; pass --force to overwrite it")
    if out.exists() and out.is_dir():
        raise BrcdError(f"{out} is a folder; give a file name for the codes")
    model, fingerprint = load_model(model_dir)
    indices = np.arange(len(source))
    metadata = {"model": str(model_dir), "arch": model.config.arch, "role": model.config.role, "data": source.name}
    with CodesWriter(out, bits=model.config.bits, producer=fingerprint, code_space=code_space_of(model.config, fingerprint),
                     overwrite=overwrite, metadata=metadata) as writer, Progress(
        TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True,
        console=None, disable=len(source) < batch_size,
    ) as progress:
        task = progress.add_task("encode", total=len(source))

        def on_batch(chunk: np.ndarray, packed: np.ndarray) -> None:
            writer.append(packed, [source.ids[int(i)] for i in chunk])
            progress.advance(task, len(chunk))

        encode_source(model, source, indices, batch_size=batch_size, on_batch=on_batch)
    return len(source)


def read_query_image(path: Path, size: int):
    """Decode one query image to a uint8 tensor batch of one, or fail with one clear line."""
    from PIL import Image, ImageOps

    if not Path(path).is_file():
        raise DataError(f"query image not found: {path}")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return to_tensor(im.convert("RGB"), size).unsqueeze(0)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise DataError(f"cannot read query image {path}: {exc}") from None


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

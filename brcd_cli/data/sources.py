"""Image collections behind the ``DATA`` argument.

A source is an ordered list of items (stable ids, optional multi-hot labels)
that can decode item ``i`` to a Pillow image on demand. Nothing is decoded up
front, so a source over a million files costs only its path list.

Decoding can be sized to the job: a model that sees 64 px needs nothing like
the 12 million pixels of a camera JPEG, and JPEG can be decoded at 1/2, 1/4 or
1/8 scale in the DCT domain (Pillow's draft mode) for a fraction of the cost
of a full decode. ``draft=N`` (N: the model's input size) asks for the
smallest such scale whose shorter side is still at least ``DRAFT_MARGIN`` x N,
so the resize and centre crop that follow see the same picture, only with
less to throw away. A drafted image carries, in
``info[DRAFT_BOX]``, the region that the whole picture covers in its pixels:
a scaled side rounds up to whole pixels (540 rows at 1/8 are 67.5), and
resizing from that region keeps the geometry of the full decode exactly.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from ..kernels._registry import BackendError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

# Pillow refuses images above this many pixels (decompression bombs) with an error.
Image.MAX_IMAGE_PIXELS = 89_478_485


def quiet_bomb_warnings() -> None:
    """Silence Pillow's DecompressionBombWarning (images between 1x and 2x ``MAX_IMAGE_PIXELS``), and only it.

    :func:`decode_image` checks the declared size itself and refuses such an image with a one-line
    DataError, so Pillow's two-line warning on stderr before it is noise. The filter is process-wide and
    installed once, when this module is imported (here, and in every worker process, which imports it to
    decode): ``warnings.catch_warnings`` around each ``Image.open`` would swap the global filter list from
    decoder threads at once, which is not thread-safe, and an installed filter is only read. It is scoped by
    category (nothing else is hidden); Pillow issues the warning from ``PIL.Image`` whoever called open,
    so no filter can tell brcd's opens from another library's in the same process. Idempotent.
    """
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


quiet_bomb_warnings()

#: A draft keeps the shorter side at least this many times the input size, so that Pillow's resize still
#: reduces by 2x or more with its own filter: on 200 real photographs at their own sizes a lite0 student's
#: codes moved 0.17 bits per code from the full decode's this way, 0.56 with a draft just covering the
#: input. A 12 MP photo is still decoded at 1/8 for any input up to 187 px, so it costs nothing there.
DRAFT_MARGIN = 2

#: ``info`` key of a drafted image: (left, top, right, bottom) of the whole picture in its pixels, upright.
DRAFT_BOX = "brcd_draft_box"
EXIF_ORIENTATION = 0x0112


@dataclass
class ImageSource:
    """An ordered image collection.

    ``labels`` is a multi-hot ``uint8`` array (n, C) or None when unlabelled.
    ``protocol`` optionally names predefined index groups (e.g. CIFAR-10's
    ``train``/``test``) that the split follows instead of a random one.
    """

    name: str
    ids: list[str]
    loader: Callable[[int], Image.Image]
    labels: Optional[np.ndarray] = None
    class_names: list[str] = field(default_factory=list)
    augment: str = "photo"
    protocol: dict[str, np.ndarray] = field(default_factory=dict)
    #: the image file of each item when items are files (folders, list files): a draft size is
    #: decoded from them, and decoders that read the bytes themselves (nvJPEG) start from them
    files: Optional[list[Path]] = None

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int, draft: Optional[int] = None) -> Image.Image:
        """Decode item ``i`` as RGB; any decoding problem becomes a DataError naming the item.

        With ``draft`` (the input size), a JPEG file may come back reduced (:func:`decode_image`).
        """
        try:
            image = read_image_file(self.files[i], draft) if draft and self.files is not None else self.loader(i)
            image = ImageOps.exif_transpose(image)
            return _to_8bit(image).convert("RGB")
        except DataError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError, EOFError) as exc:
            raise DataError(f"cannot read image {self.ids[i]!s}: {exc}") from None

    def slice(self, lo: int, hi: int) -> "ImageSource":
        """Items [lo, hi) as a source of their own (same name and recipe): one worker's shard."""
        loader = self.loader
        return ImageSource(
            name=self.name,
            ids=self.ids[lo:hi],
            loader=lambda i: loader(lo + i),
            labels=self.labels[lo:hi] if self.labels is not None else None,
            class_names=self.class_names,
            augment=self.augment,
            files=self.files[lo:hi] if self.files is not None else None,
        )

    def take(self, indices: Sequence[int]) -> "ImageSource":
        """The items at ``indices``, in that order, as a source of their own (same name and recipe): labels,
        files and protocol groups follow them (a group keeps the chosen items it held, renumbered)."""
        chosen = np.asarray(indices, dtype=np.int64)
        where = np.full(len(self.ids), -1, dtype=np.int64)
        where[chosen] = np.arange(len(chosen))
        loader = self.loader
        picked = chosen.tolist()
        return ImageSource(
            name=self.name,
            ids=[self.ids[i] for i in picked],
            loader=lambda j: loader(picked[j]),
            labels=self.labels[chosen] if self.labels is not None else None,
            class_names=self.class_names,
            augment=self.augment,
            protocol={name: where[group][where[group] >= 0] for name, group in self.protocol.items()},
            files=[self.files[i] for i in picked] if self.files is not None else None,
        )

    @property
    def labelled(self) -> bool:
        return self.labels is not None and self.labels.shape[0] == len(self.ids)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float images, which Pillow's RGB conversion would clip to white, scaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "I" or array.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.nan_to_num(array) * scale, 0, 255).astype(np.uint8), mode="L")
    return image


def read_image_file(path: Path, draft: Optional[int] = None) -> Image.Image:
    """Open one image file defensively; every refusal is a DataError saying why.

    Non-regular files are refused before opening (opening a FIFO would block
    forever); then :func:`decode_image` applies the decoding checks (and the
    ``draft`` size).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        reason = "broken symbolic link" if os.path.islink(path) else "file not found"
        raise DataError(f"cannot read image {path}: {reason}") from None
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"cannot read image {path}: not a regular file")
    if st.st_size == 0:
        raise DataError(f"cannot read image {path}: empty file")
    return decode_image(path, str(path), draft)


def decode_image(data: Union[Path, bytes], name: str, draft: Optional[int] = None) -> Image.Image:
    """Decode an image file or its bytes (an upload) to RGB, named ``name`` in every refusal.

    The declared size is checked before any pixel is decoded, so a
    decompression bomb costs nothing (and a draft cannot hide one: the check
    sees the full size); truncated data fails instead of being padded with
    grey. With ``draft`` (the input size the image is for), a JPEG is decoded
    at the smallest DCT scale (1/8, 1/4, 1/2) whose shorter side is still at
    least ``DRAFT_MARGIN * draft``; other formats decode in full. EXIF orientation is applied after decoding, which a draft
    does not disturb: a rotation swaps the sides but keeps the shorter one.
    """
    if isinstance(data, bytes) and not data:
        raise DataError(f"cannot read image {name}: empty file")
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            width, height = im.size
            if width * height > Image.MAX_IMAGE_PIXELS:
                raise DataError(
                    f"cannot read image {name}: {width}x{height} pixels is above the {Image.MAX_IMAGE_PIXELS:,} pixel limit "
                    "(possible decompression bomb)"
                )
            target = DRAFT_MARGIN * draft if draft else 0
            drafted = im.draft(None, (target, target)) if draft else None  # None for formats without DCT scaling
            eighth = _eighth_scale(im, data) if drafted is not None else None
            if eighth is None:
                im.load()
            if drafted is not None:
                orientation = im.getexif().get(EXIF_ORIENTATION, 1)
                if eighth is not None:
                    im = eighth
                im.info[DRAFT_BOX] = _oriented_box(drafted[1], im.size, orientation)
            im = ImageOps.exif_transpose(im)
            if im.mode == "P":
                im = im.convert("RGBA")
            return _to_8bit(im).convert("RGB")
    except (DataError, BackendError):  # a bad BRCD_JPEG_DECODER is the user's setting, not this image's fault
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"cannot read image {name}: {exc}") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {name}: not an image Pillow can decode") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"cannot read image {name}: {exc}") from None


def _eighth_scale(im: Image.Image, data: Union[Path, bytes]) -> Optional[Image.Image]:
    """The drafted JPEG ``im`` decoded by the native 1/8-scale decoder (:mod:`.jpeg_eighth`), or None where
    Pillow is to decode it: another scale, another format or mode, the decoder off, or a file it declines.
    The result is Pillow's draft pixel for pixel and carries ``im``'s metadata (EXIF orientation included)."""
    from . import jpeg_eighth

    config = getattr(im, "decoderconfig", None)
    if im.format not in ("JPEG", "MPO") or im.mode not in ("L", "RGB") or not config or config[0] != 8:
        return None
    if not jpeg_eighth.enabled():
        return None
    if isinstance(data, bytes):
        raw = data
    else:
        im.fp.seek(0)
        raw = im.fp.read()
    pixels, _ = jpeg_eighth.decode(raw)
    if pixels is None or pixels.shape[:2] != (im.size[1], im.size[0]) or (pixels.ndim == 3) != (im.mode == "RGB"):
        return None
    out = Image.fromarray(pixels)  # (H, W) is L, (H, W, 3) RGB
    out.info = dict(im.info)
    return out


def _oriented_box(box: tuple[float, float, float, float], size: tuple[int, int],
                  orientation: int) -> tuple[float, float, float, float]:
    """Where ``box`` of an image of ``size`` lies once EXIF ``orientation`` has turned the image upright
    (exif_transpose's flips and quarter turns, in continuous pixel coordinates)."""
    x0, y0, x1, y1 = box
    w, h = size
    return {
        2: (w - x1, y0, w - x0, y1),
        3: (w - x1, h - y1, w - x0, h - y0),
        4: (x0, h - y1, x1, h - y0),
        5: (y0, x0, y1, x1),
        6: (h - y1, x0, h - y0, x1),
        7: (h - y1, w - x1, h - y0, w - x0),
        8: (y0, w - x1, y1, w - x0),
    }.get(orientation, box)


def _path_loader(paths: Sequence[Path]) -> Callable[[int], Image.Image]:
    return lambda i: read_image_file(paths[i])


def _array_loader(images: np.ndarray) -> Callable[[int], Image.Image]:
    return lambda i: Image.fromarray(images[i])


def _one_hot(class_ids: np.ndarray, n_classes: int) -> np.ndarray:
    labels = np.zeros((len(class_ids), n_classes), dtype=np.uint8)
    labels[np.arange(len(class_ids)), class_ids] = 1
    return labels


def digits_source() -> ImageSource:
    """scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside its wheel, no download)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.clip(data.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    ids = [f"digits/{int(t)}/{i:04d}" for i, t in enumerate(data.target)]
    return ImageSource(
        name="digits",
        ids=ids,
        loader=_array_loader(images),
        labels=_one_hot(data.target.astype(np.int64), 10),
        class_names=[str(c) for c in range(10)],
        augment="digits",
    )


def synthetic_source(n: int = 200, n_classes: int = 4, size: int = 32, seed: int = 0) -> ImageSource:
    """Seeded synthetic images: each class is a fixed random colour layout plus per-image noise.

    Meant for unit tests that need control and speed, not realism. Images are
    generated on demand from (seed, index), so a source of a million items
    costs only its id list and memory stays flat however large ``n`` is.
    """
    if n <= 0 or n_classes <= 0:
        raise DataError("synthetic data needs n > 0 and classes > 0")
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(n_classes, 4, 4, 3)).astype(np.float32)
    class_ids = np.arange(n) % n_classes
    rng.shuffle(class_ids)
    block = max(1, size // 4)

    def load(i: int) -> Image.Image:
        item = np.random.default_rng((seed, i))
        coarse = prototypes[class_ids[i]] + item.normal(0, 24, size=(4, 4, 3))
        image = np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)
        image = image + item.normal(0, 12, size=image.shape)
        return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))

    ids = [f"synthetic/{int(c)}/{i:05d}" for i, c in enumerate(class_ids)]
    return ImageSource(
        name="synthetic",
        ids=ids,
        loader=load,
        labels=_one_hot(class_ids, n_classes),
        class_names=[str(c) for c in range(n_classes)],
        augment="photo",
    )


def find_images(root: Path) -> list[Path]:
    """All image files below ``root`` (recursive, symlinks followed once, sorted for stable order)."""
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:  # a symlink loop: do not walk it again
            dirnames[:] = []
            continue
        seen_dirs.add(key)
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found)


def folder_source(root: Path) -> ImageSource:
    """Images below a folder; the first-level subfolder name is the label when there is one."""
    paths = find_images(root)
    if not paths:
        raise DataError(f"no images found under {root}")
    rel = [p.relative_to(root) for p in paths]
    class_of = [r.parts[0] if len(r.parts) > 1 else None for r in rel]
    class_names = sorted({c for c in class_of if c is not None})
    labels = None
    if class_names:
        index = {c: j for j, c in enumerate(class_names)}
        labels = np.zeros((len(paths), len(class_names)), dtype=np.uint8)
        for i, c in enumerate(class_of):
            if c is not None:
                labels[i, index[c]] = 1
    return ImageSource(
        name=root.name or str(root),
        ids=[str(p) for p in paths],
        loader=_path_loader(paths),
        labels=labels,
        class_names=class_names,
        files=list(paths),
    )


def _is_integer(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def split_list_line(line: str) -> tuple[str, list[str]]:
    """One list-file line as (path, label fields); ``("", [])`` for a blank line.

    The deep-hashing layout is ``relative/path.jpg 0 1 0 ...``: the path, then an optional
    multi-hot label vector. A path may contain spaces (and any other character but a TAB and
    a line break), so the line is not split at every blank:

    * with a TAB, the path is everything before the first TAB and the labels are the fields after it;
    * without one, the labels are the trailing run of whitespace-separated integers and the path is
      the rest of the line, inner whitespace kept (``Kaffee tasse.jpg 0 1`` is ``Kaffee tasse.jpg``).

    Only the surrounding whitespace of the line and of the path is stripped. A line of integers
    only keeps its first field as the path. Where the path so found does not end in an image name but
    its first field does (``a.jpg 0 x 1``), that is a broken label vector, not a name with spaces: the
    label fields are everything after the first field, so that :func:`list_source` says they are not integers.
    """
    text = line.strip()
    if not text:
        return "", []
    if "\t" in text:
        path, _, rest = text.partition("\t")
        return path.strip(), rest.split()
    fields = list(re.finditer(r"\S+", text))
    n = len(fields)
    while n > 1 and _is_integer(fields[n - 1].group()):  # the first field is the path even if it is a number
        n -= 1
    path = text[: fields[n - 1].end()]
    labels = [f.group() for f in fields[n:]]
    first = fields[0].group()
    if n > 1 and Path(path).suffix.lower() not in IMAGE_EXTENSIONS and Path(first).suffix.lower() in IMAGE_EXTENSIONS:
        return first, [f.group() for f in fields[1:]]  # ``a.jpg 0 x 1``: bad labels, not a name with spaces
    return path, labels


def list_source(list_file: Path) -> ImageSource:
    """A deep-hashing list file: ``relative/path.jpg 0 1 0 ...`` (multi-hot), paths relative to the file.

    Each non-blank line is one image; :func:`split_list_line` says how a path with spaces is told from its labels.
    """
    base = list_file.parent
    paths: list[Path] = []
    rows: list[list[int]] = []
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read list file {list_file}: {exc}") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        path, fields = split_list_line(line)
        if not path:
            continue
        try:
            row = [int(v) for v in fields]
        except ValueError:
            raise DataError(f"{list_file}:{lineno}: labels must be integers 0/1, got {' '.join(fields)!r}") from None
        if rows and len(row) != len(rows[0]):
            raise DataError(f"{list_file}:{lineno}: expected {len(rows[0])} labels, found {len(row)}")
        paths.append(base / path)
        rows.append(row)
    if not paths:
        raise DataError(f"list file {list_file} names no images")
    labels = np.asarray(rows, dtype=np.uint8) if rows[0] else None
    return ImageSource(
        name=list_file.stem,
        ids=[str(p) for p in paths],
        loader=_path_loader(paths),
        labels=labels,
        class_names=[str(j) for j in range(labels.shape[1])] if labels is not None else [],
        files=list(paths),
    )


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: CIFAR batches need nothing else,
    and refusing every other global means a crafted file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            batch = _ArraysOnlyUnpickler(fh, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
    return data, labels


def cifar10_source(root: Path) -> ImageSource:
    """CIFAR-10 in its python-batches layout; the protocol keeps train and test apart."""
    train_files = [root / f"data_batch_{i}" for i in range(1, 6)]
    missing = [p.name for p in train_files + [root / "test_batch"] if not p.is_file()]
    if missing:
        raise DataError(f"{root} is not a complete CIFAR-10 python folder (missing {', '.join(missing)})")
    parts = [_read_cifar_batch(p) for p in train_files]
    test = _read_cifar_batch(root / "test_batch")
    images = np.concatenate([p[0] for p in parts] + [test[0]])
    targets = np.concatenate([p[1] for p in parts] + [test[1]])
    n_train = sum(len(p[1]) for p in parts)
    ids = [f"cifar10/train/{i:05d}" for i in range(n_train)] + [
        f"cifar10/test/{i:05d}" for i in range(len(test[1]))
    ]
    return ImageSource(
        name="cifar10",
        ids=ids,
        loader=_array_loader(images),
        labels=_one_hot(targets, 10),
        class_names=["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        protocol={"train": np.arange(n_train), "test": np.arange(n_train, len(ids))},
    )


def _embedded_name(spec: str) -> Optional[str]:
    """The embedded data set ``spec`` names (digits, photos[:N], synthetic[:N]), or None for a path."""
    name = spec.partition(":")[0]
    if spec == "digits" or (name in ("photos", "synthetic") and (spec == name or ":" in spec)):
        return name
    return None


def open_source(spec: str) -> ImageSource:
    """Resolve a ``DATA`` argument: ``digits``, ``synthetic[:N]``, ``photos[:N]``, a CIFAR-10 folder, an image folder or a list file.

    A name of an embedded data set that is also a path here is refused: a
    folder called ``photos`` in the working directory is far more likely what
    its owner means than the embedded photographs, and taking either silently
    would encode (or train on) the wrong images.
    """
    embedded = _embedded_name(spec)
    if embedded is not None and os.path.lexists(spec):
        raise DataError(f"{spec!r} names both brcd's embedded {embedded} data and the path {spec} here: "
                        f"write ./{spec} (or its full path) for yours, or run from another folder for the embedded one")
    if spec == "digits":
        return digits_source()
    if spec == "photos" or spec.startswith("photos:"):
        from .photos import photos_source  # photos builds on this module, so it is imported here

        _, _, n = spec.partition(":")
        try:
            n_per_class = int(n) if n else 25
        except ValueError:
            raise DataError(f"bad photos spec {spec!r}; use photos or photos:N (N items per class)") from None
        return photos_source(n_per_class=n_per_class)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        _, _, n = spec.partition(":")
        try:
            return synthetic_source(n=int(n) if n else 200)
        except ValueError:
            raise DataError(f"bad synthetic spec {spec!r}; use synthetic or synthetic:N") from None
    path = Path(spec)
    if not path.exists():
        raise DataError(
            f"data not found: {spec} (give a folder of images, a list file, a CIFAR-10 folder, "
            "'digits', 'synthetic[:N]' or 'photos[:N]')"
        )
    if path.is_dir():
        if (path / "data_batch_1").is_file():
            return cifar10_source(path)
        return folder_source(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise DataError(f"{spec} is a single image; give the folder or a list file that contains it")
    return list_source(path)

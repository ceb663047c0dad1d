"""``photos``: a seeded instance-retrieval set cut from real photographs that ship with installed wheels.

Why it exists: ``digits`` and ``synthetic`` are too small or too artificial to
say anything about photographs, and the real benchmarks need a download. The
photographs inside scikit-image's and scikit-learn's wheels are enough to
build a retrieval task whose positives are different views of one scene and
whose negatives include other parts of the same picture, with nothing fetched.

Classes: 20 photographs, each cut into two non-overlapping halves along its
longer side (left/right, or top/bottom when it is taller than wide), each half
its own class, so the two halves of one photograph are hard negatives of each
other: 40 classes.

* scikit-image (18): astronaut, brick, camera, cell, chelsea, clock_motion,
  coffee, coins, grass, gravel, hubble_deep_field, ihc, moon,
  motorcycle_left, page, retina, rocket, text
* scikit-learn (2): china, flower

Left out: color (a rendered colour wheel), chessboard, horse (a silhouette),
logo, phantom (synthetic), microaneurysms (102 px), motorcycle_right (the
other view of a stereo pair, a near duplicate of motorcycle_left), lfw_subset
(25 px faces) and every picture scikit-image would download.

The default is 25 items per class: 40 classes x 25 = 1,000 images at 96 px.
Each item is a random crop of its half (20-60 % of its area, aspect 3/4..4/3,
anywhere inside it) resized to ``size`` x ``size``, then photometric jitter
(brightness, contrast, saturation, hue shift, sometimes a gaussian blur,
rarely grayscale) and a JPEG re-compression at quality 50-95. Grayscale
photographs are converted to RGB.

Item ``k`` of a class is drawn from a generator seeded by (seed, class number,
k) alone, so any item can be regenerated on its own, the same id names the
same pixels whatever ``n_per_class`` is, and nothing is generated before it is
asked for. The decoded photographs (about 20 MB) are cached once per process.
"""
from __future__ import annotations

import importlib.util
import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ..errors import DataError
from .sources import ImageSource, _one_hot

#: (name, package, file inside that package's data folder), in class order.
PHOTOGRAPHS: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "skimage", "data/astronaut.png"),
    ("brick", "skimage", "data/brick.png"),
    ("camera", "skimage", "data/camera.png"),
    ("cell", "skimage", "data/cell.png"),
    ("chelsea", "skimage", "data/chelsea.png"),
    ("clock_motion", "skimage", "data/clock_motion.png"),
    ("coffee", "skimage", "data/coffee.png"),
    ("coins", "skimage", "data/coins.png"),
    ("grass", "skimage", "data/grass.png"),
    ("gravel", "skimage", "data/gravel.png"),
    ("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg"),
    ("ihc", "skimage", "data/ihc.png"),
    ("moon", "skimage", "data/moon.png"),
    ("motorcycle_left", "skimage", "data/motorcycle_left.png"),
    ("page", "skimage", "data/page.png"),
    ("retina", "skimage", "data/retina.jpg"),
    ("rocket", "skimage", "data/rocket.jpg"),
    ("text", "skimage", "data/text.png"),
    ("china", "sklearn", "datasets/images/china.jpg"),
    ("flower", "sklearn", "datasets/images/flower.jpg"),
)

_PIP_NAME = {"skimage": "scikit-image", "sklearn": "scikit-learn"}

# Crop and jitter ranges (see the module docstring).
CROP_AREA = (0.20, 0.60)
CROP_ASPECT = (3 / 4, 4 / 3)
BRIGHTNESS = (0.6, 1.4)
CONTRAST = (0.6, 1.4)
SATURATION = (0.6, 1.4)
HUE_SHIFT = 0.06  # at most this fraction of the colour circle either way
BLUR_PROBABILITY = 0.3
BLUR_RADIUS = (0.3, 1.5)  # in output pixels
GRAYSCALE_PROBABILITY = 0.1
JPEG_QUALITY = (50, 95)


@dataclass(frozen=True)
class _Region:
    """One class: a half of a photograph, as a (left, top, right, bottom) box in its pixels."""

    name: str
    photo: str
    box: tuple[int, int, int, int]


def _package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it (nothing of it runs)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the photos data set needs {_PIP_NAME[package]} (pip install {_PIP_NAME[package]})")
    return Path(list(spec.submodule_search_locations)[0])


_photo_lock = threading.Lock()
_photo_cache: dict[str, Image.Image] = {}


def _photograph(name: str) -> Image.Image:
    """The decoded RGB photograph ``name``, read from its wheel once per process."""
    with _photo_lock:
        if name in _photo_cache:
            return _photo_cache[name]
    package, relative = next((p, r) for n, p, r in PHOTOGRAPHS if n == name)
    path = _package_dir(package) / relative
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except OSError as exc:
        raise DataError(f"cannot read the {name} photograph of {_PIP_NAME[package]} ({path}): {exc}") from None
    with _photo_lock:
        return _photo_cache.setdefault(name, image)


def _halves(name: str, width: int, height: int) -> list[_Region]:
    """The two non-overlapping halves of a photograph along its longer side."""
    if width >= height:
        mid = width // 2
        return [_Region(f"{name}-left", name, (0, 0, mid, height)), _Region(f"{name}-right", name, (mid, 0, width, height))]
    mid = height // 2
    return [_Region(f"{name}-top", name, (0, 0, width, mid)), _Region(f"{name}-bottom", name, (0, mid, width, height))]


def _regions() -> list[_Region]:
    regions: list[_Region] = []
    for name, _, _ in PHOTOGRAPHS:
        photo = _photograph(name)
        regions.extend(_halves(name, photo.width, photo.height))
    return regions


def _crop_box(rng: np.random.Generator, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """A random crop of ``box``: area fraction and aspect from their ranges, placed anywhere inside."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    area = rng.uniform(*CROP_AREA) * width * height
    aspect = float(np.exp(rng.uniform(np.log(CROP_ASPECT[0]), np.log(CROP_ASPECT[1]))))
    w = int(round(np.sqrt(area * aspect)))
    h = int(round(np.sqrt(area / aspect)))
    w, h = max(1, min(w, width)), max(1, min(h, height))
    x = left + int(rng.integers(0, width - w + 1))
    y = top + int(rng.integers(0, height - h + 1))
    return x, y, x + w, y + h


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 256))) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def _render(rng: np.random.Generator, region: _Region, size: int) -> Image.Image:
    """One item: crop, resize, photometric jitter and a JPEG round trip, every choice drawn from ``rng``."""
    image = _photograph(region.photo).crop(_crop_box(rng, region.box)).resize((size, size), Image.BICUBIC)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(*BRIGHTNESS))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(*CONTRAST))
    image = ImageEnhance.Color(image).enhance(rng.uniform(*SATURATION))
    image = _shift_hue(image, rng.uniform(-HUE_SHIFT, HUE_SHIFT))
    # Every draw is made whether or not it is used, so the stream stays aligned across items.
    blur, radius = rng.random() < BLUR_PROBABILITY, rng.uniform(*BLUR_RADIUS)
    gray = rng.random() < GRAYSCALE_PROBABILITY
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    if gray:
        image = image.convert("L").convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def photos_source(n_per_class: int = 25, size: int = 96, seed: int = 0) -> ImageSource:
    """The ``photos`` instance-retrieval set: 40 classes (halves of 20 real photographs), ``n_per_class`` crops each.

    Items are ordered class by class; ids are ``photos/<class>/<k:04d>`` with
    ``k`` the item's number within its class. Nothing is rendered until an
    item is loaded, and item ``k`` of a class depends only on (seed, class, k).
    """
    if n_per_class <= 0:
        raise DataError("the photos data set needs at least 1 item per class")
    if size < 8:
        raise DataError(f"the photos data set needs an image size of at least 8 px, not {size}")
    regions = _regions()
    class_ids = np.repeat(np.arange(len(regions)), n_per_class)
    within = np.tile(np.arange(n_per_class), len(regions))

    def load(i: int) -> Image.Image:
        c, k = int(class_ids[i]), int(within[i])
        return _render(np.random.default_rng((seed, c, k)), regions[c], size)

    return ImageSource(
        name="photos",
        ids=[f"photos/{regions[c].name}/{k:04d}" for c, k in zip(class_ids, within)],
        loader=load,
        labels=_one_hot(class_ids, len(regions)),
        class_names=[r.name for r in regions],
        augment="photo",
    )


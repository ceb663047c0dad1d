"""`brcd bench duplicates`: brcd's near-duplicate search against imagededup's on the same seeded images, one run.

The images are made once (seeded) from the real photographs inside
scikit-image's and scikit-learn's wheels (:mod:`brcd_cli.data.photos`): every
photograph is cut into a grid of non-overlapping tiles, each tile a
**distinct** image; a seeded share of the tiles are **originals** that also get
near-duplicate copies, one of each kind:

* resized: scaled to half its side, saved as a smaller file;
* re-compressed: JPEG at quality 25;
* cropped: 6-12 % cut from each side, resized back;
* recoloured: brightness, saturation and hue shifted.

The true pairs are every two images of one family (an original and its
copies); any other pair found is a false positive, two tiles of one
photograph included. Both tools read the same files from disk:

* brcd, learned: ``encode_collection`` with a real pretrained model (by
  default tf_efficientnet_lite0 at 128 px with an ITQ head fitted on the
  ``photos`` data set, not on these images) and
  :func:`brcd_cli.duplicates.find_duplicates`. Its codes are semantic: two
  tiles of one photograph look alike to it, which is what costs it precision;
* brcd, perceptual: the same two calls with a built-in perceptual hasher
  (:mod:`brcd_cli.models.perceptual`, ``--model perceptual:dct64`` and
  ``perceptual:dct256``), which keeps the layout instead, as PHash does. A
  256-bit hasher's radii are the 64-bit ones times four, so one row of the
  table compares like with like;
* imagededup: PHash (64-bit DCT hashes) with its ``find_duplicates``, and its
  CNN (MobileNetV3 features, cosine similarity) when its weights can be had
  offline (they are downloaded on first use, so here it reports why not).

Each side is timed end to end (hashing the files, then finding the pairs),
and precision and recall of the pairs are reported over a sweep of each
tool's threshold (Hamming radius for brcd and PHash, cosine similarity for
the CNN), at each tool's default setting (a perceptual hasher's is PHash's
default scaled to its bits, not fitted here), and at the smallest radius
where each brcd side's precision and recall both reach PHash's at its
default, when there is one.
"""
from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import BrcdError
from ..options import at_least

COPIES = ("resized", "recompressed", "cropped", "recoloured")
PHASH_DEFAULT = 10  # imagededup's default max_distance_threshold for hashes
CNN_DEFAULT = 0.9  # imagededup's default min_similarity_threshold for CNN features


@dataclass(frozen=True)
class DuplicatesBenchConfig:
    """The images (grid of tiles per photograph, share of tiles that get copies, size), brcd's model and radius."""

    folder: Optional[Path] = None
    model: Optional[Path] = None
    grid: int = 3
    originals: float = 0.35
    size: int = 192
    radius: int = 8
    radii: tuple[int, ...] = tuple(range(0, 17))
    seed: int = 0
    use_imagededup: bool = True
    hashers: tuple[str, ...] = ("perceptual:dct64", "perceptual:dct256")

    def __post_init__(self) -> None:
        from ..models import perceptual

        for name in self.hashers:
            if perceptual.resolve(name) is None:
                raise BrcdError(f"{name} is not a perceptual hasher; built in: {', '.join(perceptual.names())}")
        at_least("grid", self.grid, 1)
        at_least("size", self.size, 32)
        at_least("radius", self.radius, 0)
        if not 0 < self.originals <= 1:
            raise BrcdError(f"--originals must be in (0, 1], got {self.originals}")


@dataclass
class NearDuplicateSet:
    """The files of the benchmark and the true pairs among them (by file name)."""

    folder: Path
    files: list[Path]
    truth: set[frozenset[str]] = field(default_factory=set)


def _copy(tile: "Image.Image", kind: str, rng: np.random.Generator) -> tuple["Image.Image", dict[str, Any]]:  # noqa: F821
    from PIL import Image, ImageEnhance

    from ..data.photos import _shift_hue

    if kind == "resized":
        return tile.resize((tile.width // 2, tile.height // 2), Image.BICUBIC), {"quality": 90}
    if kind == "recompressed":
        return tile, {"quality": 25}
    if kind == "cropped":
        w, h = tile.size
        cut = [int(rng.uniform(0.06, 0.12) * s) for s in (w, h, w, h)]
        return tile.crop((cut[0], cut[1], w - cut[2], h - cut[3])).resize(tile.size, Image.BICUBIC), {"quality": 90}
    image = ImageEnhance.Brightness(tile).enhance(rng.choice([0.8, 1.2]))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
    return _shift_hue(image, rng.uniform(-0.04, 0.04)), {"quality": 90}


def make_near_duplicates(folder: Path, grid: int = 3, originals: float = 0.35, size: int = 192,
                         seed: int = 0) -> NearDuplicateSet:
    """Write the seeded image set into ``folder`` (remade when its recipe changed) and return its truth."""
    import json

    from PIL import Image

    from ..data.photos import PHOTOGRAPHS, _photograph

    recipe = {"grid": grid, "originals": originals, "size": size, "seed": seed, "copies": list(COPIES), "version": 1}
    manifest = folder / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text())["recipe"] == recipe:
        doc = json.loads(manifest.read_text())
        return NearDuplicateSet(folder, [folder / f for f in doc["files"]], {frozenset(p) for p in doc["pairs"]})
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files: list[str] = []
    families: list[list[str]] = []
    for name, _, _ in PHOTOGRAPHS:
        photo = _photograph(name)
        for row in range(grid):
            for col in range(grid):
                box = (col * photo.width // grid, row * photo.height // grid,
                       (col + 1) * photo.width // grid, (row + 1) * photo.height // grid)
                tile = photo.crop(box).resize((size, size), Image.BICUBIC)
                stem = f"{name}-{row}{col}"
                tile.save(folder / f"{stem}.jpg", quality=92)
                files.append(f"{stem}.jpg")
                if rng.random() < originals:
                    family = [f"{stem}.jpg"]
                    for kind in COPIES:
                        copy, options = _copy(tile, kind, rng)
                        copy.save(folder / f"{stem}~{kind}.jpg", **options)
                        family.append(f"{stem}~{kind}.jpg")
                    files += family[1:]
                    families.append(family)
    pairs = [sorted((a, b)) for family in families for i, a in enumerate(family) for b in family[i + 1:]]
    manifest.write_text(json.dumps({"recipe": recipe, "files": sorted(files), "pairs": pairs}))
    return NearDuplicateSet(folder, sorted(folder / f for f in files), {frozenset(p) for p in pairs})


def scores(found: set[frozenset[str]], truth: set[frozenset[str]]) -> dict[str, Any]:
    """Precision and recall of the pairs found, and how many false pairs are two tiles of one photograph
    (distinct images of one scene: the hard negatives of this set)."""
    hit = len(found & truth)
    same_photo = sum(1 for pair in found - truth if len({name.split("-", 1)[0] for name in pair}) == 1)
    return {"pairs": len(found), "true_pairs": hit, "precision": round(hit / len(found), 4) if found else None,
            "recall": round(hit / len(truth), 4) if truth else None, "false_same_photograph": same_photo}


def default_model(work: Path, log: Callable[[str], None]) -> Path:
    """tf_efficientnet_lite0 at 128 px, ImageNet weights (offline), 64 bits with an ITQ head fitted on ``photos``."""
    from ..data import photos_source
    from ..training import FitOptions, TeacherOptions, train_teacher

    folder = work / "lite0-128-itq64"
    if not (folder / "config.json").is_file():
        options = TeacherOptions(arch="tf_efficientnet_lite0", bits=64, image_size=128, pretrained="auto", method="itq",
                                 fit=FitOptions(epochs=1, batch_size=64))
        train_teacher(photos_source(), folder, options, force=True, log=log)
    return folder


def _times(t0: float, t1: float, t2: float) -> dict[str, float]:
    """A side's seconds from three clock readings: hashing the files (t0..t1), finding the pairs (t1..t2), both."""
    return {"encode_seconds": round(t1 - t0, 3), "search_seconds": round(t2 - t1, 3), "seconds": round(t2 - t0, 3)}


def _brcd(data: NearDuplicateSet, model: Path, work: Path, radii: tuple[int, ...],
          log: Callable[[str], None], out_name: str = "bench.codes") -> dict[str, Any]:
    """One brcd side, learned model or perceptual hasher alike: encode the folder, find the pairs, score the sweep."""
    from ..codes import read_codes
    from ..data import open_source
    from ..duplicates import find_duplicates
    from ..pipeline import encode_collection

    out = work / out_name
    t0 = time.perf_counter()
    encode_collection(open_source(str(data.folder)), model, out, batch_size=64, overwrite=True, log=lambda _: None)
    t1 = time.perf_counter()
    report = find_duplicates(out, max(radii))
    t2 = time.perf_counter()
    with read_codes(out) as codes:
        names = [Path(i).name for i in codes.ids]
    found = [(frozenset((names[a], names[b])), int(d)) for (a, b), d in zip(report.pairs.tolist(), report.pair_distances)]
    sweep = {r: scores({p for p, d in found if d <= r}, data.truth) for r in radii}
    return {**_times(t0, t1, t2), "sweep": sweep}


def _quiet_imagededup() -> None:
    """imagededup's modules log every step at INFO on their own handlers; only its warnings belong in a report."""
    import logging

    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("imagededup") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.WARNING)


def _imagededup_phash(data: NearDuplicateSet, radii: tuple[int, ...]) -> dict[str, Any]:
    from imagededup.methods import PHash

    _quiet_imagededup()
    hasher = PHash(verbose=False)
    t0 = time.perf_counter()
    encodings = hasher.encode_images(image_dir=str(data.folder), recursive=False)
    t1 = time.perf_counter()
    found = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=max(radii), scores=True)
    t2 = time.perf_counter()
    pairs = {frozenset((a, b)): int(d) for a, hits in found.items() for b, d in hits}
    sweep = {r: scores({p for p, d in pairs.items() if d <= r}, data.truth) for r in radii}
    return {**_times(t0, t1, t2), "sweep": sweep}


def _imagededup_cnn(data: NearDuplicateSet) -> dict[str, Any]:
    import contextlib
    import sys

    try:
        from imagededup.methods import CNN

        _quiet_imagededup()
        with contextlib.redirect_stdout(sys.stderr):  # its weight download talks on stdout, where --json goes
            hasher = CNN(verbose=False)
    except Exception as exc:  # its weights come from a download; offline that fails in its own way
        return {"available": False, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    t0 = time.perf_counter()
    encodings = hasher.encode_images(image_dir=str(data.folder), recursive=False)
    t1 = time.perf_counter()
    found = hasher.find_duplicates(encoding_map=encodings, min_similarity_threshold=0.5, scores=True)
    t2 = time.perf_counter()
    pairs = {frozenset((a, b)): float(s) for a, hits in found.items() for b, s in hits}
    thresholds = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
    sweep = {t: scores({p for p, s in pairs.items() if s >= t}, data.truth) for t in thresholds}
    return {"available": True, **_times(t0, t1, t2), "sweep": sweep}


def _perceptual(data: NearDuplicateSet, name: str, work: Path, radii: tuple[int, ...],
                log: Callable[[str], None]) -> dict[str, Any]:
    """A perceptual hasher's side: radii scaled to its bits (x4 for 256), its suggested radius recorded."""
    from ..models import perceptual

    hasher = perceptual.resolve(name)
    assert hasher is not None  # the config checked the name
    scale = max(1, hasher.spec.bits // 64)
    side = _brcd(data, Path(name), work, tuple(r * scale for r in radii), log, out_name=f"{hasher.spec.name}.codes")
    return {"bits": hasher.spec.bits, "radius_scale": scale, "default_radius": hasher.spec.radius, **side}


def _dominating(brcd: dict[str, Any], phash: dict[str, Any]) -> Optional[int]:
    """The smallest radius at which brcd's precision and recall both reach PHash's at its default threshold."""
    ref = phash["sweep"].get(PHASH_DEFAULT)
    if not ref or ref["precision"] is None:
        return None
    for r, s in sorted(brcd["sweep"].items()):
        if s["precision"] is not None and s["precision"] >= ref["precision"] and s["recall"] >= ref["recall"]:
            return r
    return None


def run_duplicates_bench(config: DuplicatesBenchConfig, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Make (or reuse) the images, run brcd and imagededup on them, and report pairs, precision, recall and time."""
    from .. import __version__
    from .search import cpu_model

    work = config.folder or Path(tempfile.gettempdir()) / "brcd-bench-duplicates"
    data = make_near_duplicates(work / "images", config.grid, config.originals, config.size, config.seed)
    radii = tuple(sorted(set(config.radii) | {config.radius, PHASH_DEFAULT}))
    log(f"{len(data.files)} images, {len(data.truth)} true pairs, in {data.folder}")
    model = config.model or default_model(work, log)
    report: dict[str, Any] = {
        "images": len(data.files), "true_pairs": len(data.truth), "folder": str(data.folder), "model": str(model),
        "radius": config.radius, "brcd_version": __version__, "cpu": cpu_model(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    report["brcd"] = _brcd(data, model, work, radii, log)
    report["brcd_perceptual"] = {name: _perceptual(data, name, work, radii, log) for name in config.hashers}
    report["imagededup_phash"] = report["imagededup_cnn"] = None
    if config.use_imagededup:
        try:
            import imagededup

            report["imagededup_version"] = imagededup.__version__
        except ImportError:
            report["imagededup_version"] = None
            log("imagededup is not installed (pip install -e '.[bench]'); measuring brcd alone")
        if report["imagededup_version"]:
            report["imagededup_phash"] = _imagededup_phash(data, radii)
            report["imagededup_cnn"] = _imagededup_cnn(data)
            report["brcd_radius_matching_phash"] = _dominating(report["brcd"], report["imagededup_phash"])
            for side in report["brcd_perceptual"].values():
                side["radius_matching_phash"] = _dominating(side, report["imagededup_phash"])
    return report


def _at(sweep: dict[Any, Any], radius: int) -> Optional[dict[str, Any]]:
    """A sweep's entry for ``radius`` whether the keys are ints (a fresh report) or strings (one read back from JSON)."""
    return sweep.get(radius) or sweep.get(str(radius))


def format_report(report: dict[str, Any]) -> list[str]:
    """The report as lines: settings, times, and precision/recall over the sweep side by side.

    Rows are 64-bit radii; a 256-bit side's cell holds its radius four times the row's, as it was swept.
    """
    lines = [f"{report['images']} images, {report['true_pairs']} true pairs ({report['folder']}); brcd model {report['model']}",
             f"cpu: {report['cpu']}; load average: {report['load_average']}"]
    sides: list[tuple[str, dict[str, Any], int]] = [(f"brcd {Path(report['model']).name}", report["brcd"], 1)]
    for name, side in (report.get("brcd_perceptual") or {}).items():
        scale = int(side.get("radius_scale", 1))
        sides.append((f"brcd {name}" + (f" (r x{scale})" if scale > 1 else ""), side, scale))
    if report.get("imagededup_phash"):
        sides.append((f"imagededup {report['imagededup_version']} PHash", report["imagededup_phash"], 1))
    for name, side, _ in sides:
        lines.append(f"{name}: {side['seconds']:.2f} s ({side['encode_seconds']:.2f} s hashing, "
                     f"{side['search_seconds']:.2f} s finding pairs)")
    lines.append("radius  " + "  ".join(f"{name[:26]:>26}" for name, _, _ in sides) + "   (pairs, precision, recall)")
    for r in sorted(report["brcd"]["sweep"], key=int):
        cells = []
        for _, side, scale in sides:
            s = _at(side["sweep"], int(r) * scale)
            cells.append("-" if s is None else
                         f"{s['pairs']:>8} {s['precision'] if s['precision'] is not None else '-':>8} {s['recall']:>8}")
        mark = "  <- brcd --radius" if int(r) == report["radius"] else ("  <- PHash default" if int(r) == PHASH_DEFAULT else "")
        lines.append(f"{int(r):>6}  " + "  ".join(f"{c:>26}" for c in cells) + mark)
    cnn = report.get("imagededup_cnn")
    if cnn is not None:
        lines.append("imagededup CNN: " + (f"{cnn['seconds']:.2f} s; " + ", ".join(
            f">= {t}: P {s['precision']} R {s['recall']}" for t, s in cnn["sweep"].items())
            if cnn["available"] else f"not available ({cnn['reason']})"))
    at = _at(report["brcd"]["sweep"], report["radius"])
    lines.append(f"brcd at radius {report['radius']}: {at['false_same_photograph']} of its "
                 f"{at['pairs'] - at['true_pairs']} false pairs are two tiles of one photograph")
    phash = report.get("imagededup_phash")
    if phash:
        ref = _at(phash["sweep"], PHASH_DEFAULT)
        lines.append(f"imagededup PHash at its default threshold {PHASH_DEFAULT}: P {ref['precision']} R {ref['recall']}")
    if "brcd_radius_matching_phash" in report:
        r = report["brcd_radius_matching_phash"]
        lines.append("brcd reaches PHash's precision and recall (at its default threshold "
                     f"{PHASH_DEFAULT}) " + (f"from radius {r}" if r is not None else "at no radius"))
    for name, side in (report.get("brcd_perceptual") or {}).items():
        default = _at(side["sweep"], side["default_radius"])
        line = f"brcd {name} at its default radius {side['default_radius']}: " + (
            f"P {default['precision']} R {default['recall']}" if default else "not swept")
        if "radius_matching_phash" in side:
            r = side["radius_matching_phash"]
            line += "; reaches PHash's precision and recall " + (
                f"from radius {r} (P {_at(side['sweep'], r)['precision']} R {_at(side['sweep'], r)['recall']})"
                if r is not None else "at no radius")
        lines.append(line)
    return lines

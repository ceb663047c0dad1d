"""`brcd bench encode`: how fast ``brcd encode`` turns camera-sized JPEGs into codes, and where the time goes.

The network's own speed says little about an encode of real photographs: a
12-megapixel JPEG costs far more to decode than a 64 px forward. This
benchmark makes (once, seeded) a folder of large JPEGs from the real
photographs that ship inside scikit-image's and scikit-learn's wheels, each
cropped to a camera's aspect, upscaled with Pillow to a camera's size,
sharpened, and given sensor-like noise (luma and coarser chroma) so that at
quality 92 the files are as large as a camera's (3-5 MB at 12 MP). Then, in
one run and on the same files:

* network only: the model's forward on decoded images in memory;
* the split, per image on one thread: decode (draft and exact), resize and
  crop, forward;
* end to end: ``encode_collection`` of the folder for each decoding, serial
  (``workers=0``) and parallel, in images/s of wall time and CPU time per
  image (the CPU time is what a machine shared with other work cannot hide);
* the draft decoding twice where brcd's own 1/8-scale JPEG decoder is on:
  with it (``draft``) and with Pillow decoding every file (``draft-pillow``),
  whose codes files must be byte-identical (it decodes Pillow's pixels);
* whether each decoding's parallel codes file is byte-identical to its serial
  one, and how far the draft decoding's codes are from the exact one's (bits
  changed per code), on this folder and on 200 real pictures at their own
  sizes (the photographs, whole and cropped, never resized).

``distinct`` pictures are generated and the folder holds ``images`` paths to
them (hard links, cycling), so a long run costs little disk: every path is
decoded in full each time, as a distinct file would be.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import BrcdError
from ..options import at_least, within

#: Camera-sized outputs, cycled: 12 MP landscape and portrait first, then other common sensor sizes.
DEFAULT_SIZES = ((4000, 3000), (3000, 4000), (4032, 3024), (2592, 1944), (1920, 1080))
FOLDER_VERSION = 1
NETWORK_REPEATS = 3
WARM_FORWARDS = 3  # TorchScript's profiling executor settles after a few runs
NATIVE_CROPS = 9  # per photograph, beside the whole one: 200 real pictures at their own sizes


@dataclass(frozen=True)
class EncodeBenchConfig:
    """What to encode with, and the folder of JPEGs to make."""

    model: Optional[Path] = None  # None: a pretrained tf_efficientnet_lite0 student at 64 px, built here
    folder: Optional[Path] = None  # where the JPEGs go (default: a folder under the system's temp folder)
    images: int = 240
    distinct: int = 24
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    quality: int = 92
    batch_size: int = 32
    workers: Optional[int] = None  # parallel rows (default: one per core)
    decodings: tuple[str, ...] = ("draft", "exact")
    split_images: int = 8
    native_crops: int = NATIVE_CROPS
    seed: int = 0
    threads: Optional[int] = None  # torch's threads in every row; None: every core, and encode's own choice end to end

    def validate(self) -> None:
        from ..data.loader import DECODINGS

        for name in ("images", "distinct", "batch_size", "split_images"):
            at_least(name, getattr(self, name), 1)
        at_least("workers", self.workers, 1, optional=True)
        at_least("threads", self.threads, 1, optional=True)
        at_least("native_crops", self.native_crops, 0)
        within("quality", self.quality, 1, 100)
        if not self.sizes or any(w < 16 or h < 16 for w, h in self.sizes):
            raise BrcdError("--sizes needs at least one WIDTHxHEIGHT of 16 pixels or more a side")
        unknown = [d for d in self.decodings if d not in DECODINGS]
        if unknown or not self.decodings:
            raise BrcdError(f"unknown decoding {', '.join(unknown) or '(none)'}; choose from {', '.join(DECODINGS)}")


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``4000x3000,1920x1080`` -> ((4000, 3000), (1920, 1080)), refused in one line when malformed."""
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        w, sep, h = part.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit():
            raise BrcdError(f"--sizes takes WIDTHxHEIGHT[,WIDTHxHEIGHT...], got {part!r}")
        sizes.append((int(w), int(h)))
    return tuple(sizes)


# -- the folder of JPEGs -------------------------------------------------------------------------------

def camera_jpeg(photo_name: str, width: int, height: int, quality: int, rng: np.random.Generator) -> bytes:
    """One embedded photograph as a camera would save it: cropped to the aspect, upscaled, sharpened, noisy."""
    import io

    from PIL import Image, ImageFilter

    from ..data.photos import _photograph

    photo = _photograph(photo_name)
    w, h = photo.size
    if w / h > width / height:  # wider than the camera: keep the centre columns
        cw = h * width / height
        box = ((w - cw) / 2, 0.0, (w + cw) / 2, float(h))
    else:
        ch = w * height / width
        box = (0.0, (h - ch) / 2, float(w), (h + ch) / 2)
    big = photo.resize((width, height), Image.BICUBIC, box=box)
    big = big.filter(ImageFilter.UnsharpMask(radius=4, percent=80, threshold=2))
    pixels = np.asarray(big, dtype=np.float32)
    pixels = pixels + rng.standard_normal((height, width, 1), dtype=np.float32) * 5.0  # luma grain
    chroma = rng.standard_normal(((height + 1) // 2, (width + 1) // 2, 3), dtype=np.float32) * 2.0
    pixels += chroma.repeat(2, axis=0).repeat(2, axis=1)[:height, :width]  # coarser colour noise
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_folder(config: EncodeBenchConfig, log: Callable[[str], None] = lambda _: None) -> Path:
    """The folder of JPEGs for ``config``, made once: a manifest names what it holds, so a rerun reuses it."""
    from ..atomic import atomic_write_bytes, atomic_write_json
    from ..data.photos import PHOTOGRAPHS

    folder = Path(config.folder) if config.folder else Path(tempfile.gettempdir()) / "brcd-bench-encode"
    want = {"version": FOLDER_VERSION, "seed": config.seed, "quality": config.quality, "distinct": config.distinct,
            "images": config.images, "sizes": [list(s) for s in config.sizes]}
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text(encoding="utf-8")) == want:
                return folder
        except (OSError, ValueError):
            pass
    if folder.exists() and any(p.name != "manifest.json" and p.suffix != ".jpg" for p in folder.iterdir()):
        raise BrcdError(f"{folder} holds files other than a bench folder's; choose another --folder")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    manifest.unlink(missing_ok=True)
    names = [name for name, _, _ in PHOTOGRAPHS]
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    sources = []
    for k in range(config.distinct):
        width, height = config.sizes[k % len(config.sizes)]
        name = names[int(rng.integers(len(names)))]
        path = folder / f"distinct-{k:04d}-{name}-{width}x{height}.jpg"
        atomic_write_bytes(path, camera_jpeg(name, width, height, config.quality, rng))
        sources.append(path)
    for i in range(config.images):
        source = sources[i % len(sources)]
        link = folder / f"{i:06d}.jpg"
        try:
            os.link(source, link)
        except OSError:  # a file system without hard links: a copy decodes the same
            link.write_bytes(source.read_bytes())
    for path in sources:
        path.unlink()  # the numbered links stay; encode sees exactly `images` files
    atomic_write_json(manifest, want)
    log(f"made {config.images} JPEGs over {config.distinct} distinct pictures in {folder} "
        f"({time.perf_counter() - started:.0f} s)")
    return folder


def native_folder(root: Path, quality: int, crops: int = NATIVE_CROPS, seed: int = 0) -> Path:
    """The embedded photographs at their own sizes as JPEG files, each whole and as ``crops`` seeded crops
    (40-100 % of a side, never resized): real pictures of 160-1400 px, drafted at 1/2..1/8 for a small input."""
    import io

    from ..atomic import atomic_write_bytes
    from ..data.photos import PHOTOGRAPHS, _photograph

    folder = root / f"native-{crops}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, _, _ in PHOTOGRAPHS:
        photo = _photograph(name)
        w, h = photo.size
        boxes = [(0, 0, w, h)]
        for _ in range(crops):
            f = rng.uniform(0.4, 1.0)
            cw, ch = int(w * f), int(h * f)
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            boxes.append((x, y, x + cw, y + ch))
        for k, box in enumerate(boxes):
            path = folder / f"{name}-{k}.jpg"
            if not path.is_file():
                buffer = io.BytesIO()
                photo.crop(box).save(buffer, format="JPEG", quality=quality)
                atomic_write_bytes(path, buffer.getvalue())
    return folder


# -- the model -----------------------------------------------------------------------------------------

def default_student(work: Path, seed: int, log: Callable[[str], None]) -> Path:
    """A tf_efficientnet_lite0 student at 64 px with 64 bits: ImageNet weights (offline), a seeded mlp head."""
    import torch

    from ..models import save_model
    from ..training.common import build_model

    folder = work / "student-lite0-64"
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    model = build_model("tf_efficientnet_lite0", 64, 64, "auto", True, log, role="student", head="mlp", hidden=512)
    save_model(model, folder)
    return folder


# -- measurements --------------------------------------------------------------------------------------

def _network_only(model: Any, images: "torch.Tensor", batch_size: int) -> float:  # noqa: F821
    """Images/s of the forward alone on decoded images in memory, best of a few passes."""
    from ..encoding import packed_codes_of_images

    packed_codes_of_images(model, images[:batch_size], batch_size)  # warm-up
    best = float("inf")
    for _ in range(NETWORK_REPEATS):
        t0 = time.perf_counter()
        packed_codes_of_images(model, images, batch_size)
        best = min(best, time.perf_counter() - t0)
    return images.shape[0] / best


#: The draft decoding again with Pillow decoding every JPEG, beside brcd's own 1/8-scale decoder
#: (data/jpeg_eighth.py): same pixels, so the same codes file byte for byte, and the difference is speed.
PILLOW_DRAFT = "draft-pillow"


def _rows_of(decodings: tuple[str, ...]) -> tuple[str, ...]:
    """The decodings measured: ``draft-pillow`` follows ``draft`` where the native decoder is on."""
    from ..data import jpeg_eighth

    out: list[str] = []
    for decoding in decodings:
        out.append(decoding)
        if decoding == "draft" and jpeg_eighth.enabled():
            out.append(PILLOW_DRAFT)
    return tuple(out)


def _as_decoding(decoding: str) -> tuple[str, Any]:
    """(the loader's decoding, a context that holds the JPEG decoder it needs) for a bench row."""
    from contextlib import nullcontext

    from ..data import jpeg_eighth

    if decoding == PILLOW_DRAFT:
        return "draft", jpeg_eighth.REGISTRY.forced("pillow")
    return decoding, nullcontext()


def _split(source: Any, size: int, count: int, decodings: tuple[str, ...], network: float) -> dict[str, dict[str, float]]:
    """Per image: milliseconds to decode and to resize and crop (one thread), and the forward's share of a batch."""
    from ..data.loader import to_tensor

    out: dict[str, dict[str, float]] = {}
    for row in decodings:
        decoding, held = _as_decoding(row)
        if decoding == "cuda":
            continue  # decoded and resized in one batched call on the device: no per-image split
        decode = resize = 0.0
        with held:
            for i in range(count):
                t0 = time.perf_counter()
                image = source.load(i, draft=size if decoding == "draft" else None)
                t1 = time.perf_counter()
                to_tensor(image, size)
                decode, resize = decode + t1 - t0, resize + time.perf_counter() - t1
        out[row] = {"decode_ms": 1000 * decode / count, "resize_ms": 1000 * resize / count,
                    "forward_ms": 1000 / network}
    return out


def _end_to_end(folder: Path, model_dir: Path, out: Path, batch_size: int, workers: int, decoding: str,
                startup: float = 0.0, threads: Optional[int] = None) -> dict[str, Any]:
    """One ``encode_collection`` of the folder: images/s of wall time (all of it, and without the one-off
    ``startup`` that a long encode amortises), CPU ms per image, the codes file, and torch's threads at the end.

    Each row starts from ``threads`` (None: every core) and, without it, lets the stream choose as
    ``brcd encode`` does, so a row never inherits the count the row before chose."""
    import torch

    from ..data.loader import LoadOptions
    from ..data.sources import folder_source
    from ..pipeline import encode_collection
    from ..threads import set_threads

    row = decoding
    decoding, held = _as_decoding(row)
    set_threads(threads)
    loading = LoadOptions(workers=workers, exact=decoding == "exact", device="cuda" if decoding == "cuda" else "cpu",
                          tune_threads=threads is None)
    source = folder_source(folder)
    with held:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = encode_collection(source, model_dir, out, batch_size=batch_size, overwrite=True, log=lambda _: None,
                                   loading=loading)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"decoding": row, "workers": workers, "images": result.count, "seconds": round(wall, 3),
            "images_per_s": round(result.count / wall, 2),
            "steady_images_per_s": round(result.count / (wall - startup), 2) if wall > startup else None,
            "cpu_ms_per_image": round(1000 * cpu / result.count, 2),
            "torch_threads": torch.get_num_threads(), "skipped": len(result.skipped)}


def _bits_changed(a: Path, b: Path) -> dict[str, float]:
    """How far codes file ``a`` is from ``b``, item by item: bits that differ per code."""
    from ..codes import read_codes

    with read_codes(a) as x, read_codes(b) as y:
        if list(x.ids) != list(y.ids):
            raise BrcdError(f"{a} and {b} hold different items")
        diff = np.unpackbits(np.bitwise_xor(np.asarray(x.codes), np.asarray(y.codes)), axis=1).sum(axis=1)
        bits = x.bits
    return {"bits": bits, "codes": int(diff.size), "mean_bits_changed": round(float(diff.mean()), 3) if diff.size else 0.0,
            "max_bits_changed": int(diff.max(initial=0)), "identical_share": round(float((diff == 0).mean()), 3) if diff.size else 1.0}


def run_encode_bench(config: EncodeBenchConfig, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Make (or reuse) the folder, then measure everything listed in the module docstring; returns the report."""
    import torch

    from ..data import jpeg_eighth
    from ..data.loader import BatchStream, LoadOptions, default_workers
    from ..data.sources import folder_source
    from ..encoding import packed_codes_of_images
    from ..models import load_encoder
    from ..models.checkpoint import read_config
    from ..threads import set_threads

    config.validate()
    set_threads(config.threads)
    for decoding in config.decodings:
        LoadOptions(device="cuda" if decoding == "cuda" else "cpu").decoder()  # refuse cuda without a GPU up front
    folder = make_folder(config, log)
    work = folder.parent / (folder.name + "-work")
    work.mkdir(exist_ok=True)
    model_dir = Path(config.model) if config.model else default_student(work, config.seed, log)
    model_config, _ = read_config(model_dir)
    size = model_config.image_size
    workers = config.workers or default_workers()
    source = folder_source(folder)
    with BatchStream(source, range(min(len(source), 2 * config.batch_size)), size, config.batch_size) as stream:
        decoded = torch.cat([b.images for b in stream])
    # what every encode pays once: loading the program, and the extra time of its first (profiling, optimising) forwards
    started = time.perf_counter()
    model, _ = load_encoder(model_dir)
    for _ in range(WARM_FORWARDS):
        packed_codes_of_images(model, decoded[: config.batch_size], config.batch_size)
    startup = time.perf_counter() - started

    log("measuring the network alone")
    network_threads = torch.get_num_threads()
    network = _network_only(model, decoded.repeat(max(1, 256 // max(1, len(decoded))), 1, 1, 1), config.batch_size)
    startup = max(0.0, startup - WARM_FORWARDS * min(config.batch_size, len(decoded)) / network)
    log("measuring decode / resize per image")
    measured = _rows_of(config.decodings)
    split = _split(source, size, min(config.split_images, len(source)), measured, network)

    rows, identical = [], {}
    for decoding in measured:
        files = {}
        for count in (0, workers):
            log(f"encoding the folder: {decoding} decoding, {count or 'no'} workers")
            files[count] = work / f"{decoding}-{count}.codes"
            rows.append(_end_to_end(folder, model_dir, files[count], config.batch_size, count, decoding, startup,
                                    config.threads))
        identical[decoding] = files[0].read_bytes() == files[workers].read_bytes()
    moved: dict[str, dict[str, Any]] = {}
    if {"draft", "exact"} <= set(config.decodings):
        native = native_folder(work, config.quality, config.native_crops, config.seed)
        for decoding in ("draft", "exact"):
            _end_to_end(native, model_dir, work / f"native-{decoding}.codes", config.batch_size, workers, decoding,
                        threads=config.threads)
        moved["draft_vs_exact"] = {
            "bench_folder": _bits_changed(work / "draft-0.codes", work / "exact-0.codes"),
            "native_photographs": _bits_changed(work / "native-draft.codes", work / "native-exact.codes"),
        }
    if {"cuda", "exact"} <= set(config.decodings):  # nvJPEG and the GPU's resize against Pillow's exact decode
        moved["cuda_vs_exact"] = {"bench_folder": _bits_changed(work / "cuda-0.codes", work / "exact-0.codes")}
    native_is_pillow = None
    if PILLOW_DRAFT in measured:  # the native decoder's codes against Pillow's, same decoding
        native_is_pillow = (work / "draft-0.codes").read_bytes() == (work / f"{PILLOW_DRAFT}-0.codes").read_bytes()

    sizes = sorted({p.stat().st_size for p in folder.glob("*.jpg")})
    return {
        "model": str(model_dir), "arch": model_config.arch, "image_size": size, "bits": model_config.bits,
        "pretrained": model_config.pretrained, "folder": str(folder), "images": len(source),
        "distinct": config.distinct, "sizes": ["%dx%d" % s for s in config.sizes], "quality": config.quality,
        "file_mb": {"min": round(sizes[0] / 1e6, 2), "max": round(sizes[-1] / 1e6, 2)},
        "batch_size": config.batch_size, "workers": workers, "torch_threads": network_threads,
        "network_images_per_s": round(network, 1), "split_ms": {d: {k: round(v, 2) for k, v in s.items()} for d, s in split.items()},
        "end_to_end": rows, "parallel_identical_to_serial": identical, "codes_moved": moved,
        "jpeg_decoder": jpeg_eighth.status(), "native_draft_identical_to_pillow": native_is_pillow,
        "startup_s": round(startup, 3),
        "cpu": _cpu_name(), "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_name() -> str:
    from .serve import _cpu_name as name

    return name()


def format_report(report: dict[str, Any]) -> list[str]:
    """Human-readable lines (the --json output carries the same numbers)."""
    lines = [
        f"{report['images']} JPEGs ({report['distinct']} distinct; {', '.join(report['sizes'])}; q{report['quality']}, "
        f"{report['file_mb']['min']}-{report['file_mb']['max']} MB) in {report['folder']}",
        f"model {report['model']} ({report['arch']} at {report['image_size']} px, {report['bits']} bits, "
        f"weights: {report['pretrained']}); {report['cpu']}, {report['cores']} cores, load {report['load_average'][0]}",
        f"network only          {report['network_images_per_s']:8.1f} images/s (batches of {report['batch_size']}, "
        f"{report['torch_threads']} threads)",
    ]
    for decoding, s in report["split_ms"].items():
        lines.append(f"per image, {decoding:12s} decode {s['decode_ms']:.1f} ms  resize {s['resize_ms']:.2f} ms "
                     f"(one thread)  forward {s['forward_ms']:.2f} ms (its share of a batch)")
    lines.append(f"end to end: brcd encode of the folder; steady: less the one-off start "
                 f"(loading the model and the extra time of its first forwards, {report['startup_s']:.2f} s)")
    for row in report["end_to_end"]:
        who = f"{row['workers']} workers" if row["workers"] else "serial"
        steady = f"{row['steady_images_per_s']:.1f}" if row["steady_images_per_s"] else "-"
        lines.append(f"  {row['decoding']:12s} {who:10s} {row['images_per_s']:8.1f} images/s (steady {steady})  "
                     f"{row['cpu_ms_per_image']:.1f} ms CPU per image  forward threads {row['torch_threads']}")
    lines.append("parallel == serial (bytes): " + ", ".join(f"{d} {'yes' if ok else 'NO'}"
                                                          for d, ok in report["parallel_identical_to_serial"].items()))
    lines.append(f"JPEG draft decoder: {report['jpeg_decoder']}")
    if report.get("native_draft_identical_to_pillow") is not None:
        same = "yes" if report["native_draft_identical_to_pillow"] else "NO"
        lines.append(f"draft codes, native decoder == Pillow (bytes): {same}")
    for pair, places in report["codes_moved"].items():
        for where, m in places.items():
            label = f"{pair.replace('_vs_', ' vs ')} codes, {where.replace('_', ' ')}"
            lines.append(f"{label}: {m['mean_bits_changed']:.2f} of {m['bits']} bits "
                         f"changed per code on average (max {m['max_bits_changed']}; {100 * m['identical_share']:.0f}% identical; "
                         f"{m['codes']} codes)")
    return lines


__all__ = ["EncodeBenchConfig", "camera_jpeg", "format_report", "make_folder", "parse_sizes", "run_encode_bench"]

"""The loader: draft JPEG decoding, the parallel batch stream, and the device decoder's path on the CPU."""
from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from brcd_cli.codes import read_codes
from brcd_cli.data import decode_image, read_image_file, synthetic_source, to_tensor
from brcd_cli.data.loader import (DECODINGS, ORIENTATIONS, BatchStream, DeviceJpegDecoder, LoadOptions, crop_box,
                                  resize_crop)
from brcd_cli.data.sources import DRAFT_MARGIN, ImageSource, folder_source
from brcd_cli.errors import DataError, OptionError
from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
from conftest import TINY_ARCH, run_cli

QUIET = lambda message: None  # noqa: E731
# torchvision 0.29 warns that its image decoders move to TorchCodec; they are what the device decoder calls
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
HAS_CUDA = torch.cuda.is_available()


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth picture with some texture, so that resizing and JPEG behave as on a photograph."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    noise = rng.normal(0, 8, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **save)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """JPEGs of several sizes and orientations, a PNG, and two unreadable files."""
    root = tmp_path_factory.mktemp("loader") / "images"
    root.mkdir()
    for i, (w, h) in enumerate([(1600, 1200), (1200, 1600), (900, 300), (640, 480), (300, 200), (1024, 1024)]):
        (root / f"{i:02d}.jpg").write_bytes(_jpeg(_photo(w, h, seed=i)))
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "06_rotated.jpg").write_bytes(_jpeg(_photo(1200, 400, seed=6), exif=exif))
    _photo(500, 400, seed=7).save(root / "07.png")
    (root / "08_truncated.jpg").write_bytes(_jpeg(_photo(800, 600, seed=8))[:2000])
    (root / "09_empty.jpg").write_bytes(b"")
    for i in range(10, 22):
        (root / f"{i:02d}.jpg").write_bytes(_jpeg(_photo(720, 540, seed=i)))
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loader-teacher") / "teacher"
    options = TeacherOptions(arch=TINY_ARCH, bits=16, image_size=32, pretrained="none", seed=0,
                             fit=FitOptions(epochs=1, batch_size=16, lr=1e-3, seed=0))
    train_teacher(synthetic_source(n=48, n_classes=4), out, options, log=QUIET)
    return out


# -- draft decoding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,expect", [(64, (200, 150)), (75, (200, 150)), (76, (400, 300)), (150, (400, 300)),
                                         (151, (800, 600)), (300, (800, 600)), (301, (1600, 1200))])
def test_draft_takes_the_smallest_dct_scale_that_covers_twice_the_input(size: int, expect: tuple[int, int]):
    data = _jpeg(_photo(1600, 1200))
    image = decode_image(data, "x", draft=size)
    assert image.size == expect and min(image.size) >= DRAFT_MARGIN * size and image.mode == "RGB"
    assert decode_image(data, "x").size == (1600, 1200)


@pytest.mark.parametrize("width,height,size", [(1000, 130, 64), (130, 1000, 64), (4000, 3000, 224), (515, 515, 64)])
def test_draft_keeps_the_shorter_side_at_least_the_input(width: int, height: int, size: int):
    image = decode_image(_jpeg(_photo(width, height)), "x", draft=size)
    assert min(image.size) >= min(DRAFT_MARGIN * size, width, height)
    assert to_tensor(image, size).shape == (3, size, size)


def test_draft_gives_nearly_the_pixels_of_a_full_decode():
    data = _jpeg(_photo(1600, 1200, seed=3))
    for size in (32, 64, 128):
        draft = to_tensor(decode_image(data, "x", draft=size), size).float()
        exact = to_tensor(decode_image(data, "x"), size).float()
        assert (draft - exact).abs().mean() < 3.0, size  # out of 255


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_draft_keeps_the_full_decodes_geometry_when_a_side_is_not_a_whole_number_of_blocks(orientation: int):
    """723 x 541 at 1/8 is 90.375 x 67.625 pixels: the picture's own extent, turned upright, drives the resize."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(_photo(723, 541, seed=orientation), exif=exif)
    drafted = decode_image(data, "x", draft=32)
    assert drafted.size in ((91, 68), (68, 91))
    for size in (32, 64):
        diff = to_tensor(decode_image(data, "x", draft=size), size).float() - to_tensor(decode_image(data, "x"), size).float()
        assert diff.abs().mean() < 1.0, size


def test_draft_leaves_other_formats_alone():
    buffer = io.BytesIO()
    _photo(400, 300).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), "x", draft=32).size == (400, 300)


def test_exif_orientation_survives_the_draft(tmp_path: Path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "r.jpg"
    path.write_bytes(_jpeg(_photo(1200, 400), exif=exif))
    drafted, full = read_image_file(path, draft=64), read_image_file(path)
    assert full.size == (400, 1200) and drafted.size == (200, 600)
    diff = to_tensor(drafted, 64).float() - to_tensor(full, 64).float()
    assert diff.abs().mean() < 3.0


def test_the_bomb_check_sees_the_full_size_not_the_draft(monkeypatch: pytest.MonkeyPatch):
    data = _jpeg(_photo(800, 800))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300)  # the 1/4 draft (200 x 200) would pass
    with pytest.raises(DataError, match="decompression bomb"):
        decode_image(data, "big.jpg", draft=64)


def test_a_source_of_files_decodes_the_draft_and_one_of_arrays_ignores_it(folder: Path):
    source = folder_source(folder)
    first = source.ids.index(str(folder / "00.jpg"))
    assert source.load(first, draft=64).size == (200, 150) and source.load(first).size == (1600, 1200)
    part = source.slice(first, first + 1)
    assert part.load(0, draft=64).size == (200, 150)
    arrays = synthetic_source(n=4, size=32)
    assert arrays.load(0, draft=8).size == arrays.load(0).size


# -- the batch stream ------------------------------------------------------------------------------------

def _collect(source: ImageSource, options: LoadOptions, batch_size: int = 4):
    with BatchStream(source, range(len(source)), 32, batch_size, options) as stream:
        batches = list(stream)
    return (torch.cat([b.images for b in batches]), [i for b in batches for i in b.ok],
            [s for b in batches for s in b.skipped], [b.indices.tolist() for b in batches])


@pytest.mark.parametrize("exact", [False, True])
def test_parallel_stream_equals_the_serial_one(folder: Path, exact: bool):
    source = folder_source(folder)
    serial = _collect(source, LoadOptions(workers=0, exact=exact))
    for workers, prefetch in ((1, 1), (3, 2), (8, 4)):
        parallel = _collect(source, LoadOptions(workers=workers, exact=exact, prefetch=prefetch))
        assert torch.equal(serial[0], parallel[0]) and serial[1:] == parallel[1:], (workers, prefetch)
    images, ok, skipped, chunks = serial
    assert len(ok) == len(source) - 2 and sorted(source.ids[i].rsplit("/", 1)[-1] for i, _ in skipped) == [
        "08_truncated.jpg", "09_empty.jpg"]
    assert [len(c) for c in chunks] == [4] * 5 + [2]


def test_draft_and_exact_streams_differ_only_slightly(folder: Path):
    source = folder_source(folder)
    draft, exact = _collect(source, LoadOptions(workers=2)), _collect(source, LoadOptions(workers=2, exact=True))
    assert draft[1:] == exact[1:] and not torch.equal(draft[0], exact[0])
    assert (draft[0].float() - exact[0].float()).abs().mean() < 3.0


def test_an_intolerant_stream_raises_the_first_bad_item_in_order(folder: Path):
    source = folder_source(folder)
    with pytest.raises(DataError, match="08_truncated.jpg"):
        with BatchStream(source, range(len(source)), 32, 4, LoadOptions(workers=3), tolerant=False) as stream:
            list(stream)


class _Counting:
    """A loader that counts the items decoded, so a test can see how far the workers ran ahead."""

    def __init__(self, n: int) -> None:
        self.started = 0
        self.lock = threading.Lock()
        self.base = synthetic_source(n=n, size=16)

    def __call__(self, i: int) -> Image.Image:
        with self.lock:
            self.started += 1
        return self.base.loader(i)


def test_the_stream_runs_a_bounded_number_of_batches_ahead():
    counting = _Counting(400)
    source = ImageSource(name="counting", ids=counting.base.ids, loader=counting)
    options = LoadOptions(workers=4, prefetch=2)
    consumed = 0
    with BatchStream(source, range(400), 16, 10, options) as stream:
        for batch in stream:
            consumed += len(batch.indices)
            # decoded ahead: at most the batches in flight besides this one
            assert counting.started - consumed <= options.prefetch * 10
    assert consumed == 400 and counting.started == 400


def test_leaving_a_stream_early_stops_its_workers():
    counting = _Counting(2000)
    source = ImageSource(name="counting", ids=counting.base.ids, loader=counting)
    with BatchStream(source, range(2000), 16, 10, LoadOptions(workers=3)) as stream:
        next(iter(stream))
    assert counting.started <= 40  # the first batch and the ones in flight, not the collection
    assert not [t for t in threading.enumerate() if t.name.startswith(("brcd-decode", "brcd-batch"))]


def test_load_options_check_themselves():
    with pytest.raises(OptionError, match="workers >= 0"):
        LoadOptions(workers=-1)
    with pytest.raises(OptionError, match="decode_device must be one of cpu, cuda"):
        LoadOptions(device="tpu")
    assert LoadOptions().decoding == "draft" and LoadOptions(exact=True).decoding == "exact"
    assert LoadOptions(device="cuda").decoding == "cuda" and LoadOptions().worker_count >= 1
    assert set(DECODINGS) == {"draft", "exact", "cuda"}


# -- the device decoder, on the CPU ----------------------------------------------------------------------

def _cpu_device_decoder() -> DeviceJpegDecoder:
    from torchvision.io import ImageReadMode, decode_jpeg

    return DeviceJpegDecoder(torch.device("cpu"), lambda blobs: decode_jpeg(blobs, mode=ImageReadMode.RGB),
                             pin_memory=False)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientations_turn_a_tensor_as_pillow_turns_the_image(orientation: int):
    rng = np.random.default_rng(orientation)
    array = rng.integers(0, 255, size=(5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    want = np.asarray(ImageOps.exif_transpose(image))
    got = ORIENTATIONS[orientation](torch.from_numpy(array).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.array_equal(got, want)


def test_resize_crop_has_to_tensors_geometry():
    image = _photo(900, 300, seed=2)
    box = crop_box(900, 300, 64)
    assert (box.width, box.height, box.left, box.top, box.upscale) == (192, 64, 64, 0, False)
    torch_side = resize_crop(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), 64).float()
    assert (torch_side - to_tensor(image, 64).float()).abs().mean() < 2.5


def test_device_decoder_path_matches_the_exact_cpu_decoding(folder: Path):
    source = folder_source(folder)
    device = _collect_with(source, _cpu_device_decoder())
    exact = _collect(source, LoadOptions(workers=0, exact=True))
    assert device[1:] == exact[1:]  # the same items read, the same skipped with the same reasons
    assert (device[0].float() - exact[0].float()).abs().mean() < 2.5
    png = [j for j, i in enumerate(device[1]) if source.ids[i].endswith(".png")][0]
    assert torch.equal(device[0][png], exact[0][png])  # not a JPEG: decoded by Pillow, exactly


def test_device_decoder_falls_back_to_pillow_when_the_batched_call_fails(folder: Path):
    source = folder_source(folder)
    real = _cpu_device_decoder()
    calls = []

    def flaky(blobs):
        calls.append(len(blobs))
        if len(blobs) > 1 or len(calls) % 2:
            raise RuntimeError("nvjpeg: bad batch")
        return real.decode(blobs)

    decoder = DeviceJpegDecoder(torch.device("cpu"), flaky, pin_memory=False)
    got = _collect_with(source, decoder)
    exact = _collect(source, LoadOptions(workers=0, exact=True))
    assert got[1:] == exact[1:] and (got[0].float() - exact[0].float()).abs().mean() < 2.5


def _collect_with(source: ImageSource, decoder: DeviceJpegDecoder):
    with BatchStream(source, range(len(source)), 32, 4, LoadOptions(workers=2), decoder=decoder) as stream:
        batches = list(stream)
    return (torch.cat([b.images for b in batches]), [i for b in batches for i in b.ok],
            [s for b in batches for s in b.skipped], [b.indices.tolist() for b in batches])


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_decoding_without_a_gpu_is_one_clear_line(folder: Path, teacher: Path, tmp_path: Path, capsys):
    out = tmp_path / "codes.bin"
    code, _, err = run_cli(["encode", str(folder), "--model", str(teacher), "--out", str(out),
                            "--decode-device", "cuda"], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: --decode-device cuda needs a CUDA GPU")
    assert not out.exists() and not (tmp_path / "codes.bin.partial").exists()


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible")
def test_nvjpeg_decoding_matches_the_exact_cpu_decoding(folder: Path):
    source = folder_source(folder)
    decoder = LoadOptions(device="cuda").decoder()
    got = _collect_with(source, decoder)
    exact = _collect(source, LoadOptions(workers=0, exact=True))
    assert got[1:] == exact[1:]
    assert (got[0].float() - exact[0].float()).abs().mean() < 3.0
    assert decoder._buffer is not None and decoder._buffer.is_pinned()


# -- encode through the loader ---------------------------------------------------------------------------

def _encode(folder: Path, teacher: Path, out: Path, capsys, *flags: str) -> bytes:
    code, _, err = run_cli(["encode", str(folder), "--model", str(teacher), "--out", str(out), "--batch-size", "4",
                            "--skip-bad", "--force", *flags], capsys)
    assert code == 0, err
    return out.read_bytes()


def test_encode_is_byte_identical_serial_or_parallel(folder: Path, teacher: Path, tmp_path: Path, capsys):
    for decoding in ([], ["--exact-decode"]):
        serial = _encode(folder, teacher, tmp_path / "serial.bin", capsys, "--workers", "0", *decoding)
        parallel = _encode(folder, teacher, tmp_path / "parallel.bin", capsys, "--workers", "3", *decoding)
        assert serial == parallel
    with read_codes(tmp_path / "serial.bin") as codes:
        assert codes.metadata["decode"] == "exact" and codes.count == 20
    with read_codes(_default(folder, teacher, tmp_path, capsys)) as codes:
        assert codes.metadata["decode"] == "draft"


def _default(folder: Path, teacher: Path, tmp_path: Path, capsys) -> Path:
    _encode(folder, teacher, tmp_path / "default.bin", capsys)
    return tmp_path / "default.bin"


def test_a_resume_keeps_the_decoding_it_began_with(folder: Path, teacher: Path, tmp_path: Path, capsys,
                                                    monkeypatch: pytest.MonkeyPatch):
    from brcd_cli import pipeline

    clean = _encode(folder, teacher, tmp_path / "clean.bin", capsys, "--exact-decode")
    out = tmp_path / "codes.bin"
    real = pipeline.packed_codes_of_images
    calls = []

    def dies_on_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "packed_codes_of_images", dies_on_the_third_batch)
    code, _, _ = run_cli(["encode", str(folder), "--model", str(teacher), "--out", str(out), "--batch-size", "4",
                          "--exact-decode", "--workers", "2"], capsys)
    assert code == 130
    monkeypatch.setattr(pipeline, "packed_codes_of_images", real)
    state = json.loads((tmp_path / "codes.bin.partial" / "state.json").read_text())
    assert state["next_index"] == 8
    code, _, err = run_cli(["encode", str(folder), "--model", str(teacher), "--out", str(out), "--resume"], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 1 and "used the exact decoding (--exact-decode)" in last
    assert _encode(folder, teacher, out, capsys, "--resume", "--exact-decode", "--workers", "3") == clean


def test_search_decodes_the_query_as_encode_decoded_the_collection(folder: Path, teacher: Path, tmp_path: Path,
                                                                   capsys):
    codes = _default(folder, teacher, tmp_path, capsys)
    query = folder / "00.jpg"
    code, out, err = run_cli(["search", str(query), "--codes", str(codes), "--model", str(teacher), "-k", "20",
                              "--json"], capsys)
    assert code == 0, err
    hits = json.loads(out)["results"]
    assert any(h["id"] == str(query) and h["distance"] == 0 for h in hits)
    code, _, err = run_cli(["search", str(query), "--codes", str(codes), "--model", str(teacher), "--exact-decode"],
                           capsys)
    assert code == 0, err

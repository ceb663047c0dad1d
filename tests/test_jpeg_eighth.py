"""brcd's own 1/8-scale JPEG decoder gives Pillow's draft pixels exactly, or declines and leaves the file to Pillow.

The reference is Pillow itself (libjpeg-turbo asked for scale 1/8): real photographs from the wheels in every
chroma subsampling, quality, Huffman-table and restart layout, greyscale, odd sizes and EXIF orientations; then
thousands of corrupted files, where the decoder must either decline or still agree with Pillow; the same
mutations under AddressSanitizer and UndefinedBehaviorSanitizer in a C++ driver; and that driver built for AArch64
under qemu-user, whose pictures must match this machine's.
"""
from __future__ import annotations

import io
import itertools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brcd_cli.data import jpeg_eighth
from brcd_cli.data.photos import PHOTOGRAPHS, _photograph
from brcd_cli.data.sources import DRAFT_BOX, decode_image, read_image_file
from brcd_cli.errors import BrcdError
from brcd_cli.kernels._registry import ChoiceError
from conftest import run_cli

pytestmark = pytest.mark.skipif(jpeg_eighth.REGISTRY.status("native") != "available",
                                reason=f"native JPEG decoder: {jpeg_eighth.REGISTRY.status('native')}")

CSRC = Path(__file__).resolve().parent.parent / "csrc"


#: Small real JPEGs to mutate: every chroma layout, a restart interval, optimised tables, greyscale.
SEEDS = (("astronaut", {"quality": 90}),
         ("coffee", {"quality": 60, "subsampling": 0, "restart_marker_blocks": 3}),
         ("camera", {"quality": 80}),
         ("chelsea", {"quality": 95, "subsampling": 1, "optimize": True}))


def _seeds(width: int, height: int) -> list[bytes]:
    return [_jpeg(_photograph(name).crop((0, 0, width, height)), **options) for name, options in SEEDS]


def _camera_folder(folder: Path, names, rng: np.random.Generator, subsampling=lambda k: 2) -> list[Path]:
    """The bench's camera-like JPEGs (upscaled, sharpened, noisy) at 1600 x 1200: a 64 px hasher drafts them at 1/8."""
    from brcd_cli.bench.encode import camera_jpeg

    folder.mkdir()
    paths = []
    for k, name in enumerate(names):
        with Image.open(io.BytesIO(camera_jpeg(name, 1600, 1200, 90, rng))) as im:
            paths.append(folder / f"{k}-{name}.jpg")
            im.save(paths[-1], quality=90, subsampling=subsampling(k))
    return paths


@pytest.fixture
def native_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A spy on the native decoder: one entry (the input's length) per call, the call itself unchanged."""
    calls: list[int] = []
    real = jpeg_eighth.decode
    monkeypatch.setattr(jpeg_eighth, "decode", lambda data: (calls.append(len(data)), real(data))[1])
    return calls


def _pillow_eighth(data: bytes) -> np.ndarray:
    """Pillow's pixels at scale 1/8 (what a draft of a large JPEG for a small model gets)."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft(None, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
        assert im.decoderconfig[0] == 8
        im.load()
        return np.asarray(im).copy()


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def _crops(seed: int):
    """Seeded crops (half to all of each side, so odd sizes and partial MCUs) of every embedded photograph."""
    rng = np.random.default_rng(seed)
    for name, _, _ in PHOTOGRAPHS:
        photo = _photograph(name)
        w, h = photo.size
        cw, ch = int(rng.integers(w // 2, w + 1)), int(rng.integers(h // 2, h + 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        yield name, photo.crop((x, y, x + cw, y + ch)), rng


@pytest.mark.parametrize("subsampling", [0, 1, 2], ids=["444", "422", "420"])
def test_equal_to_pillow_on_real_photographs(subsampling: int) -> None:
    """Byte for byte, across qualities, optimised Huffman tables, restart intervals and greyscale."""
    layouts = list(itertools.product((35, 75, 92, 100), (False, True), (None, "blocks", "rows")))
    checked = declined = 0
    for k, (name, crop, rng) in enumerate(_crops(subsampling)):
        for quality, optimize, restart in layouts[k % 3 :: 3]:
            image = crop.convert("L") if (k + quality) % 5 == 0 else crop
            options = {"quality": quality, "subsampling": subsampling, "optimize": optimize}
            if restart == "blocks":
                options["restart_marker_blocks"] = int(rng.integers(1, 20))
            elif restart == "rows":
                options["restart_marker_rows"] = int(rng.integers(1, 4))
            data = _jpeg(image, **options)
            pixels, why = jpeg_eighth.decode(data)
            if pixels is None:
                declined += 1
                continue
            expected = _pillow_eighth(data)
            assert pixels.shape == expected.shape, (name, options)
            assert np.array_equal(pixels, expected), (name, options, image.mode)
            checked += 1
    assert declined == 0 and checked == 20 * 8


def test_declines_what_it_does_not_take_and_pillow_still_decodes_it() -> None:
    photo = _photograph("coffee").crop((0, 0, 300, 200))
    cases = {
        "progressive": (_jpeg(photo, quality=90, progressive=True), "not a baseline"),
        "cmyk": (_jpeg(photo.convert("CMYK"), quality=90), "Adobe"),
        "not a jpeg": (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "no SOI"),
        "cut short": (_jpeg(photo, quality=90)[:5000], "ends early"),
    }
    for case, (data, reason) in cases.items():
        pixels, why = jpeg_eighth.decode(data)
        assert pixels is None and reason in why, (case, why)
    # through decode_image these fall back to Pillow, which decodes what it can as before
    for case in ("progressive", "cmyk"):
        drafted = decode_image(cases[case][0], case, draft=8)
        assert drafted.size == (38, 25)
    with pytest.raises(BrcdError):
        decode_image(cases["cut short"][0], "cut", draft=8)


def test_mutated_files_decline_or_agree_with_pillow() -> None:
    """Corrupted bytes anywhere (headers, tables, entropy data, markers, truncation): never a different picture."""
    seeds = _seeds(200, 150)
    rng = np.random.default_rng(7)
    agreed = declined = 0
    for it in range(2000):
        data = bytearray(seeds[it % len(seeds)])
        kind = it % 4
        if kind == 0:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(2, len(data)))] = int(rng.integers(256))
        elif kind == 1:
            del data[int(rng.integers(2, len(data))):]
        elif kind == 2:
            at = int(rng.integers(2, len(data)))
            data[at:at] = rng.integers(0, 256, int(rng.integers(1, 8))).astype(np.uint8).tobytes()
        else:
            data[int(rng.integers(2, 700))] = int(rng.integers(256))
        pixels, _ = jpeg_eighth.decode(bytes(data))
        if pixels is None:
            declined += 1
            continue
        expected = _pillow_eighth(bytes(data))  # Pillow must decode what the native decoder decoded
        assert np.array_equal(pixels, expected), it
        agreed += 1
    assert agreed > 500 and declined > 500  # both sides of the contract were exercised


def test_decode_image_and_files_unchanged_by_the_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole draft path (EXIF orientation, draft box, files and uploads) gives the same image either way."""
    photo = _photograph("astronaut").crop((0, 0, 480, 320))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = _jpeg(photo, quality=90, exif=exif.tobytes())
        path = tmp_path / f"o{orientation}.jpg"
        path.write_bytes(data)
        results = {}
        for choice in ("pillow", "auto"):
            monkeypatch.setenv(jpeg_eighth.ENV_VAR, choice)
            results[choice] = [decode_image(data, "upload", draft=8), read_image_file(path, draft=8)]
        for pillow, native in zip(results["pillow"], results["auto"]):
            assert pillow.size == native.size and pillow.mode == native.mode == "RGB"
            assert np.array_equal(np.asarray(pillow), np.asarray(native)), orientation
            assert pillow.info[DRAFT_BOX] == native.info[DRAFT_BOX]


def test_it_runs_where_it_applies(monkeypatch: pytest.MonkeyPatch, native_calls: list[int]) -> None:
    """A spy on the native call: taken for a 1/8 draft, not for other scales or with the variable set to pillow."""
    data = _jpeg(_photograph("chelsea"), quality=85)  # 451 x 300
    monkeypatch.setenv(jpeg_eighth.ENV_VAR, "auto")
    assert decode_image(data, "x", draft=8).size == (57, 38) and len(native_calls) == 1  # 1/8
    assert decode_image(data, "x", draft=64).size == (226, 150) and len(native_calls) == 1  # 1/2: Pillow
    monkeypatch.setenv(jpeg_eighth.ENV_VAR, "pillow")
    assert decode_image(data, "x", draft=8).size == (57, 38) and len(native_calls) == 1
    assert "pillow" in jpeg_eighth.status()


def test_bad_variable_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(_jpeg(_photograph("coffee"), quality=85))
    monkeypatch.setenv(jpeg_eighth.ENV_VAR, "turbo")
    with pytest.raises(ChoiceError, match="'turbo'.*BRCD_JPEG_DECODER"):
        decode_image((folder / "a.jpg").read_bytes(), "a", draft=8)
    code, out, err = run_cli(["encode", str(folder), "--model", "perceptual:dct64", "--out", str(tmp_path / "c.bin")], capsys)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "'turbo'" in err and "BRCD_JPEG_DECODER" in err and "native, pillow" in err
    assert not (tmp_path / "c.bin").exists()
    code, out, _ = run_cli(["info"], capsys)
    assert code == 0 and "'turbo'" in out and "BRCD_JPEG_DECODER=turbo" in out


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_fuzz_driver_under_sanitizers(tmp_path: Path) -> None:
    """The C++ driver mutates real JPEGs and decodes them with AddressSanitizer and UBSan watching every access."""
    exe = tmp_path / "jpeg_fuzz"
    cmd = ["g++", "-O1", "-g", "-std=c++17", "-Wall", "-Wextra", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=all", f"-I{CSRC}", str(CSRC / "tests" / "jpeg_fuzz.cpp"), "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if built.returncode != 0 and "sanitize" in built.stderr:
        pytest.skip("this g++ has no sanitizer runtime")
    assert built.returncode == 0, built.stderr[-3000:]
    seeds = _seed_files(tmp_path)
    done = subprocess.run([str(exe), "6000", "1", *map(str, seeds)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rounds, declined, decoded = (int(x) for x in done.stdout.split()[1:7:2])
    assert rounds == 6000 and declined > 0 and decoded > 0


def _seed_files(folder: Path) -> list[Path]:
    out = []
    for k, data in enumerate(_seeds(120, 88)):
        out.append(folder / f"seed{k}.jpg")
        out[-1].write_bytes(data)
    return out


def test_aarch64_build_decodes_as_this_machine_does(tmp_path: Path) -> None:
    """The decoder cross-compiled for AArch64 and run under qemu-user gives the same pictures and refusals as here:
    the fuzz driver's digest covers every decoded pixel and every refusal over 1,500 mutated files."""
    from test_native_arm import AARCH64_SYSROOT, CROSS_CXX, QEMU, _missing_cross_tools

    missing = _missing_cross_tools()
    if missing or shutil.which("g++") is None:
        pytest.skip(missing or "g++ not installed")
    driver = str(CSRC / "tests" / "jpeg_fuzz.cpp")
    seeds = [str(p) for p in _seed_files(tmp_path)]
    outputs = []
    for compiler, exe, runner in (("g++", tmp_path / "fuzz_here", []),
                                  (CROSS_CXX, tmp_path / "fuzz_arm64", [QEMU, "-L", str(AARCH64_SYSROOT)])):
        built = subprocess.run([compiler, "-O2", "-std=c++17", f"-I{CSRC}", driver, "-o", str(exe)],
                               capture_output=True, text=True, timeout=600)
        assert built.returncode == 0, built.stderr[-3000:]
        done = subprocess.run([*runner, str(exe), "1500", "3", *seeds], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout.strip())
    assert outputs[0] == outputs[1] and "decoded" in outputs[0]


def test_encode_codes_identical_with_either_decoder_serial_or_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys, native_calls: list[int]) -> None:
    """``brcd encode`` of camera-like JPEGs drafted at 1/8: the native decoder runs, and the codes file is the one
    Pillow's decoding gives, byte for byte, serial or with two decode workers."""
    folder = tmp_path / "photos"
    _camera_folder(folder, [name for name, _, _ in PHOTOGRAPHS[:8]], np.random.default_rng(3), subsampling=lambda k: k % 3)
    files = {}
    for choice, workers in (("pillow", "0"), ("auto", "0"), ("auto", "2")):
        monkeypatch.setenv(jpeg_eighth.ENV_VAR, choice)
        files[choice, workers] = tmp_path / f"{choice}-{workers}.bin"
        code, _, err = run_cli(["encode", str(folder), "--model", "perceptual:dct64", "--out", str(files[choice, workers]),
                                "--workers", workers], capsys)
        assert code == 0, err
    assert len(native_calls) == 16  # 8 files, twice through the native decoder (the 64 px hasher drafts 1200 rows at 1/8)
    data = {key: path.read_bytes() for key, path in files.items()}
    assert data["pillow", "0"] == data["auto", "0"] == data["auto", "2"]


def test_kill_9_then_resume_is_exact_with_the_native_decoder(tmp_path: Path, capsys) -> None:
    """An encode drafting through the native decoder, killed mid-job and resumed, writes the clean run's file."""
    import signal

    from test_reliability import _brcd, _env, _state, _wait_for

    sources = _camera_folder(tmp_path / "distinct", [name for name, _, _ in PHOTOGRAPHS[:6]], np.random.default_rng(5))
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(600):  # hard links: every path is decoded in full, as a distinct file would be
        (folder / f"{i:04d}.jpg").hardlink_to(sources[i % len(sources)])
    args = ["--model", "perceptual:dct64", "--batch-size", "4", "--workers", "2"]
    clean = tmp_path / "clean.bin"
    assert run_cli(["encode", str(folder), "--out", str(clean), *args], capsys)[0] == 0
    out = tmp_path / "codes.bin"
    proc = subprocess.Popen(_brcd("encode", str(folder), "--out", str(out), *args), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(lambda: 0 < _state(out).get("next_index", 0) < 600, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    code, _, err = run_cli(["encode", str(folder), "--out", str(out), "--resume", *args], capsys)
    assert code == 0 and "resuming the interrupted encode" in err
    assert out.read_bytes() == clean.read_bytes()

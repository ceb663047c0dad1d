"""Bad input, interrupted jobs and untrusted files: every case ends with one clear line,
a documented exit code, and earlier outputs intact."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from brcd_cli.codes import CodesFileError, read_codes, write_codes
from brcd_cli.data import read_image_file, synthetic_source
from brcd_cli.errors import DataError
from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
from conftest import TINY_ARCH, run_cli

QUIET = lambda message: None  # noqa: E731
REPO = Path(__file__).resolve().parents[1]
FUZZ_EXAMPLES = int(os.environ.get("BRCD_FUZZ_EXAMPLES", "150"))


def _teacher(out: Path, bits: int = 16, seed: int = 0) -> Path:
    options = TeacherOptions(arch=TINY_ARCH, bits=bits, image_size=16, pretrained="none", seed=seed,
                             fit=FitOptions(epochs=1, batch_size=16, lr=1e-3, seed=seed))
    train_teacher(synthetic_source(n=48, n_classes=4), out, options, log=QUIET)
    return out


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """Two 16-bit teachers of different code spaces and a 32-bit one."""
    root = tmp_path_factory.mktemp("reliability")
    return {"a": _teacher(root / "a"), "b": _teacher(root / "b", seed=1), "wide": _teacher(root / "wide", bits=32)}


def _good_images(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, size=(20, 20, 3), dtype=np.uint8)).save(root / f"good_{i}.png")
    return root


def _jpeg_bytes() -> bytes:
    from io import BytesIO

    buf = BytesIO()
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _make_bad(kind: str, folder: Path) -> str:
    """Create one unreadable item in ``folder``; returns words its reason must contain."""
    if kind == "truncated-jpeg":
        (folder / "bad.jpg").write_bytes(_jpeg_bytes()[:300])
        return "truncated"
    if kind == "truncated-png":
        (folder / "bad.png").write_bytes(_png_bytes(Image.fromarray(np.zeros((64, 64, 3), np.uint8)))[:60])
        return "bad.png"
    if kind == "zero-bytes":
        (folder / "bad.png").write_bytes(b"")
        return "empty file"
    if kind == "not-an-image":
        (folder / "bad.jpg").write_text("this is a text file, not a picture\n")
        return "not an image"
    if kind == "decompression-bomb":
        (folder / "bad.png").write_bytes(_png_bytes(Image.new("1", (12_000, 8_000))))
        return "decompression bomb"
    if kind == "broken-symlink":
        os.symlink(folder / "nowhere.png", folder / "bad.png")
        return "broken symbolic link"
    if kind == "fifo":
        os.mkfifo(folder / "bad.png")
        return "not a regular file"
    raise AssertionError(kind)


BAD_KINDS = ["truncated-jpeg", "truncated-png", "zero-bytes", "not-an-image", "decompression-bomb", "broken-symlink", "fifo"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_encode_skips_and_lists_unreadable_images(kind: str, teachers, tmp_path: Path, capsys):
    folder = _good_images(tmp_path / "imgs")
    words = _make_bad(kind, folder)
    out = tmp_path / "codes.bin"
    code, _, err = run_cli(["encode", str(folder), "--model", str(teachers["a"]), "--out", str(out)], capsys)
    assert code == 3 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: skipped 1 unreadable image") and "--skip-bad" in last
    assert f"skipped {folder / ('bad.jpg' if 'jpeg' in kind or kind == 'not-an-image' else 'bad.png')}" in err
    listing = (tmp_path / "codes.bin.skipped.tsv").read_text().splitlines()
    assert listing[0] == "id\treason" and len(listing) == 2 and words in listing[1].lower()
    with read_codes(out) as codes:  # the readable images are all there, in order
        assert codes.count == 6 and list(codes.ids) == [str(folder / f"good_{i}.png") for i in range(6)]


def test_encode_with_skip_bad_exits_zero(teachers, tmp_path: Path, capsys):
    folder = _good_images(tmp_path / "imgs")
    _make_bad("zero-bytes", folder)
    out = tmp_path / "codes.bin"
    code, _, err = run_cli(["encode", str(folder), "--model", str(teachers["a"]), "--out", str(out), "--skip-bad"], capsys)
    assert code == 0 and "skipped 1 unreadable image" in err and read_codes(out).count == 6


def test_encode_of_only_bad_images_writes_nothing(teachers, tmp_path: Path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.jpg").write_text("x")
    out = tmp_path / "codes.bin"
    out.write_bytes(b"earlier")
    code, _, err = run_cli(["encode", str(folder), "--model", str(teachers["a"]), "--out", str(out), "--force"], capsys)
    assert code == 3 and "none of the 2 images could be read" in err.strip().splitlines()[-1]
    assert out.read_bytes() == b"earlier" and not (tmp_path / "codes.bin.partial").exists()


def test_symlink_loop_is_walked_once(teachers, tmp_path: Path, capsys):
    folder = _good_images(tmp_path / "imgs" / "cls", n=3).parent
    os.symlink(folder, folder / "cls" / "loop")
    out = tmp_path / "codes.bin"
    code, _, err = run_cli(["encode", str(folder), "--model", str(teachers["a"]), "--out", str(out)], capsys)
    assert code == 0, err
    assert read_codes(out).count == 3


def test_non_utf8_file_names_round_trip_and_print(teachers, tmp_path: Path, capsys):
    folder = _good_images(tmp_path / "imgs", n=2)
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    with open(raw, "wb") as fh:
        fh.write(_png_bytes(Image.fromarray(np.full((16, 16, 3), 50, np.uint8))))
    out = tmp_path / "codes.bin"
    assert run_cli(["encode", str(folder), "--model", str(teachers["a"]), "--out", str(out)], capsys)[0] == 0
    with read_codes(out) as codes:
        assert os.fsencode(codes.ids[0]) == raw
    code, stdout, err = run_cli(["search", str(folder / "good_0.png"), "--codes", str(out), "--model", str(teachers["a"]), "-k", "3"], capsys)
    assert code == 0, err
    assert "caf\\xe9.png" in stdout


# -- image modes that must decode (not be skipped) ---------------------------------------------------

def _mode_image(kind: str) -> Image.Image:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, size=(12, 18, 3), dtype=np.uint8)
    rgb = Image.fromarray(base)
    if kind == "grayscale":
        return rgb.convert("L")
    if kind == "palette":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    if kind == "rgba":
        return rgb.convert("RGBA")
    if kind == "la":
        return rgb.convert("LA")
    if kind == "bilevel":
        return rgb.convert("1")
    if kind == "cmyk":
        return rgb.convert("CMYK")
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,ext", [("grayscale", "png"), ("palette", "png"), ("rgba", "png"), ("la", "png"),
                                      ("bilevel", "png"), ("cmyk", "jpg")])
def test_image_modes_decode_to_rgb(kind: str, ext: str, tmp_path: Path):
    path = tmp_path / f"x.{ext}"
    _mode_image(kind).save(path)
    image = read_image_file(path)
    assert image.mode == "RGB" and image.size == (18, 12)
    assert np.asarray(image).std() > 0  # real content, not a blank


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path):
    ramp = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65280
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    pixels = np.asarray(read_image_file(path))[..., 0].astype(int)
    expected = np.round(ramp / 257).astype(int)
    assert np.abs(pixels - expected).max() <= 1 and pixels.min() == 0 and pixels.max() >= 250


def test_exif_orientation_is_applied(tmp_path: Path):
    image = Image.fromarray(np.zeros((10, 30, 3), np.uint8))  # 30 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert read_image_file(path).size == (10, 30)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_reported(tmp_path: Path):
    path = tmp_path / "secret.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    path.chmod(0)
    with pytest.raises(DataError, match="Permission denied"):
        read_image_file(path)


# -- search with a bad query -------------------------------------------------------------------------

@pytest.mark.parametrize("kind,words", [("missing", "query image not found"), ("empty", "empty file"),
                                        ("text", "not an image"), ("truncated", "truncated"), ("folder", "not a regular file")])
def test_bad_query_image_is_one_line(kind: str, words: str, teachers, tmp_path: Path, capsys):
    codes = tmp_path / "codes.bin"
    run_cli(["encode", str(_good_images(tmp_path / "imgs")), "--model", str(teachers["a"]), "--out", str(codes)], capsys)
    before = codes.read_bytes()
    query = tmp_path / "q.jpg"
    if kind == "empty":
        query.write_bytes(b"")
    elif kind == "text":
        query.write_text("hello")
    elif kind == "truncated":
        query.write_bytes(_jpeg_bytes()[:300])
    elif kind == "folder":
        query.mkdir()
    code, _, err = run_cli(["search", str(query), "--codes", str(codes), "--model", str(teachers["a"])], capsys)
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0].lower()
    assert codes.read_bytes() == before


# -- codes files -------------------------------------------------------------------------------------

@pytest.fixture
def codes_file(teachers, tmp_path: Path, capsys) -> Path:
    codes = tmp_path / "codes.bin"
    assert run_cli(["encode", str(_good_images(tmp_path / "imgs")), "--model", str(teachers["a"]), "--out", str(codes)], capsys)[0] == 0
    return codes


def _corrupt(path: Path, kind: str) -> None:
    data = bytearray(path.read_bytes())
    if kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "wrong-magic":
        data[:8] = b"NOTCODES"
    elif kind == "future-version":
        data[8:10] = (999).to_bytes(2, "little")
    elif kind == "garbage-appended":
        data += b"garbage"
    elif kind == "flipped-id-byte":
        data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind,words", [("truncated", "truncated"), ("wrong-magic", "not a brcd codes file"),
                                        ("future-version", "version"), ("garbage-appended", "trailing"),
                                        ("flipped-id-byte", "corrupt")])
def test_damaged_codes_file_is_refused(kind: str, words: str, codes_file: Path, teachers, tmp_path: Path, capsys):
    _corrupt(codes_file, kind)
    damaged = codes_file.read_bytes()
    query = tmp_path / "imgs" / "good_0.png"
    code, _, err = run_cli(["search", str(query), "--codes", str(codes_file), "--model", str(teachers["a"])], capsys)
    lines = err.strip().splitlines()
    assert code == 5 and len(lines) == 1 and words in lines[0].lower(), err
    assert codes_file.read_bytes() == damaged


@pytest.mark.parametrize("model,words", [("b", "another code space"), ("wide", "16-bit codes but the model makes 32-bit")])
def test_codes_of_another_model_are_refused(model: str, words: str, codes_file: Path, teachers, tmp_path: Path, capsys):
    query = tmp_path / "imgs" / "good_0.png"
    code, _, err = run_cli(["search", str(query), "--codes", str(codes_file), "--model", str(teachers[model])], capsys)
    assert code == 1 and words in err.strip().splitlines()[-1]


def _valid_codes_bytes(tmp: Path) -> bytes:
    path = tmp / "fuzz-base.codes"
    if not path.exists():
        rng = np.random.default_rng(0)
        write_codes(path, rng.integers(0, 256, size=(5, 4), dtype=np.uint8), [f"img/{i}.png" for i in range(5)],
                    bits=32, producer="ab" * 32, code_space="cd" * 32, metadata={"k": 1})
    return path.read_bytes()


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_codes_reader_fuzz(tmp_path: Path, data):
    """Random damage never crashes the reader: it is refused with CodesFileError, or read whole and consistent."""
    raw = bytearray(_valid_codes_bytes(tmp_path))
    action = data.draw(st.sampled_from(["flip", "cut", "append", "splice"]))
    if action == "flip":
        for pos in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[pos] ^= data.draw(st.integers(1, 255))
    elif action == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif action == "append":
        raw += data.draw(st.binary(min_size=1, max_size=64))
    else:
        pos = data.draw(st.integers(0, len(raw)))
        raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=32))
    path = tmp_path / "fuzzed.codes"
    path.write_bytes(bytes(raw))
    try:
        codes = read_codes(path)
    except CodesFileError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    with codes:
        assert codes.codes.shape == (codes.count, codes.bits // 8)
        assert len(list(codes.ids)) == codes.count


# -- interruptions -----------------------------------------------------------------------------------

def _brcd(*args: str) -> list[str]:
    return [sys.executable, "-m", "brcd_cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read().decode() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the job to make progress")
        time.sleep(0.05)


def _state(out: Path) -> dict:
    try:
        return json.loads((out.with_name(out.name + ".partial") / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def test_kill_9_during_encode_then_resume_gives_every_image_once(teachers, tmp_path: Path, capsys):
    source = "synthetic:600"
    clean = tmp_path / "clean.bin"
    assert run_cli(["encode", source, "--model", str(teachers["a"]), "--out", str(clean), "--batch-size", "8"], capsys)[0] == 0
    out = tmp_path / "codes.bin"
    proc = subprocess.Popen(_brcd("encode", source, "--model", str(teachers["a"]), "--out", str(out), "--batch-size", "8"),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(lambda: 0 < _state(out).get("next_index", 0) < 600, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    code, _, err = run_cli(["encode", source, "--model", str(teachers["a"]), "--out", str(out)], capsys)
    assert code == 1 and "--resume" in err.strip().splitlines()[-1]  # a half job is never silently restarted
    code, _, err = run_cli(["encode", source, "--model", str(teachers["a"]), "--out", str(out), "--resume", "--batch-size", "8"], capsys)
    assert code == 0 and "resuming the interrupted encode" in err
    with read_codes(out) as got, read_codes(clean) as want:
        assert list(got.ids) == list(want.ids)
        assert np.array_equal(np.asarray(got.codes), np.asarray(want.codes))
    assert not out.with_name("codes.bin.partial").exists()


def test_resume_refuses_a_job_of_another_model(teachers, tmp_path: Path, capsys):
    out = tmp_path / "codes.bin"
    proc = subprocess.Popen(_brcd("encode", "synthetic:600", "--model", str(teachers["a"]), "--out", str(out), "--batch-size", "8"),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(lambda: _state(out).get("next_index", 0) > 0, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    code, _, err = run_cli(["encode", "synthetic:600", "--model", str(teachers["b"]), "--out", str(out), "--resume"], capsys)
    assert code == 5 and "another model" in err.strip().splitlines()[-1]
    assert _state(out)["next_index"] > 0  # the interrupted job is kept for the right model


def test_ctrl_c_during_encode_exits_130_and_resumes(teachers, tmp_path: Path):
    out = tmp_path / "codes.bin"
    proc = subprocess.Popen(_brcd("encode", "synthetic:600", "--model", str(teachers["a"]), "--out", str(out), "--batch-size", "8"),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(lambda: _state(out).get("next_index", 0) > 0, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.decode().strip().splitlines()[-1].startswith("interrupted; rerun")
    done = subprocess.run(_brcd("encode", "synthetic:600", "--model", str(teachers["a"]), "--out", str(out), "--resume"),
                          env=_env(), capture_output=True, timeout=300)
    assert done.returncode == 0 and read_codes(out).count == 600


def test_kill_9_during_training_then_resume_continues(tmp_path: Path):
    out = tmp_path / "teacher"
    args = ["train-teacher", "synthetic:96", "--arch", TINY_ARCH, "--bits", "16", "--image-size", "16", "--pretrained",
            "none", "--batch-size", "16", "--epochs", "400", "--patience", "400", "--save-every", "0", "--out", str(out)]
    proc = subprocess.Popen(_brcd(*args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(lambda: (out / "resume.pt").is_file(), proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "config.json").exists()  # no finished-looking model after a crash
    args[args.index("400")] = "3"  # fewer epochs so the resumed run ends quickly
    done = subprocess.run(_brcd(*args, "--resume"), env=_env(), capture_output=True, timeout=300)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "resuming from" in err and "after epoch" in err
    assert (out / "config.json").is_file()


def test_existing_outputs_are_not_overwritten_without_force(teachers, tmp_path: Path, capsys):
    out = tmp_path / "codes.bin"
    out.write_bytes(b"precious")
    code, _, err = run_cli(["encode", "synthetic:8", "--model", str(teachers["a"]), "--out", str(out)], capsys)
    assert code == 1 and "--force" in err and out.read_bytes() == b"precious"
    code, _, err = run_cli(["train-teacher", "synthetic:8", "--out", str(teachers["a"]), "--arch", TINY_ARCH], capsys)
    assert code == 1 and "already holds a model" in err and (teachers["a"] / "config.json").is_file()


# -- checkpoints -------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_resume_file_is_refused(tmp_path: Path, capsys):
    out = tmp_path / "teacher"
    out.mkdir()
    marker = tmp_path / "pwned"
    (out / "resume.pt").write_bytes(pickle.dumps({"model": _Payload(marker)}))
    code, _, err = run_cli(["train-teacher", "synthetic:32", "--arch", TINY_ARCH, "--image-size", "16", "--bits", "16",
                            "--pretrained", "none", "--epochs", "1", "--batch-size", "16", "--out", str(out), "--resume"], capsys)
    assert code == 1 and "cannot resume from" in err.strip().splitlines()[-1]
    assert not marker.exists()


def test_crafted_pickle_pretrained_weights_are_refused(tmp_path: Path, capsys):
    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pth"
    weights.write_bytes(pickle.dumps({"conv.weight": _Payload(marker)}))
    code, _, err = run_cli(["train-teacher", "synthetic:32", "--arch", TINY_ARCH, "--image-size", "16", "--bits", "16",
                            "--pretrained", str(weights), "--epochs", "1", "--out", str(tmp_path / "t")], capsys)
    assert code == 4 and str(weights) in err.strip().splitlines()[-1]
    assert not marker.exists()


def test_crafted_pickle_as_model_weights_is_refused(teachers, tmp_path: Path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(teachers["a"], model)
    marker = tmp_path / "pwned"
    (model / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    code, _, err = run_cli(["encode", "synthetic:8", "--model", str(model), "--out", str(tmp_path / "c.bin")], capsys)
    assert code == 4 and "model" in err.strip().splitlines()[-1] and not marker.exists()


@pytest.mark.parametrize("field,value,words", [("arch", "resnet18", "does not fit resnet18"), ("bits", 32, "with 32 bits")])
def test_checkpoint_config_mismatch_is_named(field: str, value, words: str, teachers, tmp_path: Path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(teachers["a"], model)
    config = json.loads((model / "config.json").read_text())
    config["config"][field] = value
    (model / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(["encode", "synthetic:8", "--model", str(model), "--out", str(tmp_path / "c.bin")], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 4 and last.startswith("error:") and words in last, err


# -- resources ---------------------------------------------------------------------------------------

def test_full_disk_during_encode_keeps_the_earlier_file(teachers, tmp_path: Path):
    import resource

    out = tmp_path / "codes.bin"
    out.write_bytes(b"earlier codes")

    def small_files() -> None:  # as if the disk filled up after 4 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = subprocess.run(_brcd("encode", "synthetic:2000", "--model", str(teachers["a"]), "--out", str(out), "--force",
                                "--batch-size", "64"), env=_env(), capture_output=True, timeout=300, preexec_fn=small_files)
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1 and lines[-1].startswith("error: cannot write") and "--resume" in lines[-1]
    assert "Traceback" not in done.stderr.decode()
    assert out.read_bytes() == b"earlier codes"


def test_encode_memory_stays_flat_as_the_collection_grows(teachers, tmp_path: Path):
    """Peak Python allocations of encoding 4x more images grow far less than 4x (ids only, not images)."""
    import tracemalloc

    from brcd_cli.pipeline import encode_collection

    peaks = []
    for n in (500, 2000):
        tracemalloc.start()
        encode_collection(synthetic_source(n=n), teachers["a"], tmp_path / f"{n}.bin", batch_size=64, log=QUIET)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], peaks


# -- command-line mistakes ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "args,exit_code,words",
    [
        (["encode", "{tmp}/nowhere", "--model", "{a}", "--out", "{tmp}/c.bin"], 3, "data not found"),
        (["encode", "{tmp}/empty", "--model", "{a}", "--out", "{tmp}/c.bin"], 3, "no images found"),
        (["encode", "synthetic:8", "--model", "{tmp}/no-model", "--out", "{tmp}/c.bin"], 4, "model folder not found"),
        (["encode", "synthetic:8", "--model", "{a}", "--out", "{tmp}"], 1, "is a folder"),
        (["encode", "synthetic:8", "--model", "{a}", "--out", "{tmp}/c.bin", "--batch-size", "0"], 1, "--batch-size must be"),
        (["encode", "synthetic:8", "--model", "{a}"], 2, "Missing option '--out'"),
        (["search", "{img}", "--codes", "{codes}", "--model", "{a}", "-k", "0"], 1, "-k must be positive"),
        (["search", "{img}", "--codes", "{codes}", "--model", "{a}", "-k", "-3"], 1, "-k must be positive"),
        (["search", "{img}", "--codes", "{codes}", "--model", "{a}", "--radius", "-1"], 1, "--radius must be >= 0"),
        (["search", "{img}", "--codes", "{codes}", "--model", "{a}", "-k", "ten"], 2, "Invalid value for '-k'"),
        (["search", "{img}", "--codes", "{tmp}/none.bin", "--model", "{a}"], 5, "none.bin"),
        (["train-teacher", "synthetic:8", "--bits", "many", "--out", "{tmp}/t"], 2, "Invalid value for '--bits'"),
        (["train-teacher", "synthetic:8", "--bits", "12", "--out", "{tmp}/t"], 1, "--bits must be one of"),
        (["train-teacher", "synthetic:8", "--epochs", "0", "--arch", TINY_ARCH, "--out", "{tmp}/t"], 1, "--epochs >= 1"),
        (["train-teacher", "synthetic:8", "--arch", "no_such_net", "--pretrained", "none", "--out", "{tmp}/t"], 4, "no_such_net"),
        (["evaluate", "synthetic:8", "--teacher", "{a}", "--top-k", "0"], 1, "--top-k must be positive"),
        (["distill", "synthetic:8", "--teacher", "{a}", "--clusters", "0", "--out", "{tmp}/s"], 1, "--clusters must be"),
        (["frobnicate"], 2, "No such command 'frobnicate'"),
        (["demo", "--budget", "0", "--out", "{tmp}/d"], 1, "--budget must be positive"),
    ],
)
def test_cli_mistakes_are_one_line_with_a_documented_code(args, exit_code, words, teachers, tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    folder = _good_images(tmp_path / "imgs", n=2)
    codes = tmp_path / "codes.bin"
    assert run_cli(["encode", str(folder), "--model", str(teachers["a"]), "--out", str(codes)], capsys)[0] == 0
    before = codes.read_bytes()
    subst = {"{tmp}": str(tmp_path), "{a}": str(teachers["a"]), "{img}": str(folder / "good_0.png"), "{codes}": str(codes)}
    filled = []
    for a in args:
        for k, v in subst.items():
            a = a.replace(k, v)
        filled.append(a)
    code, _, err = run_cli(filled, capsys)
    lines = err.strip().splitlines()
    assert code == exit_code, err
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], err
    assert codes.read_bytes() == before
    documented = (REPO / "README.md").read_text()
    assert f"| {exit_code} " in documented


def _valid_index_bytes(tmp: Path) -> tuple[Path, bytes]:
    from brcd_cli.search.mih import build_index

    codes = tmp / "fuzz-index.codes"
    if not codes.exists():
        rng = np.random.default_rng(0)
        write_codes(codes, rng.integers(0, 256, size=(64, 8), dtype=np.uint8), [f"img/{i}.png" for i in range(64)],
                    bits=64, producer="ab" * 32, code_space="cd" * 32)
        build_index(codes, tmp / "fuzz-index.mih", log=QUIET)
    return codes, (tmp / "fuzz-index.mih").read_bytes()


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_index_reader_fuzz(tmp_path: Path, data):
    """Random damage to an index file is refused with one clear error (or, where harmless, still searches exactly)."""
    from brcd_cli.errors import BrcdError
    from brcd_cli.search.mih import open_index

    _, raw = _valid_index_bytes(tmp_path)
    raw = bytearray(raw)
    action = data.draw(st.sampled_from(["flip", "cut", "append"]))
    if action == "flip":
        for pos in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[pos] ^= data.draw(st.integers(1, 255))
    elif action == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=64))
    path = tmp_path / "fuzzed.mih"
    path.write_bytes(bytes(raw))
    try:
        open_index(path)
    except BrcdError as exc:
        assert "\n" not in str(exc)

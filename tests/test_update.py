"""Collections that change: encode --update equals a full encode of the final folder; remove; crash safety."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brcd_cli.codes import read_codes
from brcd_cli.data import synthetic_source
from brcd_cli.search.mih import check_matches, default_index_path, read_index_info
from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
from brcd_cli.update import stat_table
from conftest import TINY_ARCH, run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("update") / "teacher"
    options = TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none",
                             fit=FitOptions(epochs=1, batch_size=16, lr=1e-3))
    train_teacher(synthetic_source(n=48, n_classes=4), out, options, log=lambda _: None)
    return out


@pytest.fixture(autouse=True)
def exact_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The files of a test are made moments before they are encoded; with no racy window they still count as
    unchanged afterwards (the window is for file systems with coarse timestamps, tested on its own below)."""
    monkeypatch.setattr(stat_table, "RACY_SECONDS", 0.0)


def _image(path: Path, seed: int, size: int = 20) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)).save(path)


def _folder(root: Path, n: int, first_seed: int = 0) -> Path:
    for i in range(n):
        _image(root / f"c{i % 3}" / f"img_{i:04d}.png", first_seed + i)
    return root


def _encode(folder: Path, teacher: Path, out: Path, *extra: str, capsys=None) -> tuple[int, str]:
    code, _, err = run_cli(["encode", str(folder), "--model", str(teacher), "--out", str(out), "--batch-size", "8", *extra],
                           capsys)
    return code, err


def _full_encode_bytes(folder: Path, teacher: Path, where: Path, capsys) -> bytes:
    """What a fresh encode of the folder as it is now writes (elsewhere, so the folder and its name are the same)."""
    out = where / "full.bin"
    assert _encode(folder, teacher, out, "--force", "--skip-bad", capsys=capsys)[0] == 0
    return out.read_bytes()


def test_update_after_additions_removals_and_changes_equals_a_full_encode(teacher, tmp_path: Path, capsys):
    folder = _folder(tmp_path / "images", 12)
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    assert stat_table.table_path(out).is_file()
    _image(folder / "c0" / "img_0100.png", 100)  # two new images, one sorted between the old ones
    _image(folder / "c1" / "img_0004b.png", 101)
    (folder / "c1" / "img_0001.png").unlink()  # two gone
    (folder / "c2" / "img_0011.png").unlink()
    _image(folder / "c0" / "img_0003.png", 102, size=24)  # one changed
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 0, err
    assert "9 unchanged, 2 new, 1 changed, 2 gone; encoding 3" in err
    assert out.read_bytes() == _full_encode_bytes(folder, teacher, tmp_path / "full", capsys)
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 0 and "is up to date (12 images unchanged)" in err


def test_update_counts_from_the_library(teacher, tmp_path: Path):
    from brcd_cli.data import open_source
    from brcd_cli.update import update_collection

    folder = _folder(tmp_path / "images", 6)
    out = tmp_path / "codes.bin"
    first = update_collection(open_source(str(folder)), teacher, out, log=lambda _: None)  # creates the file
    assert (first.count, first.added, first.unchanged) == (6, 6, 0)
    _image(folder / "c0" / "img_0000.png", 50, size=22)
    again = update_collection(open_source(str(folder)), teacher, out, log=lambda _: None)
    assert (again.count, again.unchanged, again.changed, again.added, again.removed) == (6, 5, 1, 0, 0)


def test_a_change_that_restores_the_modification_time_is_still_seen(teacher, tmp_path: Path, capsys):
    folder = _folder(tmp_path / "images", 6)
    out = tmp_path / "codes.bin"
    victim = folder / "c1" / "img_0004.png"
    old = victim.stat()
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    _image(victim, 77)
    os.utime(victim, ns=(old.st_atime_ns, old.st_mtime_ns))  # as cp -p or rsync -t leave it
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 0 and "1 changed" in err
    assert out.read_bytes() == _full_encode_bytes(folder, teacher, tmp_path / "full", capsys)


def test_files_changed_around_the_encode_are_recorded_as_unknown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(stat_table, "RACY_SECONDS", 2.0)
    _image(tmp_path / "a.png", 0)
    records = stat_table.stat_files([tmp_path / "a.png", tmp_path / "missing.png", tmp_path])
    assert records[0]["size"] == (tmp_path / "a.png").stat().st_size
    assert records[1] == stat_table.UNKNOWN and records[2] == stat_table.UNKNOWN  # no file, a folder
    assert stat_table.trusted(records, time.time_ns())[0] == stat_table.UNKNOWN  # just written: it may change unseen
    assert stat_table.trusted(records, time.time_ns() + 3 * 10**9)[0] == records[0]
    assert not stat_table.unchanged(stat_table.UNKNOWN[None], stat_table.UNKNOWN[None])[0]


def test_a_codes_file_without_a_record_is_encoded_again_once(teacher, tmp_path: Path, capsys):
    folder = _folder(tmp_path / "images", 6)
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    stat_table.table_path(out).unlink()
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 0 and "there is no record of its files" in err and "encoding 6" in err
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 0 and "is up to date (6 images unchanged)" in err


def test_a_record_of_another_version_is_not_trusted(teacher, tmp_path: Path, capsys):
    folder = _folder(tmp_path / "images", 6)
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    saved = out.read_bytes()
    _image(folder / "c0" / "img_0000.png", 60, size=23)
    assert _encode(folder, teacher, out, "--update", capsys=capsys)[0] == 0
    out.write_bytes(saved)  # an old copy of the codes restored beside the newer record
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 0 and "describes another version" in err and "encoding 6" in err


def test_update_refuses_codes_of_another_model_or_decoding(teacher, tmp_path: Path, capsys):
    folder = _folder(tmp_path / "images", 4)
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    saved = out.read_bytes()
    code, err = _encode(folder, teacher, out, "--update", "--exact-decode", capsys=capsys)
    assert code == 1 and "draft decoding" in err.strip().splitlines()[-1] and "Traceback" not in err
    other = tmp_path / "other"
    options = TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none", seed=3,
                             fit=FitOptions(epochs=1, batch_size=16, lr=1e-3, seed=3))
    train_teacher(synthetic_source(n=48, n_classes=4), other, options, log=lambda _: None)
    code, err = _encode(folder, other, out, "--update", capsys=capsys)
    assert code == 1 and "another model" in err.strip().splitlines()[-1]
    code, err = _encode(folder, teacher, out, "--update", "--force", capsys=capsys)
    assert code == 1 and "drop --force" in err
    code, _, err = run_cli(["encode", "synthetic:8", "--model", str(teacher), "--out", str(out), "--update"], capsys)
    assert code == 1 and "not a folder or a list file" in err
    assert out.read_bytes() == saved


def test_update_with_an_unreadable_new_image(teacher, tmp_path: Path, capsys):
    folder = _folder(tmp_path / "images", 4)
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    (folder / "c0" / "broken.png").write_bytes(b"not a picture")
    (folder / "c1" / "img_0001.png").unlink()
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 3 and "--skip-bad" in err.strip().splitlines()[-1]
    assert "broken.png" in (tmp_path / "codes.bin.skipped.tsv").read_text()
    with read_codes(out) as codes:
        assert codes.count == 3 and not any("broken" in i for i in codes.ids)
    assert out.read_bytes() == _full_encode_bytes(folder, teacher, tmp_path / "full", capsys)


def test_update_keeps_the_index_current(teacher, tmp_path: Path, capsys):
    folder = _folder(tmp_path / "images", 8)
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    assert run_cli(["index", str(out)], capsys)[0] == 0
    _image(folder / "c2" / "img_0050.png", 50)
    (folder / "c0" / "img_0000.png").unlink()
    assert _encode(folder, teacher, out, "--update", capsys=capsys)[0] == 0
    with read_codes(out) as codes:
        info = read_index_info(default_index_path(out))
        check_matches(info, codes)  # raises if the index is of other or fewer codes
        assert info.count == codes.count == 8


# -- interruptions -----------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _staged_progress(out: Path) -> int:
    state = out.with_name(out.name + ".update") / "new.codes.partial" / "state.json"
    try:
        return int(json.loads(state.read_text())["next_index"])
    except (OSError, ValueError, KeyError):
        return 0


def test_kill_9_during_an_update_keeps_the_old_file_and_a_rerun_completes(teacher, tmp_path: Path, capsys):
    folder = _folder(tmp_path / "images", 10)
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    before = out.read_bytes()
    _folder(tmp_path / "images" / "new", 600, first_seed=1000)
    proc = subprocess.Popen([sys.executable, "-m", "brcd_cli", "encode", str(folder), "--model", str(teacher), "--out",
                             str(out), "--update", "--batch-size", "8", "--workers", "0"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not 0 < _staged_progress(out) < 600:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert out.read_bytes() == before  # the old file is untouched
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 0 and "resuming the interrupted encode" in err, err
    assert out.read_bytes() == _full_encode_bytes(folder, teacher, tmp_path / "full", capsys)
    assert not out.with_name("codes.bin.update").exists()


def test_an_interrupted_update_whose_images_changed_starts_their_encode_over(teacher, tmp_path: Path, capsys):
    folder = _folder(tmp_path / "images", 10)
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    _folder(tmp_path / "images" / "new", 300, first_seed=1000)
    proc = subprocess.Popen([sys.executable, "-m", "brcd_cli", "encode", str(folder), "--model", str(teacher), "--out",
                             str(out), "--update", "--batch-size", "8", "--workers", "0"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not 0 < _staged_progress(out) < 300:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _image(folder / "new" / "c0" / "img_0000.png", 999, size=25)  # encoded before the kill, changed after it
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 0 and "images changed since the interrupted update" in err
    assert out.read_bytes() == _full_encode_bytes(folder, teacher, tmp_path / "full", capsys)


def test_a_crash_between_the_renames_is_finished_by_the_next_run(teacher, tmp_path: Path, capsys, monkeypatch):
    from brcd_cli.update import commit as commit_module

    folder = _folder(tmp_path / "images", 6)
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    before = out.read_bytes()
    _image(folder / "c0" / "img_0100.png", 100)
    real_replace = os.replace

    def crash_on_the_codes(src, dst):
        if Path(dst) == out:
            raise KeyboardInterrupt  # as if killed just before the last rename
        real_replace(src, dst)

    monkeypatch.setattr(commit_module.os, "replace", crash_on_the_codes)
    code, _ = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 130 and out.read_bytes() == before
    monkeypatch.setattr(commit_module.os, "replace", real_replace)
    code, _, err = run_cli(["remove", str(out), str(folder / "c1" / "img_0001.png")], capsys)  # finishes it first
    assert code == 0, err
    with read_codes(out) as codes:
        assert codes.count == 6 and str(folder / "c0" / "img_0100.png") in list(codes.ids)
    (folder / "c1" / "img_0001.png").unlink()
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 0 and "is up to date (6 images unchanged)" in err
    assert out.read_bytes() == _full_encode_bytes(folder, teacher, tmp_path / "full", capsys)


# -- remove ------------------------------------------------------------------------------------------

def test_remove_by_id_keeps_order_index_and_record(teacher, tmp_path: Path, capsys):
    folder = _folder(tmp_path / "images", 9)
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    assert run_cli(["index", str(out)], capsys)[0] == 0
    with read_codes(out) as codes:
        ids, all_codes = list(codes.ids), np.asarray(codes.codes).copy()
    gone = [ids[0], ids[4]]
    listing = tmp_path / "gone.txt"
    listing.write_text(ids[8] + "\n")
    code, out_text, err = run_cli(["remove", str(out), *gone, "--from-file", str(listing)], capsys)
    assert code == 0 and "removed 3 items" in out_text, err
    keep = [i for i in range(9) if i not in (0, 4, 8)]
    with read_codes(out) as codes:
        assert list(codes.ids) == [ids[i] for i in keep]
        assert np.array_equal(np.asarray(codes.codes), all_codes[keep])
        check_matches(read_index_info(default_index_path(out)), codes)
    for i in (0, 4, 8):
        Path(ids[i]).unlink()
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 0 and "is up to date (6 images unchanged)" in err  # the record of files followed the removal


def test_remove_of_unknown_ids_changes_nothing_unless_told(teacher, tmp_path: Path, capsys):
    folder = _folder(tmp_path / "images", 4)
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    before = out.read_bytes()
    with read_codes(out) as codes:
        first = codes.ids[0]
    code, _, err = run_cli(["remove", str(out), first, "nope.jpg", "also/nope.png"], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"error: 2 of the 3 ids are not in {out}: 'nope.jpg', 'also/nope.png'; "
                                            "nothing was removed (pass --ignore-missing to remove the others)")
    assert out.read_bytes() == before
    code, text, err = run_cli(["remove", str(out), first, "nope.jpg", "--ignore-missing", "--json"], capsys)
    assert code == 0 and json.loads(text) == {"path": str(out), "removed": 1, "count": 3, "missing": ["nope.jpg"]}
    assert run_cli(["remove", str(out)], capsys)[0] == 1
    assert run_cli(["remove", str(tmp_path / "none.bin"), "x"], capsys)[0] == 5


def test_an_update_in_which_no_id_comes_back_says_why(teacher, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    """The folder given by its absolute path after a relative one: every id differs, so the note names both forms."""
    _folder(tmp_path / "pics", 6)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "codes.bin"
    assert _encode(Path("pics"), teacher, out, capsys=capsys)[0] == 0
    code, err = _encode(tmp_path / "pics", teacher, out, "--update", capsys=capsys)
    assert code == 0 and "0 unchanged, 6 new" in err
    note = next(line for line in err.splitlines() if line.startswith("note: none of the 6 ids"))
    assert "'pics/" in note and f"'{tmp_path / 'pics'}/" in note
    code, err = _encode(tmp_path / "pics", teacher, out, "--update", capsys=capsys)
    assert code == 0 and "note: none" not in err  # an ordinary update says nothing of the kind


def test_remove_takes_a_non_utf8_id_as_brcd_prints_it(teacher, tmp_path: Path, capsys):
    """brcd shows a file name's undecodable bytes as \\xNN escapes; that printed form (or the name itself) removes it."""
    import io
    import os

    folder = _folder(tmp_path / "images", 3)
    png = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 30, 30)).save(png, format="PNG")
    for name in (b"caf\xe9.png", b"th\xe9.png"):
        with open(os.path.join(os.fsencode(folder), b"c0", name), "wb") as fh:
            fh.write(png.getvalue())
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    code, shown, _ = run_cli(["search", str(folder / "c0" / "img_0000.png"), "--codes", str(out), "--model", str(teacher),
                              "-k", "5"], capsys)
    printed = f"{folder}/c0/caf\\xe9.png"
    assert code == 0 and printed in shown.split()
    raw_id = os.fsencode(folder / "c0").decode("utf-8", "surrogateescape") + b"/th\xe9.png".decode("utf-8", "surrogateescape")
    code, text, err = run_cli(["remove", str(out), printed, raw_id], capsys)
    assert code == 0, err
    with read_codes(out) as codes:
        assert codes.count == 3 and not any("\udce9" in item_id for item_id in codes.ids)


def test_an_unreadable_file_is_left_alone_until_it_changes(teacher, tmp_path: Path, capsys, monkeypatch):
    """It was new at every update once (decoded again, counted as new); now it waits, listed, until its file changes."""
    from brcd_cli.data.sources import ImageSource

    folder = _folder(tmp_path / "images", 6)
    (folder / "c0" / "empty.png").write_bytes(b"")
    (folder / "c1" / "notes.png").write_bytes(b"not an image")
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 3
    decoded: list[str] = []
    real = ImageSource.load
    monkeypatch.setattr(ImageSource, "load", lambda self, i, draft=None: (decoded.append(self.ids[i]), real(self, i, draft))[1])
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 3 and "is up to date (6 images unchanged; 2 unreadable as before)" in err and not decoded
    assert "skipped 2 unreadable image(s)" in err
    assert _encode(folder, teacher, out, "--update", "--skip-bad", capsys=capsys)[0] == 0
    _image(folder / "c0" / "empty.png", 99)  # mended: encoded by the next update, the other still waits
    _image(folder / "c2" / "more.png", 98)
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 3 and "0 gone; 1 unreadable as before; encoding 2" in err.replace("6 unchanged, 2 new, 0 changed, ", "")
    assert set(decoded) == {str(folder / "c0" / "empty.png"), str(folder / "c2" / "more.png")}
    skipped = (tmp_path / "codes.bin.skipped.tsv").read_text().splitlines()[1:]
    assert [line.split("\t")[0] for line in skipped] == [str(folder / "c1" / "notes.png")]
    assert out.read_bytes() == _full_encode_bytes(folder, teacher, tmp_path / "full", capsys)
    (folder / "c1" / "notes.png").write_bytes(b"still not an image, but changed")
    decoded.clear()
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 3 and set(decoded) == {str(folder / "c1" / "notes.png")} and "unreadable as before" not in err


def test_a_version_1_record_of_files_is_still_read(teacher, tmp_path: Path, capsys):
    """Records written before the section of unreadable files was added keep their codes (no full encode)."""
    import struct
    import zlib

    folder = _folder(tmp_path / "images", 6)
    out = tmp_path / "codes.bin"
    assert _encode(folder, teacher, out, capsys=capsys)[0] == 0
    table = stat_table.table_path(out)
    raw = table.read_bytes()
    fields = list(stat_table._HEADER.unpack(raw[: stat_table.HEADER_SIZE]))
    body = raw[stat_table.HEADER_SIZE : stat_table.HEADER_SIZE + fields[3] * stat_table.RECORD.itemsize]
    fields[1], fields[5], fields[7] = 1, zlib.crc32(body), 0
    head = stat_table._HEADER.pack(*fields)
    table.write_bytes(head[:-8] + struct.pack("<I", zlib.crc32(head[:-8])) + bytes(4) + body)
    code, err = _encode(folder, teacher, out, "--update", capsys=capsys)
    assert code == 0 and "is up to date (6 images unchanged)" in err

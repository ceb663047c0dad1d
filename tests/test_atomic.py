"""Atomic output: a target appears only whole, a failure keeps the earlier file, and no temp file is left behind."""
from __future__ import annotations

import json
import os
import stat
import zlib
from pathlib import Path

import pytest

from brcd_cli.atomic import AtomicFile, atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text
from brcd_cli.experiment import report


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_target_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_write(target) as fh:
        fh.write(b"first half ")
        fh.flush()
        assert not target.exists()  # the bytes so far sit in a hidden temp file
        (temp,) = tmp_path.iterdir()
        assert temp.name.startswith(".out.bin.") and temp.name.endswith(".tmp")
        fh.write(b"second half")
    assert target.read_bytes() == b"first half second half"
    assert names(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_midway_keeps_earlier_file_and_leaves_no_temp(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "out.json"
    atomic_write_json(target, {"run": 1})
    before = target.read_bytes()
    with pytest.raises(type(error)):
        with atomic_write(target, "w", encoding="utf-8") as fh:
            fh.write('{"run": 2, "trunc')
            fh.flush()
            raise error
    assert target.read_bytes() == before
    assert names(tmp_path) == ["out.json"]


def test_failure_before_first_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="boom"):
        with atomic_write(tmp_path / "new.txt", "w"):
            raise ValueError("boom")
    assert names(tmp_path) == []


def test_bytes_text_and_json_helpers(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\xffraw")
    atomic_write_text(tmp_path / "b.txt", "línea 1\nline 2\r\n")
    atomic_write_json(tmp_path / "c.json", {"b": [1, 2], "a": "ü"})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\xffraw"
    assert (tmp_path / "b.txt").read_bytes() == "línea 1\nline 2\r\n".encode("utf-8")  # newlines kept as given
    text = (tmp_path / "c.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"b": [1, 2], "a": "ü"}
    assert text.startswith('{\n  "a"') and text.endswith("}\n")  # indented, key-sorted, one trailing newline
    atomic_write_text(tmp_path / "b.txt", "replaced")
    assert (tmp_path / "b.txt").read_text() == "replaced"
    assert names(tmp_path) == ["a.bin", "b.txt", "c.json"]


def test_missing_folders_are_created(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "x" / "y" / "z.bin", b"1")
    assert (tmp_path / "x" / "y" / "z.bin").read_bytes() == b"1"


def test_read_back_mode_supports_seeking_and_checksums(tmp_path: Path) -> None:
    """The pattern of an index writer: size the file, write at offsets, read back for a CRC, then the header."""
    target = tmp_path / "index.bin"
    with atomic_write(target, "w+b") as fh:
        fh.truncate(64)
        fh.seek(16)
        fh.write(b"payload")
        fh.flush()
        fh.seek(16)
        crc = zlib.crc32(fh.read(48))
        fh.seek(0)
        fh.write(crc.to_bytes(4, "little"))
    data = target.read_bytes()
    assert len(data) == 64 and data[16:23] == b"payload"
    assert int.from_bytes(data[:4], "little") == zlib.crc32(data[16:])


def test_streams_without_holding_the_file(tmp_path: Path) -> None:
    """Written through the OS as it goes: the temp file grows while the block is still open."""
    target = tmp_path / "big.bin"
    block = os.urandom(1 << 16)
    with AtomicFile(target) as out:
        for _ in range(32):
            out.file.write(block)
        out.file.flush()
        assert out.temp.stat().st_size == 32 * len(block)
    assert target.stat().st_size == 32 * len(block)


def test_check_can_veto_the_rename(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"someone else's")
    out = AtomicFile(target)
    out.file.write(b"mine")

    def refuse() -> None:
        raise FileExistsError("appeared while writing")

    with pytest.raises(FileExistsError):
        out.commit(check=refuse)
    out.abort()  # harmless once the commit failed
    assert target.read_bytes() == b"someone else's"
    assert names(tmp_path) == ["out.bin"]


def test_abort_after_commit_keeps_the_file(tmp_path: Path) -> None:
    out = AtomicFile(tmp_path / "out.bin")
    out.file.write(b"done")
    out.commit()
    out.abort()
    assert (tmp_path / "out.bin").read_bytes() == b"done"


def test_read_modes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="write mode"):
        AtomicFile(tmp_path / "x", "rb")
    assert names(tmp_path) == []


def test_new_files_honour_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"1")
    finally:
        os.umask(previous)
    if os.name == "posix":
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640


CELL = {"method": "brcd", "bits": 16, "seed": 0, "map_ashp": 0.5, "map_sshp": 0.4}


@pytest.mark.filterwarnings("ignore:No artists with labels")  # no teacher codes here, so the PR plot is empty
def test_report_markdown_failure_keeps_earlier_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A results.md that cannot be written whole leaves the earlier one as it was, and no temp file."""
    report.write_report(tmp_path, [CELL], log=lambda _: None)
    before = (tmp_path / "results.md").read_bytes()
    assert b"0.500" in before
    monkeypatch.setattr(report, "markdown", lambda *args: "# half a report\n\udc80 a lone surrogate UTF-8 cannot hold")
    with pytest.raises(UnicodeEncodeError):
        report.write_report(tmp_path, [{**CELL, "map_ashp": 0.1}], log=lambda _: None)
    assert (tmp_path / "results.md").read_bytes() == before
    assert b"0.1" in (tmp_path / "results.csv").read_bytes()  # written whole before the failure
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.filterwarnings("ignore:No artists with labels")
def test_report_csv_failure_midway_keeps_earlier_csv(tmp_path: Path) -> None:
    report.write_report(tmp_path, [CELL], log=lambda _: None)
    before = (tmp_path / "results.csv").read_bytes()

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("cannot format")

    # the header and the first row are written before the second row fails
    with pytest.raises(RuntimeError, match="cannot format"):
        report.write_report(tmp_path, [{**CELL, "map_ashp": 0.1}, {**CELL, "seed": 1, "clusters": Unprintable()}], log=lambda _: None)
    assert (tmp_path / "results.csv").read_bytes() == before
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]

"""Codes files: round trips, streaming, atomic writes, and every corruption read_codes must name."""
from __future__ import annotations

import os
import re
import stat
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brcd_cli.codes import CodesFileError, CodesWriter, read_codes, write_codes
from brcd_cli.codes import reader as reader_module

PRODUCER = "ab" * 32
CODE_SPACE = "0123456789abcdef" * 4
HEADER = struct.Struct("<8s4I4Q32s32s2I")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "codes-format.md"

UNDECODABLE = b"caf\xe9-\xff\xfe.jpg".decode("utf-8", "surrogateescape")
AWKWARD_IDS = ["plain.jpg", "dir with space/ünïcödé 画像.png", "line\nbreak.jpg", "", UNDECODABLE, "emoji 🐈.webp"]


def random_codes(count: int, bits: int, seed: int = 0) -> np.ndarray:
    signs = np.random.default_rng(seed).choice([-1, 1], size=(count, bits))
    return np.packbits(signs > 0, axis=1, bitorder="little")


def write_sample(path: Path, count: int = 6, bits: int = 72, **kwargs) -> tuple[np.ndarray, list[str]]:
    codes = random_codes(count, bits)
    ids = (AWKWARD_IDS * (count // len(AWKWARD_IDS) + 1))[:count]
    write_codes(path, codes, ids, bits, PRODUCER, CODE_SPACE, **kwargs)
    return codes, ids


def rewrite_header(path: Path, **fields: int) -> None:
    """Change header fields and recompute the header checksum, to build files that pass it."""
    data = bytearray(path.read_bytes())
    names = ["magic", "version", "bits", "bytes_per_code", "metadata_length", "count", "codes_offset",
             "ids_offset", "ids_length", "producer", "code_space", "tail_crc32", "header_crc32"]
    values = dict(zip(names, HEADER.unpack_from(data), strict=True))
    values.update(fields)
    data[:128] = HEADER.pack(*values.values())
    data[124:128] = struct.pack("<I", zlib.crc32(data[:124]))
    path.write_bytes(bytes(data))


def header_of(path: Path) -> tuple:
    return HEADER.unpack_from(path.read_bytes())


def refresh_tail_crc(path: Path) -> None:
    """Recompute the ids checksum after editing the tail, so deeper checks are reached."""
    data = path.read_bytes()
    _, _, bits, _, _, count, *_ = header_of(path)
    rewrite_header(path, tail_crc32=zlib.crc32(data[128 + count * bits // 8 :]))


def expect_error(path: Path, *words: str) -> None:
    with pytest.raises(CodesFileError) as info:
        read_codes(path)
    message = str(info.value)
    assert repr(str(path)) in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("bits", [8, 16, 64, 72, 256])
def test_round_trip(tmp_path: Path, bits: int) -> None:
    path = tmp_path / "c.codes"
    metadata = {"model": "teacher", "created": "2024-01-01T00:00:00Z", "nested": {"n": [1, 2]}}
    codes, ids = write_sample(path, count=37, bits=bits, metadata=metadata)
    with read_codes(path) as read:
        assert (read.version, read.bits, read.count, read.bytes_per_code) == (1, bits, 37, bits // 8)
        assert (read.producer, read.code_space) == (PRODUCER, CODE_SPACE)
        assert read.metadata == metadata
        np.testing.assert_array_equal(read.codes, codes)
        assert list(read.ids) == ids
        assert [read.ids[i] for i in range(37)] == ids
        assert read.ids[-1] == ids[-1] and read.ids[2:5] == ids[2:5]
        assert read.path == path


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.one_of(st.text(), st.binary().map(lambda raw: raw.decode("utf-8", "surrogateescape"))), max_size=20))
def test_any_id_round_trips(ids: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.codes"
        write_codes(path, random_codes(len(ids), 8), ids, 8, PRODUCER, CODE_SPACE)
        with read_codes(path) as read:
            assert list(read.ids) == ids


def test_undecodable_filename_returns_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_codes(path, random_codes(1, 8), [UNDECODABLE], 8, PRODUCER, CODE_SPACE)
    with read_codes(path) as read:
        assert read.ids[0].encode("utf-8", "surrogateescape") == b"caf\xe9-\xff\xfe.jpg"
    assert b"caf\xe9-\xff\xfe.jpg" in path.read_bytes()


def test_ids_accept_paths(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_codes(path, random_codes(2, 8), [Path("a/b.jpg"), "c.jpg"], 8, PRODUCER, CODE_SPACE)
    with read_codes(path) as read:
        assert list(read.ids) == [str(Path("a/b.jpg")), "c.jpg"]


def test_iteration_crosses_decode_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader_module, "_ID_BATCH", 3)
    path = tmp_path / "c.codes"
    ids = [f"img_{i}_{'é' * (i % 4)}" for i in range(10)]
    write_codes(path, random_codes(10, 16), ids, 16, PRODUCER, CODE_SPACE)
    with read_codes(path) as read:
        assert list(read.ids) == ids


def test_ids_index_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_sample(path, count=3)
    with read_codes(path) as read:
        with pytest.raises(IndexError):
            read.ids[3]
        with pytest.raises(IndexError):
            read.ids[-4]


def test_streaming_equals_write_codes_byte_for_byte(tmp_path: Path) -> None:
    codes, ids = random_codes(50, 72, seed=3), [f"x/{i}\n.jpg" for i in range(50)]
    metadata = {"model": "m"}
    write_codes(tmp_path / "whole", codes, ids, 72, PRODUCER, CODE_SPACE, metadata=metadata)
    with CodesWriter(tmp_path / "streamed", 72, PRODUCER, CODE_SPACE, metadata=metadata) as writer:
        for start, stop in [(0, 1), (1, 1), (1, 20), (20, 49), (49, 50)]:
            writer.append(codes[start:stop], ids[start:stop])
        assert writer.count == 50
    assert (tmp_path / "whole").read_bytes() == (tmp_path / "streamed").read_bytes()


def test_non_contiguous_batches_are_written_as_values(tmp_path: Path) -> None:
    codes = random_codes(8, 16)
    write_codes(tmp_path / "c", codes[::2], list("abcd"), 16, PRODUCER, CODE_SPACE)
    with read_codes(tmp_path / "c") as read:
        np.testing.assert_array_equal(read.codes, codes[::2])


def test_codes_are_memory_mapped_read_only(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_sample(path, count=100, bits=64)
    read = read_codes(path)
    assert isinstance(read.codes, np.memmap)
    assert read.codes.shape == (100, 8) and read.codes.dtype == np.uint8
    assert not read.codes.flags.writeable
    with pytest.raises(ValueError):
        read.codes[0, 0] = 1
    read.close()
    with pytest.raises(ValueError, match="closed"):
        _ = read.codes
    with pytest.raises(ValueError, match="closed"):
        _ = read.ids


def test_header_layout_matches_the_docs(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_sample(path, count=5, bits=72, metadata={"k": "v"})
    magic, version, bits, per_code, meta_len, count, codes_off, ids_off, ids_len, producer, space, _, _ = header_of(path)
    assert (magic, version, bits, per_code, count, codes_off) == (b"BRCDCODE", 1, 72, 9, 5, 128)
    assert ids_off == 176  # 128 + 5 * 9 = 173, rounded up to a multiple of 8
    assert (producer.hex(), space.hex()) == (PRODUCER, CODE_SPACE)
    assert path.stat().st_size == ids_off + ids_len + meta_len
    assert path.read_bytes()[-meta_len:] == b'{"k":"v"}'


def test_bit_order_is_lsb_first(tmp_path: Path) -> None:
    signs = np.array([[1, -1, -1, -1, -1, -1, -1, 1, -1, -1, -1, -1, -1, -1, -1, -1],
                      [1, 1, -1, -1, -1, -1, -1, -1, 1, -1, -1, -1, -1, -1, -1, -1]])
    packed = np.packbits(signs > 0, axis=1, bitorder="little")
    np.testing.assert_array_equal(packed, [[0x81, 0x00], [0x03, 0x01]])
    path = tmp_path / "c.codes"
    write_codes(path, packed, ["a", "b"], 16, PRODUCER, CODE_SPACE)
    assert path.read_bytes()[128:132] == bytes([0x81, 0x00, 0x03, 0x01])
    with read_codes(path) as read:
        np.testing.assert_array_equal(np.unpackbits(read.codes, axis=1, bitorder="little").astype(np.int8) * 2 - 1, signs)


def test_zero_codes(tmp_path: Path) -> None:
    path = tmp_path / "empty.codes"
    write_codes(path, np.zeros((0, 4), np.uint8), [], 32, PRODUCER, CODE_SPACE)
    with read_codes(path) as read:
        assert read.count == 0 and read.codes.shape == (0, 4)
        assert len(read.ids) == 0 and list(read.ids) == []
        assert read.metadata == {}
    with CodesWriter(tmp_path / "streamed", 32, PRODUCER, CODE_SPACE):
        pass
    assert (tmp_path / "streamed").read_bytes() == path.read_bytes()


def test_exception_in_writer_keeps_earlier_file(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_sample(path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with CodesWriter(path, 8, PRODUCER, CODE_SPACE, overwrite=True) as writer:
            writer.append(random_codes(4, 8), list("abcd"))
            raise RuntimeError("encoder crashed")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.codes"]


def test_bad_batch_aborts_without_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    with pytest.raises(ValueError, match="bytes per code"):
        with CodesWriter(path, 16, PRODUCER, CODE_SPACE) as writer:
            writer.append(random_codes(2, 16), ["a", "b"])
            writer.append(random_codes(2, 8), ["c", "d"])
    assert list(tmp_path.iterdir()) == []


def test_abandoned_temp_file_never_looks_whole(tmp_path: Path) -> None:
    """A crash before close leaves only a temp file, whose header is still zeros."""
    writer = CodesWriter(tmp_path / "c.codes", 8, PRODUCER, CODE_SPACE)
    writer.append(random_codes(3, 8), list("abc"))
    writer._file.flush()  # what a crash would leave on disk
    (temp,) = tmp_path.iterdir()
    assert temp.name.startswith(".c.codes.") and temp.name.endswith(".tmp")
    expect_error(temp, "not a brcd codes file")
    assert not (tmp_path / "c.codes").exists()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_overwrite_refused_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_sample(path)
    before = path.read_bytes()
    with pytest.raises(CodesFileError, match=r"already exists.*overwrite=True"):
        write_codes(path, random_codes(1, 8), ["new"], 8, PRODUCER, CODE_SPACE)
    assert path.read_bytes() == before
    write_codes(path, random_codes(1, 8), ["new"], 8, PRODUCER, CODE_SPACE, overwrite=True)
    with read_codes(path) as read:
        assert list(read.ids) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.codes"]


def test_file_created_during_writing_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    with pytest.raises(CodesFileError, match="already exists"):
        with CodesWriter(path, 8, PRODUCER, CODE_SPACE) as writer:
            writer.append(random_codes(1, 8), ["a"])
            path.write_bytes(b"someone else's")
    assert path.read_bytes() == b"someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["c.codes"]


def test_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    with pytest.raises(ValueError, match="multiple of 8"):
        CodesWriter(path, 12, PRODUCER, CODE_SPACE)
    with pytest.raises(ValueError, match="multiple of 8"):
        CodesWriter(path, 8.0, PRODUCER, CODE_SPACE)
    with pytest.raises(ValueError, match="producer must be 64 hex"):
        CodesWriter(path, 8, "resnet", CODE_SPACE)
    with pytest.raises(ValueError, match="code_space must be 64 hex"):
        CodesWriter(path, 8, PRODUCER, "ab" * 31)
    with pytest.raises(ValueError, match="2 codes but 1 ids"):
        write_codes(path, random_codes(2, 8), ["a"], 8, PRODUCER, CODE_SPACE)
    with pytest.raises(ValueError, match="uint8"):
        write_codes(path, random_codes(2, 8).astype(np.int64), ["a", "b"], 8, PRODUCER, CODE_SPACE)
    with pytest.raises(ValueError, match="lone surrogate"):
        write_codes(path, random_codes(1, 8), ["\ud800"], 8, PRODUCER, CODE_SPACE)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_written_file_honours_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_sample(tmp_path / "c.codes")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "c.codes").stat().st_mode) == 0o644


def test_numpy_integer_bits_are_accepted(tmp_path: Path) -> None:
    write_codes(tmp_path / "c", random_codes(1, 16), ["a"], np.int64(16), PRODUCER, CODE_SPACE)
    with read_codes(tmp_path / "c") as read:
        assert read.bits == 16


def test_writer_close_is_final(tmp_path: Path) -> None:
    with CodesWriter(tmp_path / "c", 8, PRODUCER, CODE_SPACE) as writer:
        writer.append(random_codes(1, 8), ["a"])
        writer.close()
        with pytest.raises(ValueError, match="closed"):
            writer.append(random_codes(1, 8), ["b"])
    with read_codes(tmp_path / "c") as read:
        assert read.count == 1


def test_error_is_a_one_line_user_error(tmp_path: Path) -> None:
    with pytest.raises(CodesFileError) as info:
        read_codes(tmp_path / "missing.codes")
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value) and str(info.value).endswith(".")


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "missing.codes", "does not exist")


def test_not_a_file(tmp_path: Path) -> None:
    expect_error(tmp_path, "is not a regular file")


@pytest.mark.parametrize("content, words", [
    (b"", ["truncated"]),
    (b"BRCD", ["truncated"]),
    (b"BRCDCODE" + bytes(50), ["truncated", "128-byte header"]),
    (b"PK\x03\x04 a zip file, not codes" + bytes(200), ["not a brcd codes file"]),
    (b"\n", ["not a brcd codes file"]),
])
def test_short_or_foreign_files(tmp_path: Path, content: bytes, words: list[str]) -> None:
    path = tmp_path / "c.codes"
    path.write_bytes(content)
    expect_error(path, *words)


def test_future_version(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_sample(path)
    rewrite_header(path, version=2)
    expect_error(path, "newer brcd", "version 2")


def test_version_zero(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_sample(path)
    rewrite_header(path, version=0)
    expect_error(path, "version 0")


def test_corrupt_header(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_sample(path)
    data = bytearray(path.read_bytes())
    data[60] ^= 0x01  # inside the producer fingerprint
    path.write_bytes(bytes(data))
    expect_error(path, "header checksum")


@pytest.mark.parametrize("section, cut", [("codes", 140), ("ids", 190), ("metadata", -2)])
def test_truncated_sections(tmp_path: Path, section: str, cut: int) -> None:
    path = tmp_path / "c.codes"
    write_sample(path, count=6, bits=72, metadata={"model": "m"})  # codes 128..182, ids from 184
    path.write_bytes(path.read_bytes()[:cut])
    expect_error(path, "truncated", f"{section} section")


def test_trailing_garbage(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_sample(path)
    path.write_bytes(path.read_bytes() + b"\0\0\0")
    expect_error(path, "3 bytes of trailing garbage")


def test_corrupt_ids(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_sample(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x20
    path.write_bytes(bytes(data))
    expect_error(path, "ids checksum")


@pytest.mark.parametrize("fields", [
    {"bytes_per_code": 8},
    {"bits": 12, "bytes_per_code": 1},
    {"bits": 0, "bytes_per_code": 0},
    {"codes_offset": 192},
    {"ids_offset": 200},
    {"ids_length": 8},
])
def test_inconsistent_sizes(tmp_path: Path, fields: dict[str, int]) -> None:
    path = tmp_path / "c.codes"
    write_sample(path, count=6, bits=72)
    rewrite_header(path, **fields)
    expect_error(path, "inconsistent sizes")


def test_offsets_table_must_describe_blob(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_sample(path, count=6, bits=72)
    ids_offset = header_of(path)[7]
    data = bytearray(path.read_bytes())
    second = ids_offset + 16
    data[second : second + 8] = struct.pack("<Q", 10**6)  # offsets[2] far past the blob
    path.write_bytes(bytes(data))
    refresh_tail_crc(path)
    expect_error(path, "inconsistent sizes", "offsets table")


def test_metadata_must_be_a_json_object(tmp_path: Path) -> None:
    path = tmp_path / "c.codes"
    write_sample(path, metadata={"a": 1})
    path.write_bytes(path.read_bytes()[:-7] + b"[1, 2 ]")
    refresh_tail_crc(path)
    expect_error(path, "not a JSON object")
    path.write_bytes(path.read_bytes()[:-7] + b"{broken")
    refresh_tail_crc(path)
    expect_error(path, "not valid UTF-8 JSON")


def docs_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) == 1, "docs/codes-format.md should hold exactly one python block"
    return blocks[0]


@pytest.mark.parametrize("count", [0, 23])
def test_docs_snippet_reads_codes_with_numpy_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    path = tmp_path / "c.codes"
    codes, ids = write_sample(path, count=count, bits=72, metadata={"model": "m"})
    monkeypatch.setattr(sys, "argv", ["read_codes.py", str(path)])
    namespace: dict = {"__name__": "__main__"}
    exec(compile(docs_snippet(), str(DOCS), "exec"), namespace)
    np.testing.assert_array_equal(namespace["codes"], codes)
    assert namespace["ids"] == ids
    assert namespace["bits"] == 72
    signs = np.where(np.unpackbits(codes, axis=1, bitorder="little") == 1, 1, -1)
    np.testing.assert_array_equal(namespace["signs"], signs)


def imported_by(statement: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules under ``prefixes`` that ``statement`` loads in a fresh interpreter."""
    probe = f"import sys\n{statement}\nprint(*sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_codes_format_loads_without_torch(tmp_path: Path) -> None:
    """Writing, staging and reading codes files is numpy only, so tools that just handle codes never pay for torch."""
    out = tmp_path / "c.codes"
    statement = (
        "import numpy as np, brcd_cli.codes, brcd_cli.codes.partial as partial\n"
        f"out = {str(out)!r}\n"
        f"staged = partial.PartialCodes(out, 8, {PRODUCER!r}, {CODE_SPACE!r}, digest='d', total=1)\n"
        "staged.start()\n"
        "staged.append(np.zeros((1, 1), np.uint8), ['a'], [('b', 'unreadable')], next_index=2)\n"
        "skipped = staged.skipped()\n"
        "staged.finish()\n"
        "partial.write_skipped(out, skipped)\n"
        "assert brcd_cli.codes.read_codes(out).count == 1 and partial.read_skipped(out) == [('b', 'unreadable')]"
    )
    assert imported_by(statement, ("torch", "safetensors")) == []


def test_encode_command_loads_neither_training_nor_scikit_learn() -> None:
    """What brcd encode imports (the CLI, image sources, the pipeline, the thread setting) stays off the training stack."""
    statement = ("import brcd_cli.cli, brcd_cli.data, brcd_cli.pipeline, brcd_cli.threads\n"
                 "brcd_cli.threads.set_threads(1)")
    assert imported_by(statement, ("sklearn", "brcd_cli.training")) == []


# -- streaming ids, copying encoded ids, splicing files -------------------------------------------------

def test_writer_memory_stays_flat_as_the_ids_grow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak Python allocations of writing 4x more ids grow far less than 4x: the ids stream to side files."""
    import tracemalloc

    from brcd_cli.codes import writer as writer_module

    monkeypatch.setattr(writer_module, "_COPY_BLOCK", 1 << 16)  # so the copy block is not what the peak measures
    peaks = []
    for n in (50_000, 200_000):
        tracemalloc.start()
        with CodesWriter(tmp_path / f"{n}.bin", 64, PRODUCER, CODE_SPACE) as writer:
            for start in range(0, n, 10_000):
                writer.append(np.zeros((10_000, 8), np.uint8), [f"images/{i:012d}.jpg" for i in range(start, start + 10_000)])
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.2 * peaks[0], peaks
    with read_codes(tmp_path / "200000.bin") as codes:
        assert codes.count == 200_000 and codes.ids[123_456] == "images/000000123456.jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["200000.bin", "50000.bin"]  # no side files left


def test_encoded_ids_copy_byte_for_byte(tmp_path: Path) -> None:
    codes, ids = write_sample(tmp_path / "a.bin", count=9)
    with read_codes(tmp_path / "a.bin") as source:
        lengths, blob = source.ids.raw(2, 7)
        assert lengths.tolist() == [len(i.encode("utf-8", "surrogateescape")) for i in ids[2:7]]
        with CodesWriter(tmp_path / "b.bin", 72, PRODUCER, CODE_SPACE) as writer:
            writer.append(codes[:2], ids[:2])
            writer.append_encoded(np.asarray(source.codes[2:7]), lengths, blob)
            writer.append(codes[7:], ids[7:])
            with pytest.raises(ValueError, match="add up to"):
                writer.append_encoded(codes[:1], np.array([3], np.uint64), b"ab")
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    with read_codes(tmp_path / "a.bin") as source, pytest.raises(IndexError):
        source.ids.raw(5, 10)


def test_splice_takes_runs_in_order(tmp_path: Path) -> None:
    from brcd_cli.codes.merge import Run, splice_codes

    a_codes, a_ids = random_codes(10, 64, seed=1), [f"a{i}" for i in range(10)]
    b_codes, b_ids = random_codes(4, 64, seed=2), [f"b{i}" for i in range(4)]
    write_codes(tmp_path / "a.bin", a_codes, a_ids, 64, PRODUCER, CODE_SPACE, metadata={"from": "a"})
    write_codes(tmp_path / "b.bin", b_codes, b_ids, 64, PRODUCER, CODE_SPACE)
    runs = [Run(0, 0, 3), Run(1, 1, 3), Run(0, 5, 10), Run(1, 0, 1), Run(0, 4, 4)]
    with read_codes(tmp_path / "a.bin") as a, read_codes(tmp_path / "b.bin") as b:
        assert splice_codes([a, b], runs, tmp_path / "out.bin", chunk=2) == 3 + 2 + 5 + 1
        with pytest.raises(ValueError, match="outside"):
            splice_codes([a, b], [Run(1, 2, 6)], tmp_path / "bad.bin")
    want_codes = np.concatenate([a_codes[:3], b_codes[1:3], a_codes[5:], b_codes[:1]])
    want_ids = a_ids[:3] + b_ids[1:3] + a_ids[5:] + b_ids[:1]
    with read_codes(tmp_path / "out.bin") as out:
        assert list(out.ids) == want_ids and np.array_equal(np.asarray(out.codes), want_codes)
        assert out.metadata == {"from": "a"}
    assert not (tmp_path / "bad.bin").exists()


def test_splice_over_its_own_source_is_atomic(tmp_path: Path) -> None:
    from brcd_cli.codes.merge import Run, splice_codes

    codes, ids = write_sample(tmp_path / "a.bin", count=8, bits=64)
    with read_codes(tmp_path / "a.bin") as a:
        splice_codes([a], [Run(0, 0, 2), Run(0, 5, 8)], tmp_path / "a.bin", overwrite=True)
    with read_codes(tmp_path / "a.bin") as out:
        assert list(out.ids) == ids[:2] + ids[5:]
        assert np.array_equal(np.asarray(out.codes), np.concatenate([codes[:2], codes[5:]]))

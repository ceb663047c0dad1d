"""Multi-index hashing: exact against the linear scan, on both backends, through the index file and the CLI."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from brcd_cli.bench.lookup import LookupBenchConfig, clustered_codes, run_lookup_bench
from brcd_cli.codes import write_codes
from brcd_cli.errors import BrcdError
from brcd_cli.kernels import mih, reference
from brcd_cli.search import mih as mih_file
from brcd_cli.search.indexed import IndexedCodes, open_indexed
from conftest import run_cli

PRODUCER = "ab" * 32
CODE_SPACE = "cd" * 32
NATIVE = mih.available_backends()["native"] == "available"
BACKENDS = ["reference"] + (["native"] if NATIVE else [])


def dataset(kind: str, n: int, bits: int, seed: int) -> np.ndarray:
    """Random or clustered packed codes with exact duplicates mixed in (ties that must go to the smaller index)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        db = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    else:
        db, _ = clustered_codes(n, bits, clusters=5, flip=0.04, rng=rng)
    if n >= 20:
        db[n // 2 : n // 2 + 8] = db[3]  # a run of duplicates of code 3
        db[-1] = db[0]
    return db


def queries_for(db: np.ndarray, seed: int) -> np.ndarray:
    """Database codes (distance 0 hits, duplicates), 1-2 bit neighbours of them, and fresh random codes."""
    rng = np.random.default_rng(seed + 1)
    bits = 8 * db.shape[1]
    near = db[: min(4, len(db))].copy()
    for row in near:
        for b in rng.choice(bits, size=int(rng.integers(1, 3)), replace=False):
            row[b // 8] ^= np.uint8(1 << (b % 8))
    fresh = rng.integers(0, 256, size=(3, db.shape[1]), dtype=np.uint8)
    return np.concatenate([db[:3], near, fresh]) if len(db) else fresh


def assert_same(got, want) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


# -- exactness against the scan -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("bits,m", [(64, None), (64, 4), (32, 3), (24, 1), (128, 7)])
def test_radius_and_knn_equal_the_scan(backend: str, kind: str, bits: int, m) -> None:
    n = 600 if backend == "native" else 120
    db = dataset(kind, n, bits, seed=bits)
    q = queries_for(db, seed=bits)
    index = mih.MultiIndex(bits, mih.build_tables(db, m, backend=backend), backend=backend)
    for r in range(0, 5):
        assert_same(index.radius_search(q, r), reference.radius_search(q, db, r))
    for k in (1, 10, 100, n + 1):
        assert_same(index.knn(q, k), reference.knn(q, db, k))


@pytest.mark.skipif(not NATIVE, reason="native lookup extension not built")
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_native_larger_radii_threads_and_sorted_tables(kind: str) -> None:
    """Sorted-key tables (forced by a wide substring), radii past the pigeonhole levels, several threads."""
    db = dataset(kind, 3000, 64, seed=7)
    q = queries_for(db, seed=7)
    for m in (2, 3, 5):  # m=2: 32-bit substrings, stored as sorted keys
        index = mih.MultiIndex(64, mih.build_tables(db, m, backend="native"), backend="native")
        for r in (0, 3, 6, 9, 64):
            assert_same(index.radius_search(q, r, threads=2), reference.radius_search(q, db, r))
        for k in (1, 7, 50, 3000, 3001):
            assert_same(index.knn(q, k, threads=2), reference.knn(q, db, k))


@pytest.mark.skipif(not NATIVE, reason="native lookup extension not built")
@pytest.mark.parametrize("simd, build", [("scalar", "scalar"), ("popcnt", "popcnt"), ("avx2", "popcnt"),
                                         ("avx512", "avx512")])
def test_every_cpu_path_agrees(simd: str, build: str, monkeypatch) -> None:
    """Each BRCD_SIMD level runs its build of the candidate check (avx2: the popcnt one) with the scan's results."""
    cpu = mih.native_features()
    runs = {"scalar": True, "popcnt": cpu["cpu_popcnt"], "avx2": cpu["cpu_avx2"], "avx512": cpu["cpu_avx512_vpopcntdq"]}
    if not runs[simd]:
        pytest.skip(f"this CPU cannot run {simd}")
    monkeypatch.setenv("BRCD_SIMD", simd)
    assert mih.native_features()["path"] == build
    db = dataset("clustered", 2000, 64, seed=11)
    q = queries_for(db, seed=11)
    index = mih.MultiIndex(64, mih.build_tables(db, backend="native"), backend="native")
    assert_same(index.radius_search(q, 4), reference.radius_search(q, db, 4))
    assert_same(index.knn(q, 25), reference.knn(q, db, 25))


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_equal_codes(backend: str) -> None:
    """Every code identical: one bucket holds everything and every tie goes to the smaller index."""
    db = np.full((300, 8), 0x5A, dtype=np.uint8)
    q = np.array([[0x5A] * 8, [0x5B] + [0x5A] * 7], dtype=np.uint8)
    index = mih.MultiIndex(64, mih.build_tables(db, backend=backend), backend=backend)
    assert_same(index.knn(q, 10), reference.knn(q, db, 10))
    lims, d, i = index.radius_search(q, 1)
    assert lims.tolist() == [0, 300, 600]
    assert i[:300].tolist() == list(range(300)) and set(d[300:].tolist()) == {1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_index(backend: str) -> None:
    db = np.zeros((0, 8), dtype=np.uint8)
    q = np.ones((2, 8), dtype=np.uint8)
    index = mih.MultiIndex(64, mih.build_tables(db, backend=backend), backend=backend)
    lims, d, i = index.radius_search(q, 64)
    assert lims.tolist() == [0, 0, 0] and d.size == 0 and i.size == 0
    d, i = index.knn(q, 5)
    assert d.shape == (2, 0) and i.shape == (2, 0)


@pytest.mark.skipif(not NATIVE, reason="native lookup extension not built")
def test_native_tables_equal_reference_tables() -> None:
    db = dataset("clustered", 1000, 72, seed=3)
    for m in (3, 5):
        for a, b in zip(mih.build_tables(db, m, backend="native"), mih.build_tables(db, m, backend="reference")):
            assert (a.start, a.width) == (b.start, b.width)
            assert (a.keys is None) == (b.keys is None)
            if a.keys is not None:
                np.testing.assert_array_equal(a.keys, b.keys)
            for x, y in ((a.offsets, b.offsets), (a.ids, b.ids), (a.codes, b.codes)):
                np.testing.assert_array_equal(x, y)


def test_bad_arguments_are_value_errors() -> None:
    db = dataset("random", 50, 64, seed=0)
    index = mih.MultiIndex(64, mih.build_tables(db))
    with pytest.raises(ValueError, match="same code length"):
        index.knn(np.zeros((1, 4), np.uint8), 3)
    with pytest.raises(ValueError, match="positive integer"):
        index.knn(db[:1], 0)
    with pytest.raises(ValueError, match="non-negative"):
        index.radius_search(db[:1], -1)
    with pytest.raises(ValueError, match="wider than 32"):
        mih.build_tables(db, 1)


# -- the pieces of the method --------------------------------------------------------------------------------


def test_default_substrings_follow_log2_n() -> None:
    assert mih.default_substrings(1_000_000, 64) == 4  # ceil(64 / 19.93)
    assert mih.default_substrings(2**32, 64) == 2
    assert mih.default_substrings(10, 64) == 8  # log2 N is taken as at least 8
    assert mih.default_substrings(10**12, 256) == 8  # keys of at most 32 bits
    assert mih.substring_layout(64, 3) == [(0, 22), (22, 21), (43, 21)]


def test_probe_radii_satisfy_the_pigeonhole_bound() -> None:
    """Every pair within r has some substring within its table's probe radius (exhaustively, 12-bit codes)."""
    bits = 12
    weights = [bin(x).count("1") for x in range(1 << bits)]
    for m in (1, 2, 3, 4, 5):
        widths = [bits // m + (1 if j < bits % m else 0) for j in range(m)]
        starts = list(itertools.accumulate([0] + widths[:-1]))
        for r in range(bits + 1):
            radii = mih.probe_radii(r, m)
            for x in range(1 << bits):
                if weights[x] > r:
                    continue
                subs = [weights[(x >> s) & ((1 << w) - 1)] for s, w in zip(starts, widths)]
                assert any(d <= rad for d, rad in zip(subs, radii)), (m, r, x)


# -- the index file ------------------------------------------------------------------------------------------


def make_codes(path: Path, db: np.ndarray, producer: str = PRODUCER) -> Path:
    write_codes(path, db, [f"item-{i}" for i in range(len(db))], 8 * db.shape[1], producer, CODE_SPACE, overwrite=True)
    return path


@pytest.fixture
def codes_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    db = dataset("clustered", 5000, 64, seed=21)
    return make_codes(tmp_path / "db.codes", db), db


def test_index_file_round_trip_is_exact(codes_file) -> None:
    from brcd_cli.codes import read_codes

    path, db = codes_file
    report = mih_file.build_index(path)
    assert report.action == "built" and report.path == mih_file.default_index_path(path)
    assert report.count == 5000 and report.bytes_per_code > 8
    opened = mih_file.open_index(report.path)
    assert isinstance(opened.index.tables[0].ids, np.ndarray)
    q = queries_for(db, seed=21)
    with read_codes(path) as codes:
        mih_file.check_matches(opened.info, codes)
        indexed = IndexedCodes(codes, opened)
        for r in (0, 2, 4):
            hits = list(indexed.range_search_index(q, r))
            lims, d, i = reference.radius_search(q, db, r)
            for row, got in enumerate(hits):
                assert [(h.distance, h.index) for h in got] == list(zip(d[lims[row]:lims[row + 1]].tolist(), i[lims[row]:lims[row + 1]].tolist()))
                assert all(h.id == f"item-{h.index}" for h in got)
        hits = list(indexed.search_index(q, 10))
        d, i = reference.knn(q, db, 10)
        assert [[(h.distance, h.index) for h in row] for row in hits] == [list(zip(a, b)) for a, b in zip(d.tolist(), i.tolist())]
    assert mih_file.build_index(path).action == "up to date"


def test_index_refuses_other_codes_and_corruption(codes_file, tmp_path: Path) -> None:
    from brcd_cli.codes import read_codes

    path, db = codes_file
    index_path = mih_file.build_index(path).path
    other = make_codes(tmp_path / "other.codes", dataset("random", 5000, 64, seed=5))
    with read_codes(other) as codes, pytest.raises(mih_file.IndexFileError, match="other codes"):
        mih_file.check_matches(mih_file.read_index_info(index_path), codes)
    foreign = make_codes(tmp_path / "foreign.codes", db, producer="ef" * 32)
    with read_codes(foreign) as codes, pytest.raises(mih_file.IndexFileError, match="another model"):
        mih_file.check_matches(mih_file.read_index_info(index_path), codes)
    with pytest.raises(BrcdError, match="--force"):
        mih_file.build_index(other, out=index_path)
    assert mih_file.build_index(other, out=index_path, force=True).action == "rebuilt"

    raw = bytearray(index_path.read_bytes())
    raw[-10] ^= 0xFF  # a flipped byte in the last table's codes
    index_path.write_bytes(bytes(raw))
    with pytest.raises(mih_file.IndexFileError, match="checksum"):
        mih_file.open_index(index_path)
    index_path.write_bytes(b"not an index at all" * 10)
    with pytest.raises(mih_file.IndexFileError, match="not a brcd index"):
        mih_file.open_index(index_path)


def test_appended_codes_are_searched_exactly_then_rebuilt(codes_file) -> None:
    from brcd_cli.codes import read_codes

    path, db = codes_file
    mih_file.build_index(path)
    grown = np.concatenate([db, dataset("clustered", 700, 64, seed=99)])
    make_codes(path, grown)
    q = queries_for(grown, seed=4)
    notes: list[str] = []
    with read_codes(path) as codes:
        opened = open_indexed(codes, notes.append)
        assert opened is not None and opened.index.count == 5000 and opened.count == len(grown)
        assert any("covers the first 5000" in note for note in notes)
        for r in (1, 3):
            hits = list(opened.range_search_index(q, r))
            lims, d, i = reference.radius_search(q, grown, r)
            assert [[h.index for h in row] for row in hits] == [i[lims[j]:lims[j + 1]].tolist() for j in range(len(q))]
        hits = list(opened.search_index(q, 20))
        assert [[h.index for h in row] for row in hits] == reference.knn(q, grown, 20)[1].tolist()
    report = mih_file.build_index(path)
    assert report.action == "rebuilt" and report.count == len(grown)


def test_open_collection_uses_the_index_and_matches_the_scan(codes_file) -> None:
    from brcd_cli.search import open_collection, query

    path, db = codes_file
    mih_file.build_index(path)
    q = queries_for(db, seed=8)[:1]
    with open_collection(path) as via_index, open_collection(path, use_index=False) as via_scan:
        assert isinstance(via_index, IndexedCodes) and not isinstance(via_scan, IndexedCodes)
        for kwargs in ({"radius": 3}, {"k": 10}):
            assert via_index._suits(**kwargs)  # the index answers, not the scan behind it
            hits = query(via_index, q, **kwargs).hits(0)
            assert hits == query(via_scan, q, **kwargs).hits(0) and hits


def test_cli_index_builds_reports_and_refuses(codes_file, tmp_path: Path, capsys) -> None:
    path, _ = codes_file
    code, out, err = run_cli(["index", str(path), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["action"] == "built" and report["m"] == 6 and Path(report["path"]).exists()
    code, out, _ = run_cli(["index", str(path)], capsys)
    assert code == 0 and out.startswith("up to date")
    code, _, err = run_cli(["index", str(tmp_path / "missing.codes")], capsys)
    assert code != 0 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["index", str(path), "--m", "1", "--force"], capsys)
    assert code == 1 and "wider than 32" in err and len(err.strip().splitlines()) == 1


def test_encode_keeps_the_index_beside_its_output_current(tmp_path: Path) -> None:
    """An index beside a codes file is rebuilt when encode rewrites the codes (a grown or another collection)."""
    from brcd_cli.codes import read_codes
    from brcd_cli.data import synthetic_source
    from brcd_cli.pipeline import encode_collection
    from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
    from conftest import TINY_ARCH

    teacher = tmp_path / "teacher"
    train_teacher(synthetic_source(n=48, n_classes=4), teacher,
                  TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none",
                                 fit=FitOptions(epochs=1, batch_size=16)), log=lambda _: None)
    out = tmp_path / "db.codes"
    encode_collection(synthetic_source(n=300), teacher, out, log=lambda _: None)
    assert not mih_file.default_index_path(out).exists()  # no index is made unasked
    mih_file.build_index(out, m=2)
    notes: list[str] = []
    encode_collection(synthetic_source(n=500), teacher, out, overwrite=True, log=notes.append)
    info = mih_file.read_index_info(mih_file.default_index_path(out))
    assert info.count == 500 and info.m == 2 and any("rebuilt over 500 codes" in n for n in notes)
    with read_codes(out) as codes:
        mih_file.check_matches(info, codes)  # the index is of exactly these codes


# -- the benchmark -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"radius": 2}, {"k": 10, "clustered": True}])
def test_bench_lookup_reports_exact_results(kwargs: dict) -> None:
    report = run_lookup_bench(LookupBenchConfig(bits=64, n=20000, queries=5, repeats=1, **kwargs))
    for key in ("mih_qps", "scan_qps", "faiss_multihash_qps", "speedup", "exact", "build_seconds", "index_bytes_per_code"):
        assert key in report
    assert report["exact"] is True and report["mih_qps"] > 0 and report["scan_qps"] > 0
    assert report["index_bytes_per_code"] > 8


def test_bench_lookup_rejects_bad_options() -> None:
    with pytest.raises(BrcdError, match="--bits"):
        run_lookup_bench(LookupBenchConfig(bits=12))
    with pytest.raises(BrcdError, match="--flip"):
        run_lookup_bench(LookupBenchConfig(flip=0.9))

"""The search contract: every collection type returns what the numpy reference scan returns on the same codes."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from brcd_cli.codes import write_codes
from brcd_cli.errors import BrcdError, OptionError
from brcd_cli.kernels import reference
from brcd_cli.search import (
    Collection,
    FlatCodes,
    SearchResult,
    ShardedCollection,
    check_compatible,
    open_collection,
    query,
)
from brcd_cli.search import mih as mih_file
from brcd_cli.search.indexed import IndexedCodes
from conftest import run_cli
from test_mih import dataset, queries_for

SPACE = "cd" * 32
N = 6000  # above the size where an index may answer at all
RADII = (0, 1, 3, 6)
KS = (1, 10, 32, 100)


def _ids(n: int, prefix: str = "item") -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def _file(path: Path, db: np.ndarray, space: str = SPACE, prefix: str = "item") -> Path:
    write_codes(path, db, _ids(len(db), prefix), 8 * db.shape[1], "ab" * 32, space, overwrite=True)
    return path


def _want_knn(q: np.ndarray, db: np.ndarray, k: int) -> list[list[tuple[int, int]]]:
    d, i = reference.knn(q, db, k)
    return [list(zip(a, b)) for a, b in zip(d.tolist(), i.tolist())]


def _want_range(q: np.ndarray, db: np.ndarray, r: int) -> list[list[tuple[int, int]]]:
    lims, d, i = reference.radius_search(q, db, r)
    return [list(zip(d[lims[j]:lims[j + 1]].tolist(), i[lims[j]:lims[j + 1]].tolist())) for j in range(len(q))]


def _global(result: SearchResult) -> list[list[tuple[int, int]]]:
    return [list(zip(*(a.tolist() for a in result.row(q)))) for q in range(len(result))]


@pytest.fixture(scope="module")
def db() -> np.ndarray:
    return dataset("clustered", N, 64, seed=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory, db) -> dict[str, Path]:
    """The same codes as one file with an index, one without, and three shards (one of them indexed, one empty)."""
    root = tmp_path_factory.mktemp("search")
    plain = _file(root / "plain.codes", db)
    indexed = _file(root / "indexed.codes", db)
    mih_file.build_index(indexed)
    cuts = [0, 4500, 4500, N]
    shards = [_file(root / f"shard{s}.codes", db[lo:hi]) for s, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:]))]
    mih_file.build_index(shards[0])
    return {"plain": plain, "indexed": indexed, "shards": shards}


def _collections(files: dict[str, Path]) -> dict[str, Collection]:
    return {
        "flat": open_collection(files["plain"]),
        "indexed": open_collection(files["indexed"]),
        "sharded": open_collection(files["shards"]),
        "scan-of-indexed": open_collection(files["indexed"], use_index=False),
    }


def test_open_collection_picks_the_implementation(files) -> None:
    opened = _collections(files)
    try:
        assert type(opened["flat"]) is FlatCodes and type(opened["scan-of-indexed"]) is FlatCodes
        assert type(opened["indexed"]) is IndexedCodes and type(opened["sharded"]) is ShardedCollection
        assert isinstance(opened["sharded"].parts[0], IndexedCodes) and opened["sharded"].count == N
        for c in opened.values():
            assert isinstance(c, Collection) and (c.bits, c.code_space, c.count) == (64, SPACE, N)
    finally:
        for c in opened.values():
            c.close()


@pytest.mark.parametrize("kind", ["flat", "indexed", "sharded", "scan-of-indexed"])
def test_every_collection_equals_the_reference_scan(kind: str, files, db) -> None:
    q = queries_for(db, seed=11)
    with _collections(files)[kind] as codes:
        for k in KS:
            assert _global(codes.search(q, k)) == _want_knn(q, db, k), k
        for r in RADII:
            assert _global(codes.range_search(q, r)) == _want_range(q, db, r), r
        if isinstance(codes, IndexedCodes):  # and through the index when the scan would be chosen
            for k in KS:
                assert _global(codes.search_index(q, k)) == _want_knn(q, db, k)
            for r in RADII:
                assert _global(codes.range_search_index(q, r)) == _want_range(q, db, r)


def test_hits_name_items_by_file_and_position(files, db) -> None:
    q = db[4400:4401].copy()
    q[0, 0] ^= 1
    with open_collection(files["shards"]) as sharded, open_collection(files["plain"]) as whole:
        got, want = sharded.search(q, 200).hits(0), whole.search(q, 200).hits(0)
    assert [(h.rank, h.distance) for h in got] == [(h.rank, h.distance) for h in want]
    assert [h.rank for h in got] == list(range(1, 201))
    for g, w in zip(got, want):  # the same item: position w.index of the whole is g.index of shard g.file
        offset = 0 if g.file.endswith("shard0.codes") else 4500
        assert g.index + offset == w.index and g.id == f"item-{g.index}" and w.file is None


def test_adversarial_codes_ties_and_tiny_collections() -> None:
    equal = np.zeros((50, 4), np.uint8)
    q = np.zeros((2, 4), np.uint8)
    flat = FlatCodes(equal, _ids(50), bits=32)
    assert _global(flat.search(q, 7)) == [[(0, i) for i in range(7)]] * 2  # ties go to the smaller position
    assert _global(flat.search(q, 500)) == [[(0, i) for i in range(50)]] * 2  # k > n
    sharded = ShardedCollection([FlatCodes(equal[:0], [], bits=32), FlatCodes(equal[:3], _ids(3), bits=32),
                                 FlatCodes(equal[3:], _ids(47), bits=32)])
    assert _global(sharded.search(q, 5)) == [[(0, i) for i in range(5)]] * 2
    assert _global(sharded.range_search(q, 0)) == [[(0, i) for i in range(50)]] * 2
    empty = FlatCodes(np.zeros((0, 4), np.uint8), [], bits=32)
    assert [len(r) for r in empty.search(q, 3)] == [0, 0] and len(empty.range_search(q, 32)) == 2


def test_requests_are_checked_once_for_every_collection(files) -> None:
    with open_collection(files["shards"]) as codes:
        for bad in (0, -3, 2.5, True):
            with pytest.raises(OptionError, match="k must be positive") as info:
                codes.search(np.zeros((1, 8), np.uint8), bad)
            assert info.value.field == "k"
        with pytest.raises(OptionError, match="radius must be >= 0"):
            query(codes, np.zeros((1, 8), np.uint8), radius=-1)
        with pytest.raises(BrcdError, match="32 bits cannot search the 64-bit codes"):
            codes.search(np.zeros((1, 4), np.uint8), 3)


def test_shards_must_agree_and_codes_must_match_the_model(tmp_path: Path, files, db) -> None:
    other_space = _file(tmp_path / "other.codes", db[:10], space="ef" * 32)
    with pytest.raises(BrcdError, match="another code space"):
        open_collection([files["plain"], other_space])
    short = _file(tmp_path / "short.codes", np.zeros((3, 4), np.uint8))
    with pytest.raises(BrcdError, match="different lengths"):
        open_collection([files["plain"], short])
    with pytest.raises(BrcdError, match="at least one codes file"):
        open_collection([])
    with open_collection(files["shards"]) as codes:
        check_compatible(codes, 64, SPACE)
        with pytest.raises(BrcdError, match="shard0.codes was encoded in another code space"):
            check_compatible(codes, 64, "12" * 32)
        with pytest.raises(BrcdError, match="holds 64-bit codes but the model makes 32-bit"):
            check_compatible(codes, 32, SPACE)


def test_cli_names_the_flag_of_a_field_that_fails_its_check(capsys) -> None:
    from brcd_cli.cli import flag_of

    assert flag_of("k") == "-k" and flag_of("radius") == "--radius" and flag_of("cache_views") == "--cache-views"
    code, _, err = run_cli(["search", "q.jpg", "--codes", "c.bin", "--model", "m", "-k", "0"], capsys)
    assert code == 1 and err.strip() == "error: -k must be positive, got 0"


@pytest.mark.skipif(importlib.util.find_spec("milvus_lite") is None, reason="Milvus Lite comes with the milvus (and dev) extra")
def test_milvus_collection_keeps_the_contract(tmp_path: Path) -> None:
    from brcd_cli.search.milvus import MilvusCollection, export_codes

    db = dataset("random", 300, 32, seed=8)
    path = _file(tmp_path / "m.codes", db)
    uri = str(tmp_path / "m.db")
    export_codes(path, uri, "m", log=lambda _: None)
    q = queries_for(db, seed=2)
    with open_collection(uri, collection="m") as codes:
        assert isinstance(codes, MilvusCollection) and (codes.bits, codes.code_space, codes.count) == (32, SPACE, 300)
        for r in (0, 5, 9):  # the whole set within a radius: identical, positions and ids included
            result = codes.range_search(q, r)
            assert _global(result) == _want_range(q, db, r)
            assert all(h.id == f"item-{h.index}" for row in result for h in row)
        for k in (1, 10):  # Milvus breaks distance ties its own way: the distances agree
            got = [[d for d, _ in row] for row in _global(codes.search(q, k))]
            assert got == [[d for d, _ in row] for row in _want_knn(q, db, k)]
        assert codes.item(7) == ("item-7", 7, None)
        with pytest.raises(BrcdError, match="no item 300"):
            codes.item(300)
        with pytest.raises(OptionError, match="for Milvus"):
            codes.search(q, 20000)

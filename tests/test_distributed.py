"""Scale-out: shards under torchrun, searches across several codes files, and Milvus Lite."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brcd_cli.codes import CodesFileError, concatenate_codes, read_codes, write_codes
from brcd_cli.distributed import World
from brcd_cli.search import FlatCodes, ShardedCollection
from brcd_cli.search import query as query_collection
from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
from brcd_cli.data import synthetic_source
from conftest import TINY_ARCH, run_cli

REPO = Path(__file__).resolve().parents[1]
QUIET = lambda message: None  # noqa: E731


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "teacher"
    options = TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none",
                             fit=FitOptions(epochs=1, batch_size=16, lr=1e-3))
    train_teacher(synthetic_source(n=48), out, options, log=QUIET)
    return out


@given(n=st.integers(0, 1000), size=st.integers(1, 9))
def test_shards_cover_everything_once_in_order(n: int, size: int):
    bounds = [World(rank=r, size=size).shard(n) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(size - 1))
    lengths = [hi - lo for lo, hi in bounds]
    assert max(lengths) - min(lengths) <= 1


def _random_file(path: Path, n: int, seed: int, space: str = "cd" * 32, bits: int = 32) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, size=(n, bits // 8), dtype=np.uint8)  # few distinct values: many ties
    ids = [f"{path.stem}/{i}" for i in range(n)]
    write_codes(path, codes, ids, bits=bits, producer="ab" * 32, code_space=space, metadata={"data": "x"})
    return codes, ids


def test_concatenated_shards_equal_one_file(tmp_path: Path):
    parts = [_random_file(tmp_path / f"p{i}.codes", n, i) for i, n in enumerate((5, 0, 7))]
    concatenate_codes([tmp_path / f"p{i}.codes" for i in range(3)], tmp_path / "all.codes")
    write_codes(tmp_path / "direct.codes", np.concatenate([c for c, _ in parts]), [i for _, ids in parts for i in ids],
                bits=32, producer="ab" * 32, code_space="cd" * 32, metadata={"data": "x"})
    assert (tmp_path / "all.codes").read_bytes() == (tmp_path / "direct.codes").read_bytes()


def test_concatenation_refuses_another_code_space(tmp_path: Path):
    _random_file(tmp_path / "a.codes", 3, 0)
    _random_file(tmp_path / "b.codes", 3, 1, space="ef" * 32)
    with pytest.raises(CodesFileError, match="another model"):
        concatenate_codes([tmp_path / "a.codes", tmp_path / "b.codes"], tmp_path / "all.codes")
    assert not (tmp_path / "all.codes").exists()


@pytest.mark.parametrize("k,radius", [(1, None), (7, None), (100, None), (None, 0), (None, 3)])
def test_merged_shard_results_equal_a_search_of_the_whole(k, radius, tmp_path: Path):
    shards = [_random_file(tmp_path / f"s{i}.codes", n, i) for i, n in enumerate((40, 13, 0, 29))]
    everything = np.concatenate([c for c, _ in shards])
    all_ids = [i for _, ids in shards for i in ids]
    query = np.random.default_rng(9).integers(0, 4, size=(1, 4), dtype=np.uint8)
    sharded = ShardedCollection([FlatCodes(c, ids, bits=32, name=f"s{i}") for i, (c, ids) in enumerate(shards)])
    merged = query_collection(sharded, query, k=k, radius=radius).hits(0)
    whole = query_collection(FlatCodes(everything, all_ids, bits=32), query, k=k, radius=radius).hits(0)
    assert [(h.rank, h.distance, h.id) for h in merged] == [(h.rank, h.distance, h.id) for h in whole]
    assert all(shards[int(h.file[1:])][1][h.index] == h.id for h in merged)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_torchrun_encode_equals_single_process_byte_for_byte(teacher: Path, tmp_path: Path, capsys):
    single = tmp_path / "single.codes"
    assert run_cli(["encode", "synthetic:301", "--model", str(teacher), "--out", str(single)], capsys)[0] == 0
    sharded = tmp_path / "sharded.codes"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "brcd_cli",
         "encode", "synthetic:301", "--model", str(teacher), "--out", str(sharded), "--batch-size", "32"],
        env=_env(), capture_output=True, timeout=180, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert sharded.read_bytes() == single.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sharded.codes", "single.codes"]  # shards cleaned up
    assert done.stderr.decode().count("wrote 301 codes") == 1  # only rank 0 speaks


def test_search_over_several_codes_files_equals_the_merged_file(teacher: Path, tmp_path: Path, capsys):
    from brcd_cli.data import synthetic_source as synth
    from brcd_cli.pipeline import encode_collection

    source = synth(n=90)
    parts = []
    for r, (lo, hi) in enumerate([World(rank=r, size=3).shard(90) for r in range(3)]):
        parts.append(tmp_path / f"part{r}.codes")
        encode_collection(source.slice(lo, hi), teacher, parts[-1], log=QUIET)
    whole = tmp_path / "whole.codes"
    encode_collection(source, teacher, whole, log=QUIET)
    query = tmp_path / "q.png"
    source.load(7).save(query)
    for extra in (["-k", "25"], ["--radius", "2"]):
        code, out_parts, err = run_cli(["search", str(query), *sum([["--codes", str(p)] for p in parts], []),
                                        "--model", str(teacher), "--json", *extra], capsys)
        assert code == 0, err
        code, out_whole, _ = run_cli(["search", str(query), "--codes", str(whole), "--model", str(teacher), "--json", *extra], capsys)
        got = [(h["rank"], h["distance"], h["id"]) for h in json.loads(out_parts)["results"]]
        want = [(h["rank"], h["distance"], h["id"]) for h in json.loads(out_whole)["results"]]
        assert got == want and got


needs_milvus = pytest.mark.skipif(importlib.util.find_spec("milvus_lite") is None,
                                  reason="Milvus Lite comes with the milvus (and dev) extra")


@needs_milvus
def test_milvus_lite_results_equal_exact_search(teacher: Path, tmp_path: Path, capsys):
    codes = tmp_path / "db.codes"
    assert run_cli(["encode", "synthetic:400", "--model", str(teacher), "--out", str(codes)], capsys)[0] == 0
    uri = str(tmp_path / "milvus.db")
    code, out, err = run_cli(["export", "milvus", str(codes), "--uri", uri], capsys)
    assert code == 0 and out.strip() == "db" and "exported 400 16-bit codes" in err
    code, _, err = run_cli(["export", "milvus", str(codes), "--uri", uri], capsys)
    assert code == 1 and "already exists" in err and "--force" in err
    query = tmp_path / "q.png"
    synthetic_source(n=400).load(3).save(query)
    for extra in (["-k", "10"], ["-k", "50"], ["--radius", "0"], ["--radius", "2"]):
        code, via_milvus, err = run_cli(["search", str(query), "--milvus", uri, "--collection", "db", "--model", str(teacher),
                                         "--json", *extra], capsys)
        assert code == 0, err
        code, exact, _ = run_cli(["search", str(query), "--codes", str(codes), "--model", str(teacher), "--json", *extra], capsys)
        got, want = json.loads(via_milvus)["results"], json.loads(exact)["results"]
        assert [h["distance"] for h in got] == [h["distance"] for h in want]
        if "--radius" in extra:  # the full set within the radius: identical, ids included
            assert [h["id"] for h in got] == [h["id"] for h in want]


@needs_milvus
def test_milvus_refuses_queries_from_another_code_space(teacher: Path, tmp_path: Path, capsys):
    other = tmp_path / "other"
    train_teacher(synthetic_source(n=48), other, TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none", seed=5,
                                                                fit=FitOptions(epochs=1, batch_size=16, lr=1e-3, seed=5)), log=QUIET)
    codes = tmp_path / "db.codes"
    run_cli(["encode", "synthetic:40", "--model", str(teacher), "--out", str(codes)], capsys)
    uri = str(tmp_path / "milvus.db")
    run_cli(["export", "milvus", str(codes), "--uri", uri, "--collection", "db"], capsys)
    query = tmp_path / "q.png"
    synthetic_source(n=4).load(0).save(query)
    code, _, err = run_cli(["search", str(query), "--milvus", uri, "--collection", "db", "--model", str(other)], capsys)
    assert code == 1 and "another code space" in err.strip().splitlines()[-1]
    code, _, err = run_cli(["search", str(query), "--milvus", uri, "--collection", "nope", "--model", str(teacher)], capsys)
    assert code == 1 and "no collection nope" in err.strip().splitlines()[-1]


def _epoch_losses(text: str) -> list[float]:
    return [float(line.split("loss ")[1].split()[0]) for line in text.splitlines() if line.startswith("epoch ")]


def test_two_process_training_matches_one_process(tmp_path: Path):
    """gloo, 2 processes, same global batch: the same loss per epoch (frozen backbone, so no per-process BatchNorm;
    no feature cache, which is a single-process feature, so both runs augment the same way)."""
    args = ["train-teacher", "synthetic:96", "--arch", TINY_ARCH, "--bits", "16", "--image-size", "16", "--pretrained", "none",
            "--freeze-backbone", "--no-feature-cache", "--epochs", "3", "--batch-size", "32", "--threads", "1"]
    one = subprocess.run([sys.executable, "-m", "brcd_cli", *args, "--out", str(tmp_path / "one")],
                         env=_env(), capture_output=True, timeout=180)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "brcd_cli",
                          *args, "--out", str(tmp_path / "two")], env=_env(), capture_output=True, timeout=180)
    assert one.returncode == 0 and two.returncode == 0, two.stderr.decode()[-2000:]
    single, parallel = _epoch_losses(one.stderr.decode()), _epoch_losses(two.stderr.decode())
    assert len(single) == 3 and parallel == pytest.approx(single, abs=1e-3)
    assert "data-parallel training on 2 processes" in two.stderr.decode()
    assert two.stderr.decode().count("teacher saved to") == 1  # rank 0 speaks for all
    assert (tmp_path / "two" / "config.json").is_file()

"""brcd duplicates: exact pairs within the radius (equal to all pairs by brute force), connected groups, reports."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brcd_cli.codes import write_codes
from brcd_cli.duplicates import components, find_duplicates
from brcd_cli.errors import BrcdError
from conftest import run_cli

PRODUCER = "ab" * 32
SPACE = "cd" * 32


def _flip(code: np.ndarray, *bits: int) -> np.ndarray:
    out = code.copy()
    for b in bits:
        out[b // 8] ^= 1 << (b % 8)
    return out


def _planted(n: int, seed: int = 0) -> np.ndarray:
    """Random 64-bit codes with near-duplicates at known places (a chain 10-11-12 and pairs)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    codes[11] = _flip(codes[10], 3, 40)  # d(10, 11) = 2
    codes[12] = _flip(codes[11], 7, 50)  # d(11, 12) = 2, d(10, 12) = 4: one group through 11
    codes[n - 1] = _flip(codes[5], 9)  # a pair far apart in the file
    codes[20] = codes[21]  # exact copies
    return codes


def _brute_pairs(codes: np.ndarray, radius: int) -> set[tuple[int, int]]:
    bits = np.unpackbits(codes, axis=1).astype(np.int16)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    i, j = np.nonzero(np.triu(dist <= radius, k=1))
    return set(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("n,index_file", [(300, False), (5000, False), (5000, True)])
def test_pairs_are_every_pair_within_the_radius(n: int, index_file: bool, tmp_path: Path, capsys):
    codes = _planted(n)
    path = tmp_path / "codes.bin"
    write_codes(path, codes, [f"item{i}" for i in range(n)], 64, PRODUCER, SPACE)
    if index_file:
        assert run_cli(["index", str(path)], capsys)[0] == 0
    report = find_duplicates(path, 2)
    assert report.searched_by == ("scan" if n < 4096 else "index")
    assert set(map(tuple, report.pairs.tolist())) == _brute_pairs(codes, 2)
    groups = [[m.index for m in g.members] for g in report.groups]
    assert groups == [[5, n - 1], [10, 11, 12], [20, 21]]
    chain = report.groups[1]
    assert chain.reference.index == 10 and [m.distance for m in chain.members] == [0, 2, 4]


def test_components_group_by_connection_and_order_by_first_item():
    pairs = np.array([[7, 9], [1, 4], [4, 6], [2, 3]], np.int64)
    assert [g.tolist() for g in components(10, pairs)] == [[1, 4, 6], [2, 3], [7, 9]]
    assert components(5, np.zeros((0, 2), np.int64)) == []


def test_cli_reports_json_csv_and_a_sheet_of_thumbnails(tmp_path: Path, capsys):
    rng = np.random.default_rng(1)
    files = []
    for i in range(4):
        path = tmp_path / f"photo_{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    codes = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    codes[3] = _flip(codes[1], 0)
    out = tmp_path / "codes.bin"
    write_codes(out, codes, files, 64, PRODUCER, SPACE)
    code, text, err = run_cli(["duplicates", str(out), "--radius", "1", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(text)
    assert doc["pairs"] == 1 and doc["duplicates"] == 1 and doc["groups"] == [{
        "reference": {"index": 1, "id": files[1], "distance": 0}, "size": 2,
        "members": [{"index": 1, "id": files[1], "distance": 0}, {"index": 3, "id": files[3], "distance": 1}]}]
    code, text, _ = run_cli(["duplicates", str(out), "--radius", "1", "--csv"], capsys)
    assert list(csv.reader(io.StringIO(text))) == [["group", "index", "id", "reference", "distance"],
                                                    ["1", "1", files[1], "1", "0"], ["1", "3", files[3], "0", "1"]]
    sheet = tmp_path / "dups.html"
    code, text, err = run_cli(["duplicates", str(out), "--radius", "1", "--html", str(sheet)], capsys)
    assert code == 0 and text.startswith("1 groups of near-duplicates within radius 1") and "reference" in text
    page = sheet.read_text()
    assert page.count('src="data:image/jpeg;base64,') == 2 and "<b>reference</b>" in page and "d = 1" in page


@pytest.mark.parametrize("args,exit_code,words", [
    (["--radius", "-1"], 1, "--radius must be >= 0"),
    (["--radius", "2", "--json", "--csv"], 1, "--json or --csv"),
    ([], 2, "Missing option '--radius'"),
])
def test_cli_mistakes_are_one_line(args, exit_code, words, tmp_path: Path, capsys):
    out = tmp_path / "codes.bin"
    write_codes(out, _planted(30), [f"i{i}" for i in range(30)], 64, PRODUCER, SPACE)
    code, _, err = run_cli(["duplicates", str(out), *args], capsys)
    assert code == exit_code and words in err.strip().splitlines()[-1] and "Traceback" not in err
    code, _, err = run_cli(["duplicates", str(tmp_path / "none.bin"), "--radius", "2"], capsys)
    assert code == 5 and "none.bin" in err


def test_bench_duplicates_scores_pairs_against_the_seeded_truth(tmp_path: Path):
    from brcd_cli.bench.duplicates import DuplicatesBenchConfig, format_report, make_near_duplicates, run_duplicates_bench
    from brcd_cli.data import synthetic_source
    from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
    from conftest import TINY_ARCH

    data = make_near_duplicates(tmp_path / "work" / "images", grid=1, originals=0.5, size=48, seed=3)
    families = {name.split("~")[0].removesuffix(".jpg") for pair in data.truth for name in pair}
    assert len(data.truth) == 10 * len(families) and len(data.files) == 40 + 4 * len(families) - 20
    again = make_near_duplicates(tmp_path / "work" / "images", grid=1, originals=0.5, size=48, seed=3)
    assert again.truth == data.truth and again.files == data.files  # made once, then reused
    model = tmp_path / "teacher"
    train_teacher(synthetic_source(n=48, n_classes=4), model, TeacherOptions(
        arch=TINY_ARCH, bits=16, image_size=16, pretrained="none", fit=FitOptions(epochs=1, batch_size=16)), log=lambda _: None)
    report = run_duplicates_bench(DuplicatesBenchConfig(folder=tmp_path / "work", model=model, grid=1, originals=0.5,
                                                        size=48, seed=3, radius=4, use_imagededup=False))
    sweep = report["brcd"]["sweep"]
    assert report["true_pairs"] == len(data.truth) and sweep[16]["pairs"] == len(data.files) * (len(data.files) - 1) // 2
    assert sweep[16]["recall"] == 1.0 and sweep[0]["pairs"] <= sweep[4]["pairs"] <= sweep[8]["pairs"]
    lines = format_report(report)
    assert any("<- brcd --radius" in line for line in lines)
    # the perceptual hashers ran on the same files, their radii scaled to their bits
    dct64, dct256 = report["brcd_perceptual"]["perceptual:dct64"], report["brcd_perceptual"]["perceptual:dct256"]
    assert (dct64["bits"], dct64["default_radius"], dct256["radius_scale"]) == (64, 10, 4)
    assert sorted(dct256["sweep"]) == [4 * r for r in sorted(sweep)] and dct64["seconds"] > 0
    assert dct64["sweep"][0]["precision"] == 1.0  # exact pixel layouts: a distance-0 pair is a true copy here
    assert any(line.startswith("brcd perceptual:dct64 at its default radius 10: P ") for line in lines)
    with pytest.raises(BrcdError, match="perceptual:md5"):
        DuplicatesBenchConfig(hashers=("perceptual:md5",))

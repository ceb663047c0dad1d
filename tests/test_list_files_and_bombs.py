"""List files name one image per line, spaces and all; a decompression bomb is one line of brcd's, not Pillow's warning."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brcd_cli.data.sources import list_source
from brcd_cli.errors import DataError
from conftest import run_cli

ODD_NAME = "Kaffee tasse ☕ é.jpg"

# Runs the real CLI in a fresh interpreter, as a user does: in-process, pytest's own warning capture would
# swallow Pillow's warning (and reset any filter installed at import), so stderr could not show it.
# The limit is lowered after brcd's import (which sets it) so that a small image is a "bomb".
CLI_WITH_LIMIT = (
    "import sys\n"
    "from PIL import Image\n"
    "import brcd_cli.data.sources\n"
    "Image.MAX_IMAGE_PIXELS = int(sys.argv[1])\n"
    "from brcd_cli.cli import main\n"
    "sys.argv = ['brcd', *sys.argv[2:]]\n"
    "main()\n"
)
LIMIT = 20_000  # the good 20x24 images stay far below it, resized or cropped to 64 px too


def _odd_image(image_folder: Path) -> Path:
    path = image_folder / "good" / "variants" / ODD_NAME
    path.parent.mkdir(parents=True)
    Image.fromarray(np.full((20, 24, 3), (30, 200, 30), dtype=np.uint8)).save(path)
    return path


def _brcd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-c", CLI_WITH_LIMIT, str(LIMIT), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_list_file_path_with_spaces_and_unicode_resolves(image_folder: Path) -> None:
    odd = _odd_image(image_folder)
    lst = image_folder / "list.txt"
    lst.write_text(f"good/variants/{ODD_NAME}\n\n  red/red_0.jpg  \r\n", encoding="utf-8")
    src = list_source(lst)
    assert src.files == [odd, image_folder / "red" / "red_0.jpg"] and src.labels is None
    assert src.load(0).size == (24, 20)
    # labelled: the trailing integers are the labels, or the fields after a TAB
    lst.write_text(f"good/variants/{ODD_NAME} 1 0\nred/red_0.jpg 0 1\n", encoding="utf-8")
    src = list_source(lst)
    assert src.files[0] == odd and src.labels.tolist() == [[1, 0], [0, 1]]
    lst.write_text(f"good/variants/{ODD_NAME}\t1 0\nred/red_0.jpg\t0\t1\n", encoding="utf-8")
    src = list_source(lst)
    assert src.files[0] == odd and src.labels.tolist() == [[1, 0], [0, 1]]
    lst.write_text("red/red_0.jpg 0 x 1\n")  # a broken label vector is still said to be one
    with pytest.raises(DataError, match="labels must be integers"):
        list_source(lst)


def test_search_reads_a_query_list_with_spaces_in_a_path(image_folder: Path, tmp_path: Path, capsys) -> None:
    odd = _odd_image(image_folder)
    codes = tmp_path / "c.bin"
    code, _, err = run_cli(["encode", str(image_folder), "--model", "perceptual:dct64", "--out", str(codes)], capsys)
    assert code == 0, err
    queries = tmp_path / "queries.txt"
    queries.write_text(f"images/good/variants/{ODD_NAME}\nimages/red/red_1.png 0 1\n", encoding="utf-8")
    code, out, err = run_cli(["search", str(queries), "--codes", str(codes), "--model", "perceptual:dct64",
                              "-k", "1", "--json"], capsys)
    assert code == 0, err
    assert "not found" not in out + err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["query"] for row in rows] == [str(odd), str(image_folder / "red" / "red_1.png")]
    assert all("error" not in row and row["results"][0]["distance"] == 0 for row in rows), rows


def test_bomb_query_is_one_stderr_line_in_search(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((20, 24, 3), 90, dtype=np.uint8)).save(images / "good.png")
    Image.new("RGB", (150, 150), (9, 9, 9)).save(tmp_path / "bomb.png")  # 1.1x the limit: Pillow only warns
    Image.new("RGB", (250, 250), (9, 9, 9)).save(tmp_path / "bigger.png")  # over 2x: Pillow raises
    encoded = _brcd(tmp_path, "encode", "images", "--model", "perceptual:dct64", "--out", "c.bin")
    assert encoded.returncode == 0, encoded.stderr
    for name, words in (("bomb.png", "150x150 pixels is above the 20,000 pixel limit"), ("bigger.png", "could be decompression bomb")):
        result = _brcd(tmp_path, "search", name, "--codes", "c.bin", "--model", "perceptual:dct64")
        assert result.returncode == 3
        assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
        assert result.stderr.startswith(f"error: cannot read query image {name}: ") and words in result.stderr
        assert "Warning" not in result.stderr


def test_bomb_in_encode_is_skipped_without_pillow_warning(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 24, 3), 40 * i, dtype=np.uint8)).save(images / f"good_{i}.png")
    Image.new("RGB", (150, 150), (9, 9, 9)).save(images / "bomb.png")
    Image.new("RGB", (250, 250), (9, 9, 9)).save(images / "bigger.png")
    result = _brcd(tmp_path, "encode", "images", "--model", "perceptual:dct64", "--out", "c.bin", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert "DecompressionBombWarning" not in result.stderr and "warnings.warn" not in result.stderr, result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped images/")]
    assert len(skipped) == 2 and all("decompression bomb" in line for line in skipped), result.stderr
    assert all(line.startswith(("skipped ", "wrote ")) for line in result.stderr.splitlines()), result.stderr
    assert "3 codes" in result.stderr or "3 codes" in result.stdout


def test_an_embedded_data_name_that_is_also_a_path_here_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys) -> None:
    """A folder called photos (or digits) in the working directory: the name is ambiguous, so neither is taken."""
    from brcd_cli.data import open_source
    from brcd_cli.errors import DataError

    monkeypatch.chdir(tmp_path)
    for name in ("photos", "digits"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / name / "a.png")
        with pytest.raises(DataError, match=f"write ./{name}"):
            open_source(name)
        mine = open_source(f"./{name}")
        assert len(mine) == 1 and mine.files is not None
    assert open_source("photos:2").name == "photos" and len(open_source("photos:2")) > 1  # the explicit form still works
    code, _, err = run_cli(["encode", "photos", "--model", "perceptual:dct64", "--out", str(tmp_path / "c.bin")], capsys)
    assert code == 3 and len(err.strip().splitlines()) == 1 and "./photos" in err
    assert not (tmp_path / "c.bin").exists()

"""Training and evaluating on a folder with unreadable files: every bad one named at once, or skipped with --skip-bad."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brcd_cli.data import open_source
from brcd_cli.data.screen import readable, unreadable
from brcd_cli.errors import DataError
from conftest import TINY_ARCH, run_cli

TRAIN = ["--arch", TINY_ARCH, "--image-size", "16", "--pretrained", "none", "--epochs", "1", "--batch-size", "16"]


@pytest.fixture
def damaged(image_folder: Path) -> tuple[Path, list[str]]:
    """The real image folder plus an empty JPEG, a cut-off PNG and a text file named like an image."""
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(png, format="PNG")
    classes = sorted(p for p in image_folder.iterdir() if p.is_dir())
    bad = {classes[0] / "empty.jpg": b"", classes[1] / "cut.png": png.getvalue()[:100],
           classes[0] / "notes.jpg": b"not an image at all"}
    for path, data in bad.items():
        path.write_bytes(data)
    return image_folder, sorted(str(p) for p in bad)


def test_unreadable_names_each_bad_file_and_take_keeps_labels_in_step(damaged) -> None:
    folder, bad = damaged
    source = open_source(str(folder))
    kept, found = unreadable(source)
    assert sorted(item_id for item_id, _ in found) == bad and len(kept) == len(source) - 3
    with pytest.raises(DataError, match="3 of .* images cannot be read .*--skip-bad"):
        readable(source, skip_bad=False, log=lambda _: None)
    said: list[str] = []
    clean = readable(source, skip_bad=True, log=said.append)
    assert clean.ids == [source.ids[i] for i in kept] and clean.files == [source.files[i] for i in kept]
    assert np.array_equal(clean.labels, source.labels[kept])
    assert all(np.asarray(clean.load(j)).shape[-1] == 3 for j in range(len(clean)))
    assert sum(line.startswith("skipped: ") for line in said) == 3
    digits = open_source("digits")
    assert readable(digits, skip_bad=False) is digits  # nothing on disk to go bad: not even decoded


def test_take_renumbers_protocol_groups() -> None:
    source = open_source("synthetic:10")
    source.protocol = {"train": np.array([0, 1, 2, 3, 4]), "test": np.array([5, 6, 7, 8, 9])}
    part = source.take([1, 3, 6, 9])
    assert part.protocol["train"].tolist() == [0, 1] and part.protocol["test"].tolist() == [2, 3]
    assert part.ids == [source.ids[i] for i in (1, 3, 6, 9)]


def test_training_names_every_bad_file_at_once_or_skips_them(damaged, tmp_path: Path, capsys) -> None:
    folder, bad = damaged
    out = tmp_path / "teacher"
    code, _, err = run_cli(["train-teacher", str(folder), "--bits", "16", "--out", str(out), *TRAIN], capsys)
    assert code == 3 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert all(item in err for item in bad) and "--skip-bad" in err and not out.exists()
    code, _, err = run_cli(["train-teacher", str(folder), "--bits", "16", "--out", str(out), "--skip-bad", *TRAIN], capsys)
    assert code == 0, err
    assert sorted(line.split(": ", 1)[1].split(": ")[0].removeprefix("cannot read image ")
                  for line in err.splitlines() if line.startswith("skipped: ")) == bad
    code, text, err = run_cli(["evaluate", str(folder), "--teacher", str(out), "--json"], capsys)
    assert code == 3 and all(item in err for item in bad)
    code, text, err = run_cli(["evaluate", str(folder), "--teacher", str(out), "--json", "--skip-bad"], capsys)
    assert code == 0, err
    assert json.loads(text)

"""Shared fixtures: tiny real timm models and seeded synthetic data keep the suite fast."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)

TINY_ARCH = "test_resnet"  # a real timm architecture, small enough for unit tests


def run_cli(args: list[str], capsys=None) -> tuple[int, str, str]:
    """Run the brcd entry point in-process; returns (exit code, stdout, stderr).

    Without ``capsys`` (module-scoped fixtures) the output is left to pytest's capture."""
    from brcd_cli.cli import main

    old = sys.argv
    sys.argv = ["brcd", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A small labelled folder of real PNG/JPEG files: two classes of distinct colours."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for cls, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            arr = np.clip(np.array(colour) + rng.normal(0, 20, size=(20, 24, 3)), 0, 255).astype(np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(arr).save(root / cls / f"{cls}_{i}.{ext}")
    return root

"""The inference program saved beside a checkpoint: the same codes as the model, and no timm to encode a query."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brcd_cli.codes import read_codes
from brcd_cli.data import digits_source, to_tensor
from brcd_cli.encoding import codes_of_images
from brcd_cli.errors import ModelError
from brcd_cli.models import ExportedModel, HashModel, load_encoder, load_model
from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
from conftest import TINY_ARCH, run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from brcd_cli.data import synthetic_source

    out = tmp_path_factory.mktemp("export") / "model"
    train_teacher(synthetic_source(n=48), out, TeacherOptions(arch=TINY_ARCH, bits=32, image_size=24, pretrained="none",
                                                               fit=FitOptions(epochs=1, batch_size=16)), log=lambda _: None)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_saving_writes_a_checked_program_that_encodes_exactly_like_the_model(model_dir: Path) -> None:
    record = json.loads((model_dir / "config.json").read_text())["export"]
    assert record["file"] == "model.ts" and record["format"] == "torchscript" and (model_dir / "model.ts").is_file()
    encoder, fingerprint = load_encoder(model_dir)
    model, same = load_model(model_dir)
    assert isinstance(encoder, ExportedModel) and isinstance(model, HashModel) and fingerprint == same
    source = digits_source()  # real images, every one of them
    images = torch.stack([to_tensor(source.load(i), 24) for i in range(len(source))])
    assert torch.equal(codes_of_images(encoder, images), codes_of_images(model, images))


def test_a_missing_or_changed_program_falls_back_to_the_model(model_dir: Path, tmp_path: Path) -> None:
    gone = _copy(model_dir, tmp_path / "gone")
    (gone / "model.ts").unlink()
    assert isinstance(load_encoder(gone)[0], HashModel)
    changed = _copy(model_dir, tmp_path / "changed")
    raw = bytearray((changed / "model.ts").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (changed / "model.ts").write_bytes(bytes(raw))
    assert isinstance(load_encoder(changed)[0], HashModel)  # the sha256 in config.json no longer matches
    tampered = _copy(model_dir, tmp_path / "tampered")
    weights = bytearray((tampered / "model.safetensors").read_bytes())
    weights[-3] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ModelError, match="does not match the fingerprint"):
        load_encoder(tampered)


def test_encode_through_the_program_writes_the_codes_the_model_writes(model_dir: Path, tmp_path: Path, capsys) -> None:
    plain = _copy(model_dir, tmp_path / "plain")
    (plain / "model.ts").unlink()
    for name, model in (("a.codes", model_dir), ("b.codes", plain)):
        assert run_cli(["encode", "synthetic:150", "--model", str(model), "--out", str(tmp_path / name)], capsys)[0] == 0
    with read_codes(tmp_path / "a.codes") as a, read_codes(tmp_path / "b.codes") as b:
        assert np.array_equal(np.asarray(a.codes), np.asarray(b.codes)) and list(a.ids) == list(b.ids)
        assert a.code_space == b.code_space


def test_a_search_imports_neither_timm_nor_torchvision(model_dir: Path, tmp_path: Path, capsys) -> None:
    codes = tmp_path / "c.codes"
    assert run_cli(["encode", "synthetic:40", "--model", str(model_dir), "--out", str(codes)], capsys)[0] == 0
    query = tmp_path / "q.png"
    digits_source().load(3).save(query)
    script = ("import sys; from brcd_cli.cli import main\n"
              "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
              "print(sorted(m for m in ('timm', 'torchvision', 'sklearn') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script, "search", str(query), "--codes", str(codes), "--model",
                           str(model_dir), "-k", "3"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_an_edited_config_does_not_run_the_old_program(model_dir: Path, tmp_path: Path) -> None:
    edited = _copy(model_dir, tmp_path / "edited")
    doc = json.loads((edited / "config.json").read_text())
    doc["config"]["bits"] = 64
    (edited / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="with 64 bits"):  # the model is built, and its weights do not fit
        load_encoder(edited)

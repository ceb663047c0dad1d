"""brcd bench encode and torch's threads: every row starts from the given count (or every core) and reports what it ran with."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from brcd_cli.bench.encode import EncodeBenchConfig, format_report, run_encode_bench
from brcd_cli.errors import OptionError
from brcd_cli.threads import process_cores


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from brcd_cli.data import synthetic_source
    from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
    from conftest import TINY_ARCH

    folder = tmp_path_factory.mktemp("bench-threads") / "teacher"
    train_teacher(synthetic_source(n=32, n_classes=4), folder,
                  TeacherOptions(arch=TINY_ARCH, bits=16, image_size=32, pretrained="none",
                                 fit=FitOptions(epochs=1, batch_size=16)), log=lambda _: None)
    return folder


def _config(model: Path, folder: Path, threads=None) -> EncodeBenchConfig:
    return EncodeBenchConfig(model=model, folder=folder, images=9, distinct=3, sizes=((960, 720),), batch_size=4,
                             workers=2, split_images=2, native_crops=0, decodings=("draft",), threads=threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_given_threads_hold_in_every_row(model: Path, tmp_path_factory, threads: int) -> None:
    before = torch.get_num_threads()
    try:
        report = run_encode_bench(_config(model, tmp_path_factory.mktemp("j"), threads))
    finally:
        torch.set_num_threads(before)
    assert report["torch_threads"] == threads
    assert [r["torch_threads"] for r in report["end_to_end"]] == [threads] * len(report["end_to_end"]) != []
    assert all(f"forward threads {threads}" in line for line in format_report(report) if "images/s (steady" in line)


def test_without_threads_each_row_chooses_as_encode_does(model: Path, tmp_path_factory) -> None:
    before = torch.get_num_threads()
    try:
        report = run_encode_bench(_config(model, tmp_path_factory.mktemp("j")))
    finally:
        torch.set_num_threads(before)
    assert report["torch_threads"] == process_cores()  # the network alone: every core
    assert all(1 <= r["torch_threads"] <= process_cores() for r in report["end_to_end"])


def test_bad_threads_are_one_clear_error(model: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="threads"):
        run_encode_bench(_config(model, tmp_path, threads=0))

"""Training loops, clustering, masks and resume on small synthetic data with a tiny real timm model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from brcd_cli.data import synthetic_source
from brcd_cli.errors import BrcdError
from brcd_cli.models import load_model
from brcd_cli.training import (
    DistillOptions, FitOptions, TeacherOptions, bit_consistency, bit_masks, cluster_codes, distill, train_teacher,
)
from conftest import TINY_ARCH

QUIET = lambda message: None  # noqa: E731


def teacher_options(**fit) -> TeacherOptions:
    return TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none",
                          fit=FitOptions(epochs=fit.pop("epochs", 2), batch_size=16, lr=1e-3, **fit))


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("t") / "teacher"
    train_teacher(synthetic_source(n=96, n_classes=4), out, teacher_options(), log=QUIET)
    return out


def test_teacher_writes_model_and_record(trained_teacher: Path):
    model, fp = load_model(trained_teacher)
    assert model.config.role == "teacher" and model.config.bits == 16 and model.config.augment == "photo"
    record = json.loads((trained_teacher / "run.json").read_text())
    assert record["state"] == "done" and record["fingerprint"] == fp and record["result"]["epochs"] == 2
    assert len(record["result"]["history"]) == 2 and 0.0 <= record["result"]["best_score"] <= 1.0


def test_existing_model_is_not_overwritten_without_force(trained_teacher: Path):
    before = (trained_teacher / "model.safetensors").read_bytes()
    with pytest.raises(BrcdError, match="--force"):
        train_teacher(synthetic_source(n=96, n_classes=4), trained_teacher, teacher_options(), log=QUIET)
    assert (trained_teacher / "model.safetensors").read_bytes() == before


def test_resume_continues_from_the_saved_epoch(tmp_path: Path):
    src = synthetic_source(n=64, n_classes=4)
    out = tmp_path / "teacher"
    train_teacher(src, out, teacher_options(epochs=1), log=QUIET)
    messages: list[str] = []
    result = train_teacher(src, out, teacher_options(epochs=3), resume=True, log=messages.append)
    assert any("resuming" in m and "after epoch 1" in m for m in messages)
    assert [row["epoch"] for row in result.result.history] == [1, 2, 3]
    with pytest.raises(BrcdError, match="option bits was 16, now 32"):
        opts = teacher_options(epochs=4)
        opts.bits = 32
        train_teacher(src, out, opts, resume=True, log=QUIET)


def test_distill_saves_student_in_teacher_code_space_with_clusters(trained_teacher: Path, tmp_path: Path):
    _, teacher_fp = load_model(trained_teacher)
    out = tmp_path / "student"
    opts = DistillOptions(arch=TINY_ARCH, pretrained="none", hidden=32, clusters=3,
                          fit=FitOptions(epochs=2, batch_size=16, lr=1e-3))
    trained = distill(synthetic_source(n=96, n_classes=4), trained_teacher, out, opts, log=QUIET)
    student, fp = load_model(out)
    assert student.config.role == "student" and student.config.code_space == teacher_fp and fp == trained.fingerprint
    assert student.config.image_size == 16 and student.config.bits == 16
    clusters = load_file(str(out / "clusters.safetensors"))
    assert clusters["centres"].shape == (3, 16) and clusters["masks"].shape == (3, 16)
    meta = json.loads((out / "clusters.json").read_text())
    assert meta["k"] == 3 and sum(meta["cluster_sizes"]) == len(meta["train_ids"])


def test_student_alone_gets_its_own_code_space(trained_teacher: Path, tmp_path: Path):
    opts = DistillOptions(arch=TINY_ARCH, pretrained="none", hidden=32, method="none",
                          fit=FitOptions(epochs=1, batch_size=16, lr=1e-3))
    distill(synthetic_source(n=64, n_classes=4), trained_teacher, tmp_path / "alone", opts, log=QUIET)
    student, _ = load_model(tmp_path / "alone")
    assert student.config.code_space == "" and student.config.method == "cibhash"
    assert not (tmp_path / "alone" / "clusters.json").exists()


def test_bad_distill_options_are_refused(trained_teacher: Path, tmp_path: Path):
    with pytest.raises(BrcdError, match="alpha"):
        distill(synthetic_source(n=32), trained_teacher, tmp_path / "s", DistillOptions(alpha=1.5), log=QUIET)
    with pytest.raises(BrcdError, match="method"):
        distill(synthetic_source(n=32), trained_teacher, tmp_path / "s", DistillOptions(method="fitnet2"), log=QUIET)


def _clustered_codes(k: int = 4, per: int = 50, bits: int = 32, flip: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.choice([-1.0, 1.0], size=(k, bits))
    labels = np.repeat(np.arange(k), per)
    codes = centres[labels] * np.where(rng.random((k * per, bits)) < flip, -1.0, 1.0)
    return codes.astype(np.float32), labels


def test_auto_k_finds_well_separated_clusters_and_records_the_curve():
    codes, labels = _clustered_codes(k=5)
    result = cluster_codes(codes, k=None, seed=0, k_range=(2, 9))
    assert result.k == 5 and result.method == "silhouette"
    assert [row["k"] for row in result.curve] == list(range(2, 10))
    # the clustering agrees with the generating labels up to renaming
    pairs = {(a, b) for a, b in zip(result.labels, labels)}
    assert len(pairs) == 5


def test_bit_consistency_and_mask_rules_hand_worked():
    codes = np.array([[1, 1, -1], [1, -1, -1], [-1, 1, 1], [-1, 1, 1]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    m = bit_consistency(codes, labels, 2)
    assert m.tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    assert bit_masks(m, 0.5).tolist() == [[1, 0, 1], [1, 1, 1]]
    assert bit_masks(m, 0.5, "opposite").tolist() == [[0, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="mask rule"):
        bit_masks(m, 0.5, "random")

"""The frozen-feature cache: exact features per (image, view), invalidation, and distillation from it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brcd_cli.data import Augmenter, make_split, preload, synthetic_source
from brcd_cli.errors import BrcdError
from brcd_cli.models import load_model
from brcd_cli.training import DistillOptions, FitOptions, TeacherOptions, distill, train_teacher
from brcd_cli.training.common import build_model
from brcd_cli.training.feature_cache import augmented_view, build_or_open, teacher_outputs
from conftest import TINY_ARCH

QUIET = lambda message: None  # noqa: E731


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    src = synthetic_source(n=64, n_classes=4, size=16)
    out = tmp_path_factory.mktemp("cache") / "teacher"
    train_teacher(src, out, TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none",
                                           fit=FitOptions(epochs=1, batch_size=16)), log=QUIET)
    teacher, fp = load_model(out)
    split = make_split(src, seed=0)
    images = preload(src, split.train, 16)
    torch.manual_seed(0)
    student = build_model(TINY_ARCH, 16, 16, "none", True, QUIET, role="student", head="mlp", hidden=24)
    return src, out, teacher, fp, split, images, student


def test_cached_features_equal_features_computed_directly_for_the_same_view(setup, tmp_path: Path):
    _, _, teacher, fp, split, images, student = setup
    cache = build_or_open(tmp_path, student, teacher, fp, images, split.train, "photo", views=3, seed=7, batch_size=5, log=QUIET)
    assert cache.student.shape[:2] == (len(images), 3) and cache.teacher_logits.shape == (len(images), 3, 16)
    aug = Augmenter("photo")
    with torch.no_grad():
        for position, view in [(0, 0), (3, 2), (len(images) - 1, 1)]:
            x = augmented_view(images[position], aug, 7, int(split.train[position]), view)
            f, logits, hidden = cache.rows(np.array([position]), np.array([view]))
            torch.testing.assert_close(f, student.features(x), rtol=1e-5, atol=1e-5)
            t_hidden, t_logits = teacher_outputs(teacher, x)
            torch.testing.assert_close(logits, t_logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(hidden, t_hidden, rtol=1e-5, atol=1e-5)
            assert torch.equal(torch.where(logits >= 0, 1.0, -1.0), teacher.codes(x))
        clean = student.features(images[:4].float().div(255.0))
    torch.testing.assert_close(torch.from_numpy(np.array(cache.clean[:4])), clean, rtol=1e-5, atol=1e-5)
    # two views of one image differ (the augmentation really ran), and a view is the same whatever the batch
    assert not np.allclose(cache.student[0, 0], cache.student[0, 1])


def test_cache_is_reused_for_the_same_inputs_and_rebuilt_when_any_changes(setup, tmp_path: Path):
    _, _, teacher, fp, split, images, student = setup
    first = build_or_open(tmp_path, student, teacher, fp, images, split.train, "photo", 2, 0, log=QUIET)
    messages: list[str] = []
    again = build_or_open(tmp_path, student, teacher, fp, images, split.train, "photo", 2, 0, log=messages.append)
    assert again.path == first.path and any("reusing" in m for m in messages)
    others = {
        build_or_open(tmp_path, student, teacher, fp, images, split.train, "photo", 3, 0, log=QUIET).path,  # V
        build_or_open(tmp_path, student, teacher, fp, images, split.train, "none", 2, 0, log=QUIET).path,  # augment
        build_or_open(tmp_path, student, teacher, fp, images, split.train, "photo", 2, 1, log=QUIET).path,  # seed
        build_or_open(tmp_path, student, teacher, "another-teacher", images, split.train, "photo", 2, 0, log=QUIET).path,
        build_or_open(tmp_path, student, teacher, fp, images.flip(0), split.train, "photo", 2, 0, log=QUIET).path,  # data
    }
    torch.manual_seed(1)
    other_student = build_model(TINY_ARCH, 16, 16, "none", True, QUIET, role="student", head="mlp", hidden=24)
    others.add(build_or_open(tmp_path, other_student, teacher, fp, images, split.train, "photo", 2, 0, log=QUIET).path)
    assert first.path not in others and len(others) == 6
    assert not any(p.name.startswith(".building") for p in tmp_path.iterdir())


def test_cache_refuses_a_trainable_backbone_and_a_single_view(setup, tmp_path: Path):
    _, _, teacher, fp, split, images, student = setup
    with pytest.raises(BrcdError, match="at least 2 views"):
        build_or_open(tmp_path, student, teacher, fp, images, split.train, "photo", 1, 0, log=QUIET)
    trainable = build_model(TINY_ARCH, 16, 16, "none", False, QUIET, role="student")
    with pytest.raises(BrcdError, match="frozen"):
        build_or_open(tmp_path, trainable, teacher, fp, images, split.train, "photo", 2, 0, log=QUIET)


def _opts(**kw) -> DistillOptions:
    return DistillOptions(arch=TINY_ARCH, pretrained="none", hidden=24, clusters=3, cache_views=3,
                          fit=FitOptions(epochs=kw.pop("epochs", 2), batch_size=16), **kw)


def test_distill_from_the_cache_is_on_by_default_for_a_frozen_backbone(setup, tmp_path: Path):
    src, teacher_dir, _, teacher_fp, *_ = setup
    trained = distill(src, teacher_dir, tmp_path / "s", _opts(freeze_backbone=True), log=QUIET)
    record = json.loads((tmp_path / "s" / "run.json").read_text())
    assert record["feature_cache"] and Path(record["feature_cache"]).parent == tmp_path / "s" / "feature-cache"
    assert trained.result.epochs == 2 and 0.0 <= trained.result.best_score <= 1.0
    student, _ = load_model(tmp_path / "s")
    assert student.config.code_space == teacher_fp and student.config.freeze_backbone
    plain = distill(src, teacher_dir, tmp_path / "p", _opts(freeze_backbone=True, feature_cache=False), log=QUIET)
    assert json.loads((tmp_path / "p" / "run.json").read_text())["feature_cache"] is None and plain.result.epochs == 2
    with pytest.raises(BrcdError, match="frozen student backbone"):
        distill(src, teacher_dir, tmp_path / "t", _opts(freeze_backbone=False, feature_cache=True), log=QUIET)


def test_cached_training_resumes(setup, tmp_path: Path):
    src, teacher_dir, *_ = setup
    distill(src, teacher_dir, tmp_path / "s", _opts(freeze_backbone=True, epochs=1), log=QUIET)
    messages: list[str] = []
    result = distill(src, teacher_dir, tmp_path / "s", _opts(freeze_backbone=True, epochs=2), resume=True, log=messages.append)
    assert [row["epoch"] for row in result.result.history] == [1, 2] and any("reusing" in m for m in messages)


@pytest.mark.slow
def test_cache_bench_reports_both_sides_from_one_run(setup, tmp_path: Path):
    from brcd_cli.bench.cache import CacheBenchConfig, run_cache_bench, seconds_per_epoch

    src, teacher_dir, *_ = setup
    config = CacheBenchConfig(out=tmp_path, teacher=teacher_dir, epochs=2, seeds=1, views=2,
                              student=DistillOptions(arch=TINY_ARCH, pretrained="none", freeze_backbone=True, hidden=24,
                                                     method="kd", fit=FitOptions(batch_size=16)))
    report = run_cache_bench(src, config, log=QUIET)
    for side in ("direct", "cache"):
        assert report[side]["seconds_per_epoch"] > 0 and 0.0 <= report[side]["map_ashp"] <= 1.0
    assert report["speedup_per_epoch"] == pytest.approx(report["direct"]["seconds_per_epoch"] / report["cache"]["seconds_per_epoch"])
    assert json.loads((tmp_path / "cache-seed0" / "run.json").read_text())["feature_cache"]
    assert json.loads((tmp_path / "direct-seed0" / "run.json").read_text())["feature_cache"] is None
    # the median epoch after the first: warm-up and one slow epoch do not count
    assert seconds_per_epoch([{"seconds": 10.0}, {"seconds": 11.0}, {"seconds": 12.0}, {"seconds": 20.0}]) == 1.0
    assert seconds_per_epoch([{"seconds": 3.0}]) == 3.0

"""The frozen-feature cache: exact features per (image, view), invalidation, sharing, and training from it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brcd_cli.data import make_split, preload, synthetic_source
from brcd_cli.errors import BrcdError
from brcd_cli.models import load_model
from brcd_cli.training import DistillOptions, FitOptions, TeacherOptions, distill, train_teacher
from brcd_cli.training.common import build_model
from brcd_cli.training.feature_cache import ViewSet, build_or_open, resized, teacher_outputs
from conftest import TINY_ARCH

QUIET = lambda message: None  # noqa: E731


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    src = synthetic_source(n=64, n_classes=4, size=16)
    out = tmp_path_factory.mktemp("cache") / "teacher"
    train_teacher(src, out, TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none", freeze_backbone=False,
                                           fit=FitOptions(epochs=1, batch_size=16)), log=QUIET)
    teacher, fp = load_model(out)
    split = make_split(src, seed=0)
    images = preload(src, split.train, 16)
    torch.manual_seed(0)
    student = build_model(TINY_ARCH, 16, 12, "none", True, QUIET, role="student", head="mlp", hidden=24)
    return src, out, teacher, fp, split, images, student


def _views(images, split, views=3, seed=7, augment="photo") -> ViewSet:
    return ViewSet.of(images, split.train, augment, views, seed)


def test_cached_features_equal_features_computed_directly_for_the_same_view(setup, tmp_path: Path):
    _, _, teacher, _, split, images, student = setup
    view_set = _views(images, split)
    small = preload(setup[0], split.train, 12)
    cache = build_or_open(tmp_path, student, view_set, small, batch_size=5, log=QUIET)
    t_cache = build_or_open(tmp_path, teacher, view_set, images, batch_size=5, log=QUIET)
    assert cache.views.shape[:2] == (len(images), 3) and t_cache.views.shape[:2] == (len(images), 3)
    with torch.no_grad():
        for position, view in [(0, 0), (3, 2), (len(images) - 1, 1)]:
            x = view_set.view(position, view)  # drawn at the view size (16), resized to each network's
            f = cache.rows(np.array([position]), np.array([view]))
            torch.testing.assert_close(f, student.features(resized(x, 12)), rtol=1e-4, atol=1e-4)
            t_hidden, t_logits = teacher_outputs(teacher, x)
            torch.testing.assert_close(t_cache.rows(np.array([position]), np.array([view])), t_hidden, rtol=1e-4, atol=1e-4)
            logits = teacher.head(t_cache.rows(np.array([position]), np.array([view])))
            assert torch.equal(torch.where(logits >= 0, 1.0, -1.0), teacher.codes(x))
        clean = student.features(small[:4].float().div(255.0))
    torch.testing.assert_close(cache.clean_features()[:4], clean, rtol=1e-4, atol=1e-4)
    # two views of one image differ (the augmentation really ran), and a view is the same whatever the batch
    assert not np.allclose(cache.views[0, 0], cache.views[0, 1])
    torch.testing.assert_close(view_set.batch(range(2, 5), 1)[1:2], view_set.view(3, 1))


def test_cache_is_reused_for_the_same_inputs_and_rebuilt_when_any_changes(setup, tmp_path: Path):
    _, _, teacher, _, split, images, student = setup
    first = build_or_open(tmp_path, teacher, _views(images, split), images, log=QUIET)
    messages: list[str] = []
    again = build_or_open(tmp_path, teacher, _views(images, split), images, log=messages.append)
    assert again.path == first.path and any("reusing" in m for m in messages)
    others = {
        build_or_open(tmp_path, teacher, _views(images, split, views=2), images, log=QUIET).path,
        build_or_open(tmp_path, teacher, _views(images, split, augment="none"), images, log=QUIET).path,
        build_or_open(tmp_path, teacher, _views(images, split, seed=8), images, log=QUIET).path,
        build_or_open(tmp_path, teacher, _views(images.flip(0), split), images, log=QUIET).path,  # other views
        build_or_open(tmp_path, teacher, _views(images, split), images.flip(0), log=QUIET).path,  # other test-time images
        build_or_open(tmp_path, student, _views(images, split), preload(setup[0], split.train, 12), log=QUIET).path,
    }
    assert first.path not in others and len(others) == 6
    assert not any(p.name.startswith(".building") for p in tmp_path.iterdir())
    meta = json.loads((first.path / "meta.json").read_text())
    assert meta["arch"] == TINY_ARCH and meta["views"] == 3 and meta["fingerprint"] == first.fingerprint


def test_view_sets_need_two_views_and_matching_images(setup, tmp_path: Path):
    _, _, teacher, _, split, images, _ = setup
    with pytest.raises(BrcdError, match="at least 2 views"):
        _views(images, split, views=1)
    with pytest.raises(BrcdError, match="indices"):
        ViewSet.of(images[:3], split.train, "photo", 2, 0)
    with pytest.raises(BrcdError, match="test-time images"):
        build_or_open(tmp_path, teacher, _views(images, split), images[:3], log=QUIET)


def _opts(**kw) -> DistillOptions:
    return DistillOptions(arch=TINY_ARCH, pretrained="none", hidden=24, clusters=3, cache_views=3,
                          fit=FitOptions(epochs=kw.pop("epochs", 2), batch_size=16), **kw)


def test_distill_from_the_cache_is_on_by_default_for_a_frozen_backbone(setup, tmp_path: Path):
    src, teacher_dir, _, teacher_fp, *_ = setup
    cache_root = tmp_path / "caches"
    trained = distill(src, teacher_dir, tmp_path / "s", _opts(freeze_backbone=True, cache_dir=cache_root), log=QUIET)
    record = json.loads((tmp_path / "s" / "run.json").read_text())
    assert Path(record["feature_cache"]).parent == cache_root and Path(record["teacher_feature_cache"]).parent == cache_root
    assert trained.result.epochs == 2 and 0.0 <= trained.result.best_score <= 1.0
    student, _ = load_model(tmp_path / "s")
    assert student.config.code_space == teacher_fp and student.config.freeze_backbone
    plain = distill(src, teacher_dir, tmp_path / "p", _opts(freeze_backbone=True, feature_cache=False), log=QUIET)
    assert json.loads((tmp_path / "p" / "run.json").read_text())["feature_cache"] is None and plain.result.epochs == 2
    with pytest.raises(BrcdError, match="frozen student backbone"):
        distill(src, teacher_dir, tmp_path / "t", _opts(freeze_backbone=False, feature_cache=True), log=QUIET)


def test_a_frozen_teacher_trains_from_its_cache_and_its_students_reuse_it(tmp_path: Path):
    src = synthetic_source(n=64, n_classes=4, size=16)
    torch.manual_seed(0)
    teacher = train_teacher(src, tmp_path / "t", TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none",
                                                                freeze_backbone=True, cache_views=3,
                                                                fit=FitOptions(epochs=2, batch_size=16)), log=QUIET)
    teacher_record = json.loads((tmp_path / "t" / "run.json").read_text())
    teacher_cache = Path(teacher_record["feature_cache"])
    assert teacher_cache.parent == tmp_path / "t" / "feature-cache" and teacher.result.epochs == 2
    assert 0.0 <= teacher.result.best_score <= 1.0
    messages: list[str] = []
    distill(src, tmp_path / "t", tmp_path / "s", _opts(freeze_backbone=True), log=messages.append)
    record = json.loads((tmp_path / "s" / "run.json").read_text())
    assert Path(record["teacher_feature_cache"]) == teacher_cache  # the teacher side was not recomputed
    assert any("reusing" in m and str(teacher_cache) in m for m in messages)
    # a second student of the same backbone (here: trained alone) reuses the student side too
    messages.clear()
    distill(src, tmp_path / "t", tmp_path / "alone", _opts(freeze_backbone=True, method="none"), log=messages.append)
    assert not any("feature cache: built" in m for m in messages)
    assert json.loads((tmp_path / "alone" / "run.json").read_text())["feature_cache"] == record["feature_cache"]


def test_cached_training_resumes(setup, tmp_path: Path):
    src, teacher_dir, *_ = setup
    distill(src, teacher_dir, tmp_path / "s", _opts(freeze_backbone=True, epochs=1, cache_dir=tmp_path / "c"), log=QUIET)
    messages: list[str] = []
    result = distill(src, teacher_dir, tmp_path / "s", _opts(freeze_backbone=True, epochs=2, cache_dir=tmp_path / "c"),
                     resume=True, log=messages.append)
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

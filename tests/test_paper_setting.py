"""The paper's setting around the models: closed-form floors, offline default backbones, shared encodes, progress, the demo."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brcd_cli.data import make_split, preload, synthetic_source
from brcd_cli.encoding import packed_codes_of_images
from brcd_cli.errors import BrcdError
from brcd_cli.evaluation.protocol import encode_with
from brcd_cli.models import load_model
from brcd_cli.progress import Progress
from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
from brcd_cli.training.classic import CLASSIC_METHODS, hash_codes
from brcd_cli.training.common import resolve_arch
from brcd_cli.training.feature_cache import clean_features_of
from conftest import TINY_ARCH, run_cli

QUIET = lambda message: None  # noqa: E731


def _floor(tmp_path: Path, method: str, **kw):
    src = synthetic_source(n=64, n_classes=4, size=16)
    options = TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none", freeze_backbone=True, method=method,
                             fit=FitOptions(epochs=1, batch_size=16), **kw)
    return src, train_teacher(src, tmp_path / method, options, log=QUIET)


@pytest.mark.parametrize("method", ["lsh", "itq"])
def test_closed_form_teachers_store_their_hashing_layer_as_the_linear_head(tmp_path: Path, method: str):
    src, trained = _floor(tmp_path, method)
    model, _ = load_model(tmp_path / method)
    assert model.config.method == method and model.config.head == "linear"
    split = make_split(src, seed=0)
    images = preload(src, split.train, 16)
    features = clean_features_of(model, images).numpy()
    weight, bias = CLASSIC_METHODS[method](features.astype(np.float64), 16, 0)  # the same fit, from the same features
    np.testing.assert_allclose(model.head.weight.detach().numpy(), weight, rtol=1e-5, atol=1e-6)
    # the checkpoint's codes are the fitter's codes (sign of W x + b), through the ordinary encode path
    expected = hash_codes(features, weight, bias)
    got = model.codes(images.float().div(255.0)).numpy()
    assert (got == expected).mean() > 0.999
    record = json.loads((tmp_path / method / "run.json").read_text())
    assert record["result"]["stopped"] == "closed-form" and record["result"]["epochs"] == 0
    assert 0.0 <= trained.result.best_score <= 1.0


def test_floors_take_the_training_features_from_a_teachers_cache_and_fit_the_same_head(tmp_path: Path):
    """A floor beside a frozen teacher on the same backbone reads the teacher's cached features instead of a second
    pass of the backbone, and the head it fits is the one it fits without the cache, to the bit."""
    src = synthetic_source(n=64, n_classes=4, size=16)
    common = dict(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none", freeze_backbone=True,
                  fit=FitOptions(epochs=1, batch_size=16))
    cache = tmp_path / "teacher" / "feature-cache"
    train_teacher(src, tmp_path / "teacher", TeacherOptions(cache_views=2, **common), log=QUIET)
    assert len(list(cache.glob("*/meta.json"))) == 1
    for method in ("lsh", "itq"):
        said: list[str] = []
        train_teacher(src, tmp_path / f"{method}-cached", TeacherOptions(method=method, cache_dir=cache, **common),
                      log=said.append)
        assert any("features from the feature cache" in line for line in said), said
        train_teacher(src, tmp_path / f"{method}-alone", TeacherOptions(method=method, cache_dir=tmp_path / "none", **common),
                      log=said.append)
        cached, _ = load_model(tmp_path / f"{method}-cached")
        alone, _ = load_model(tmp_path / f"{method}-alone")
        assert torch.equal(cached.head.weight, alone.head.weight) and torch.equal(cached.head.bias, alone.head.bias)
    # another backbone (another seed's random weights) finds nothing to reuse
    said = []
    train_teacher(src, tmp_path / "other", TeacherOptions(method="lsh", cache_dir=cache, **{**common, "bits": 16}, seed=1),
                  log=said.append)
    assert not any("feature cache" in line for line in said)


def test_closed_form_teachers_refuse_an_mlp_head_and_the_cli_lists_the_methods(tmp_path: Path, capsys):
    with pytest.raises(BrcdError, match="--head linear"):
        _floor(tmp_path, "itq", head="mlp")
    code, _, err = run_cli(["train-teacher", "synthetic:32", "--method", "pca", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "lsh" in err and "itq" in err


def test_default_backbones_fall_back_to_the_offline_pretrained_ones(monkeypatch):
    from brcd_cli.models import offline_weights, pretrained

    monkeypatch.setattr(pretrained, "cached_weights", lambda arch: None)
    rows = [{"arch": a, "installed": True, "source": "package x", "default_size": 224, "params": p}
            for a, p in (("tf_efficientnet_lite0", 3), ("tf_efficientnet_lite1", 4), ("tf_efficientnet_lite2", 5))]
    monkeypatch.setattr(offline_weights, "available_offline_backbones", lambda: rows)
    said: list[str] = []
    assert resolve_arch(None, "vit_base_patch16_224", "auto", "teacher", said.append) == "tf_efficientnet_lite2"
    assert resolve_arch(None, "efficientnet_b0", "auto", "student", said.append) == "tf_efficientnet_lite0"
    assert len(said) == 2 and "no vit_base_patch16_224 weights offline" in said[0] and "--arch" in said[0]
    # a named backbone, or an explicit --pretrained, is never second-guessed
    assert resolve_arch("resnet18", "vit_base_patch16_224", "auto", "teacher", said.append) == "resnet18"
    assert resolve_arch(None, "vit_base_patch16_224", "none", "teacher", said.append) == "vit_base_patch16_224"
    assert len(said) == 2
    monkeypatch.setattr(offline_weights, "available_offline_backbones",
                        lambda: [dict(r, installed=False, source="missing: pip install x") for r in rows])
    with pytest.raises(BrcdError, match=r"brcd\[pretrained\].*--pretrained none"):
        resolve_arch(None, "vit_base_patch16_224", "auto", "teacher", QUIET)


def test_models_sharing_a_backbone_encode_it_once_and_get_their_own_codes(tmp_path: Path):
    src, _ = _floor(tmp_path, "lsh")
    _floor(tmp_path, "itq")
    lsh, _ = load_model(tmp_path / "lsh")
    itq, _ = load_model(tmp_path / "itq")
    calls = {"n": 0}
    forward = lsh.backbone.forward

    def counted(x):
        calls["n"] += 1
        return forward(x)

    lsh.backbone.forward = counted
    indices = np.arange(20)
    codes = encode_with({"lsh": lsh, "itq": itq}, src, indices, batch_size=8)
    assert calls["n"] == 3  # one backbone pass per batch of 8, not one per model
    images = preload(src, indices, 16)
    assert np.array_equal(codes["lsh"], packed_codes_of_images(lsh, images))
    assert np.array_equal(codes["itq"], packed_codes_of_images(itq, images))
    assert not np.array_equal(codes["lsh"], codes["itq"])


def test_progress_says_rate_and_time_left_and_stays_quiet_for_short_work(monkeypatch):
    lines: list[str] = []
    quiet = Progress("short", total=10, log=lines.append, every=3600)
    quiet.advance(10)
    quiet.close()
    assert lines == []
    clock = iter([0.0, 0.5, 5.0, 10.0])  # start; first advance (too soon to speak); second advance; its rate
    monkeypatch.setattr("brcd_cli.progress.time.monotonic", lambda: next(clock))
    slow = Progress("cache", total=100, log=lines.append, every=1.0)
    slow.advance(25)
    slow.advance(25)
    assert lines == ["cache: 50/100 images, 5 images/s, 10s left"]


def test_demo_refuses_unknown_data_and_missing_weights(tmp_path: Path, monkeypatch, capsys):
    code, _, err = run_cli(["demo", "--data", "cifar", "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "photos" in err
    from brcd_cli import demo
    from brcd_cli.models import offline_weights

    monkeypatch.setattr(offline_weights, "available_offline_backbones", lambda: [])
    with pytest.raises(BrcdError, match=r"pip install 'brcd\[pretrained\]'.*--data digits"):
        demo.run_demo(tmp_path / "d", data="photos", log=QUIET)
    assert not (tmp_path / "d").exists()  # refused before anything was written


def test_a_live_progress_bar_stops_when_its_loop_fails(monkeypatch):
    """On a terminal the CLI's log draws a rich bar; an error or Ctrl-C inside the loop must not leave it running."""
    def log(message: str) -> None:
        pass

    log.live_progress = True  # type: ignore[attr-defined]
    monkeypatch.setattr("brcd_cli.progress.sys.stderr.isatty", lambda: True)
    progress = Progress("epoch 1", total=4, log=log)
    assert progress._bar is not None
    with pytest.raises(KeyboardInterrupt):
        with progress:
            progress.advance(1)
            raise KeyboardInterrupt
    assert progress._bar is None

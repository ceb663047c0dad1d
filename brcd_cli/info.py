"""What ``brcd info`` reports: versions, kernel backends and the one that runs, offline pretrained backbones.

A forced backend that is unknown or missing, or a bad BRCD_SIMD, shows up as
the reason in the report instead of failing it: `brcd info` is where a user
looks when a backend variable is wrong.
"""
from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .kernels._registry import BackendRegistry


def collect_info() -> dict[str, Any]:
    import numpy
    import timm
    import torch

    from . import __version__, kernels
    from .kernels import dispatch

    return {
        "brcd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "cpu": platform.machine(),
        "cores": os.cpu_count(),
        "cuda_available": bool(torch.cuda.is_available()),
        "kernel_backends": kernels.available_backends(),
        "kernel_backend_in_use": _active(dispatch.REGISTRY),
        **_simd_info(),
        "jpeg_draft_decoder": _jpeg_info(),
        **_gpu_info(),
        **_registry_info(),
        "pretrained_offline": _offline_info(),
    }


def _jpeg_info() -> str:
    """Which decoder turns a JPEG into its 1/8-scale draft (BRCD_JPEG_DECODER chooses it): it sets encode's speed."""
    from .data import jpeg_eighth

    return jpeg_eighth.status()


def _offline_info() -> list[dict[str, Any]]:
    """Backbones whose ImageNet weights can come from an installed package, so a user sees what ``auto`` will find."""
    from .models.offline_weights import available_offline_backbones

    return available_offline_backbones()


def _simd_info() -> dict[str, Any]:
    """The instruction set the native scan and the hash-table lookup run with (BRCD_SIMD chooses it), and the
    AVX2 scan's step shape where that path runs (BRCD_AVX2_STEP chooses it), since both change its speed."""
    from . import kernels
    from .kernels import mih

    scan = kernels.native_features() or {}
    lookup = mih.native_features() or {}
    out = {
        "cpu_simd_scan": scan.get("simd_path", "none (native kernels not built)"),
        "cpu_simd_lookup": lookup.get("path", "none (native lookup not built)"),
    }
    if out["cpu_simd_scan"] == "avx2" and "avx2_step" in scan:
        out["cpu_avx2_step"] = scan["avx2_step"]
    return out


def _gpu_info() -> dict[str, Any]:
    """GPU backends for CUDA tensors (extension > CuPy > torch), the one that would run, and the loss op's kernels."""
    from .kernels import cuda

    blocked = cuda.REGISTRY.blocked()
    return {
        "gpu_backends": cuda.available_gpu_backends(),
        "gpu_backend_in_use": _active(cuda.REGISTRY),
        "gpu_masked_similarity": cuda.register_cuda_kernels() if blocked is None else f"not registered ({blocked})",
    }


def _registry_info() -> dict[str, dict[str, str]]:
    """Each backend registry as it stands: preference order, the variable that forces one, every backend, the active one."""
    from .data import jpeg_eighth
    from .kernels import cuda, dispatch, mih

    registries = {"cpu_dispatch": dispatch.REGISTRY, "gpu_dispatch": cuda.REGISTRY, "lookup_dispatch": mih.REGISTRY,
                  "jpeg_dispatch": jpeg_eighth.REGISTRY}
    return {key: _describe(registry) for key, registry in registries.items()}


def _active(registry: BackendRegistry) -> str:
    """The backend that would run now, or "none (<why>)"."""
    try:
        active = registry.active()
    except (ValueError, RuntimeError) as exc:  # a forced backend that is unknown or cannot load
        return f"none ({exc})"
    return active if active is not None else f"none ({registry.blocked()})"


def _describe(registry: BackendRegistry) -> dict[str, str]:
    """One flat mapping (order, env_var, one entry per backend, active), so the text output stays one level deep."""
    return {
        "order": " > ".join(registry.names),
        "env_var": f"{registry.env_var}={os.environ.get(registry.env_var, '') or 'auto'}",
        **registry.available(),
        "active": _active(registry),
    }

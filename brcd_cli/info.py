"""What ``brcd info`` reports: versions, kernel backends and the one that runs."""
from __future__ import annotations

import os
import platform
from typing import Any


def collect_info() -> dict[str, Any]:
    import numpy
    import timm
    import torch

    from . import __version__, kernels

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
        "kernel_backend_in_use": kernels.active_backend(),
        **_simd_info(),
        **_gpu_info(),
    }


def _simd_info() -> dict[str, Any]:
    """The instruction set the native scan and the hash-table lookup run with (BRCD_SIMD caps it)."""
    from . import kernels
    from .kernels import mih

    scan = kernels.native_features() or {}
    lookup = mih.native_features() or {}
    return {
        "cpu_simd_scan": scan.get("simd_path", "none (native kernels not built)"),
        "cpu_simd_lookup": lookup.get("path", "none (native lookup not built)"),
    }


def _gpu_info() -> dict[str, Any]:
    """GPU backends for CUDA tensors (extension > CuPy > torch), the one that would run, and the loss op's kernels."""
    from .kernels import cuda

    backends = cuda.available_gpu_backends()
    in_use = cuda.active_gpu_backend()
    return {
        "gpu_backends": backends,
        "gpu_backend_in_use": in_use if in_use is not None else "none (no CUDA device visible)",
        "gpu_masked_similarity": cuda.register_cuda_kernels() if in_use is not None else "not registered (no CUDA device visible)",
    }

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
    }

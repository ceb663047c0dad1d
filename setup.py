"""Build script: packages plus the native CPU kernels.

The kernels/ folder is installed as ``brcd_cli.kernels`` so that no top-level
package named ``kernels`` is ever installed. The C++ extension needs only
pybind11; if it cannot be compiled the package still installs and the numba
and reference backends take over (``brcd info`` says which one runs).
"""
from __future__ import annotations

import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

try:
    from pybind11.setup_helpers import Pybind11Extension
except ImportError:  # pragma: no cover - pybind11 is a build requirement
    Pybind11Extension = None


class OptionalBuildExt(build_ext):
    """Build native extensions, but never fail the install because of them."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            print(f"brcd: native CPU kernels not built ({exc}); numba/reference backends will be used", file=sys.stderr)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"brcd: native extension {ext.name} not built ({exc})", file=sys.stderr)


ext_modules = []
# (module, source, headers it includes). Every one is C++17 at -O3 with no -march: the x86 SIMD
# variants carry their own target attributes and are chosen at run time, so one build runs on any
# x86-64 CPU; on AArch64 NEON is part of the base architecture and the SVE kernels have their own
# target pragma (docs/kernels.md). Elsewhere only the portable code is built.
NATIVE = (
    # the scan kernels
    ("brcd_cli._hamming_cpu", "csrc/hamming_cpu.cpp",
     ["csrc/cpu_features.h", "csrc/choice_error_py.h", "csrc/hamming_scan.h", "csrc/hamming_select.h"]),
    # multi-index hashing (hash-table lookup); its SIMD build is chosen by the same header (CPU
    # features and BRCD_SIMD) as the scan's
    ("brcd_cli._mih_cpu", "csrc/mih.cpp", ["csrc/cpu_features.h", "csrc/choice_error_py.h"]),
    # JPEG straight to 1/8 scale (the draft decode of encode, search and serve); Pillow decodes
    # whatever it declines, and everything when it is not built
    ("brcd_cli._jpeg_cpu", "csrc/jpeg_cpu.cpp", ["csrc/jpeg_eighth.h"]),
)
if Pybind11Extension is not None:
    for name, source, headers in NATIVE:
        ext_modules.append(Pybind11Extension(name, [source], depends=headers, cxx_std=17, extra_compile_args=["-O3"]))
else:
    print("brcd: pybind11 missing at build time; native CPU kernels skipped", file=sys.stderr)

# CUDA kernels (brcd_cli._hamming_cuda): csrc/cuda_build.py decides whether they
# can be built here (CUDA torch importable, matching nvcc; BRCD_BUILD_CUDA=0|1|auto)
# and says in one line why not; without them GPU tensors use CuPy or torch.
build_ext_cmd = OptionalBuildExt
sys.path.insert(0, str(Path(__file__).resolve().parent / "csrc"))
try:
    import cuda_build
except ImportError:  # pragma: no cover - a source tree without csrc/cuda_build.py
    cuda_build = None
    print("brcd: CUDA kernels skipped: csrc/cuda_build.py is missing", file=sys.stderr)
if cuda_build is not None:
    cuda_ext = cuda_build.cuda_extension(Path(__file__).resolve().parent)
    if cuda_ext is not None:
        ext_modules.append(cuda_ext)
        build_ext_cmd = cuda_build.build_ext_class(OptionalBuildExt)

packages = [p for p in find_packages(include=["brcd_cli", "brcd_cli.*"])] + ["brcd_cli.kernels"]

setup(
    packages=packages,
    package_dir={"brcd_cli.kernels": "kernels"},
    package_data={"brcd_cli.serve": ["static/*.html"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext_cmd},
    # The CuPy backend compiles this source at run time where the extension was not built.
    data_files=[("share/brcd", ["csrc/hamming_kernels.cu"])],
)

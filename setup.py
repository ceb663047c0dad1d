"""Build script: packages plus the native CPU kernels.

The kernels/ folder is installed as ``brcd_cli.kernels`` so that no top-level
package named ``kernels`` is ever installed. The C++ extension needs only
pybind11; if it cannot be compiled the package still installs and the numba
and reference backends take over (``brcd info`` says which one runs).
"""
from __future__ import annotations

import sys

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
if Pybind11Extension is not None:
    ext_modules.append(
        Pybind11Extension(
            "brcd_cli._hamming_cpu",
            ["csrc/hamming_cpu.cpp"],
            cxx_std=17,
            extra_compile_args=["-O3"],
        )
    )
else:
    print("brcd: pybind11 missing at build time; native CPU kernels skipped", file=sys.stderr)

packages = [p for p in find_packages(include=["brcd_cli", "brcd_cli.*"])] + ["brcd_cli.kernels"]

setup(
    packages=packages,
    package_dir={"brcd_cli.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": OptionalBuildExt},
)

"""How the CUDA extension ``brcd_cli._hamming_cuda`` is built: once, for setup.py and the JIT path.

setup.py asks :func:`cuda_extension` for the extension; it gets one only when a
CUDA build of torch is importable at build time and an nvcc of the same major
CUDA version is found. Otherwise the install goes on without it and one line
says why (the CuPy and torch backends then serve GPU tensors). pyproject's
build-system deliberately does not list torch, so under pip's default build
isolation torch is absent and the CUDA part is skipped; ``pip install -e .
--no-build-isolation`` builds it. BRCD_BUILD_CUDA=0 never builds it,
BRCD_BUILD_CUDA=1 insists (a missing prerequisite or a compile error then fails
the install), and auto (the default) builds when it can.

No GPU needs to be visible: the architectures come from TORCH_CUDA_ARCH_LIST,
which this module sets to :data:`DEFAULT_ARCH_LIST` unless the user set it. The
extension links the CUDA runtime that torch's nvidia wheels carry when they are
there, so it loads the same libcudart as torch.

:func:`jit_build` compiles the same sources with torch.utils.cpp_extension.load
into a build folder (scripts/gpu_check.sh uses it on a machine where the package
is not installed).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

EXTENSION_NAME = "brcd_cli._hamming_cuda"
ENV_VAR = "BRCD_BUILD_CUDA"
# Ampere, Hopper, Blackwell (datacentre and consumer) machine code, plus PTX of
# the newest for anything later. The kernels need sm_70+ (__match_any_sync).
DEFAULT_ARCH_LIST = "8.0;9.0;10.0;12.0+PTX"

CSRC = Path(__file__).resolve().parent
SOURCES = ("hamming_cuda_bindings.cpp", "hamming_cuda.cu")
DEPENDS = ("hamming_kernels.cu", "hamming_cuda.h")
CXX_FLAGS = ["-O3"]
# No --use_fast_math: the masked similarity divides and must round like the reference.
NVCC_FLAGS = ["-O3", "-lineinfo"]


class CudaUnavailable(Exception):
    """A prerequisite of the CUDA build is missing; the message says which."""


def _say(message: str) -> None:
    print(f"brcd: {message}", file=sys.stderr)


def build_mode() -> str:
    """'0', '1' or 'auto' from BRCD_BUILD_CUDA; anything else is a user error."""
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in ("0", "1", "auto"):
        raise SystemExit(f"brcd: {ENV_VAR} must be 0, 1 or auto, got {os.environ[ENV_VAR]!r}")
    return mode


def _nvcc_major(nvcc: str) -> int:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    found = re.search(r"release (\d+)\.(\d+)", out)
    if found is None:
        raise CudaUnavailable(f"could not read the CUDA version of {nvcc}")
    return int(found.group(1))


def find_cuda_home(torch_guess: Optional[str] = None) -> Optional[str]:
    """The CUDA toolkit root: a folder with bin/nvcc and include/cuda_runtime_api.h.

    Tried in order: $CUDA_HOME, $CUDA_PATH, torch's guess, the folder of the real
    nvcc on PATH (following links), /usr/local/cuda.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), torch_guess]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
            os.path.join(root, "include", "cuda_runtime_api.h")
        ):
            return root
    return None


def check_prerequisites() -> Any:
    """Return torch.utils.cpp_extension when a CUDA build can run, else raise CudaUnavailable."""
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken torch install alike
        raise CudaUnavailable(
            f"torch is not importable at build time ({type(exc).__name__}); under pip's build isolation it never is: "
            "reinstall with --no-build-isolation to build them"
        ) from None
    if torch.version.cuda is None:
        raise CudaUnavailable(f"torch {torch.__version__} is a CPU-only build")
    cuda_home = find_cuda_home(cpp_extension.CUDA_HOME)
    if cuda_home is None:
        raise CudaUnavailable("no CUDA toolkit (nvcc with cuda_runtime_api.h) was found; set CUDA_HOME")
    if cpp_extension.CUDA_HOME != cuda_home:
        # torch guessed the toolkit from an nvcc wrapper outside it (e.g. /usr/local/bin/nvcc); its
        # build helpers read this module global, so point them at the real one.
        cpp_extension.CUDA_HOME = cuda_home
        os.environ["CUDA_HOME"] = cuda_home
    major = _nvcc_major(os.path.join(cuda_home, "bin", "nvcc"))
    torch_major = int(torch.version.cuda.split(".")[0])
    if major != torch_major:
        raise CudaUnavailable(f"nvcc is CUDA {major} but torch was built for CUDA {torch.version.cuda}")
    missing = [name for name in SOURCES + DEPENDS if not (CSRC / name).is_file()]
    if missing:
        raise CudaUnavailable(f"sources missing: {', '.join(missing)}")
    return cpp_extension


def wheel_cudart_dir() -> Optional[str]:
    """The lib folder of the CUDA runtime wheel torch depends on (nvidia-cuda-runtime), if installed."""
    try:
        import nvidia  # namespace package of NVIDIA's wheels
    except ImportError:
        return None
    for base in getattr(nvidia, "__path__", []):
        for sub in ("cu13/lib", "cuda_runtime/lib"):
            if glob.glob(os.path.join(base, sub, "libcudart.so.*")):
                return os.path.join(base, sub)
    return None


def _link_wheel_cudart(ext: Any) -> None:
    """Link against torch's wheel libcudart (by file name: the wheel has no unversioned .so) and find it at run time."""
    lib_dir = wheel_cudart_dir()
    if lib_dir is None:
        return
    sonames = sorted(os.path.basename(p) for p in glob.glob(os.path.join(lib_dir, "libcudart.so.*")))
    ext.libraries = [f":{sonames[0]}" if lib == "cudart" else lib for lib in ext.libraries]
    ext.library_dirs.insert(0, lib_dir)
    ext.runtime_library_dirs = list(ext.runtime_library_dirs or []) + [lib_dir]


def _relative_sources(root: Path) -> list[str]:
    return [os.path.relpath(CSRC / name, root) for name in SOURCES]


def cuda_extension(project_root: Path) -> Optional[Any]:
    """The CUDAExtension to build, or None after one line that says why it is skipped."""
    mode = build_mode()
    if mode == "0":
        _say(f"CUDA kernels skipped ({ENV_VAR}=0)")
        return None
    try:
        cpp_extension = check_prerequisites()
    except CudaUnavailable as exc:
        if mode == "1":
            raise SystemExit(f"brcd: {ENV_VAR}=1 but the CUDA kernels cannot be built: {exc}") from None
        _say(f"CUDA kernels skipped: {exc}; GPU tensors will use CuPy or torch")
        return None
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    ext = cpp_extension.CUDAExtension(
        EXTENSION_NAME,
        _relative_sources(project_root),
        depends=[os.path.relpath(CSRC / name, project_root) for name in DEPENDS],
        extra_compile_args={"cxx": list(CXX_FLAGS), "nvcc": list(NVCC_FLAGS)},
    )
    _link_wheel_cudart(ext)
    _say(f"building CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} ({ENV_VAR}={mode})")
    return ext


def build_ext_class(base: type) -> type:
    """A build_ext that builds ``base``'s way and the CUDA extension through torch's BuildExtension.

    ``base`` is setup.py's tolerant build_ext. A failed CUDA compile is reported
    in one line and the install goes on, unless BRCD_BUILD_CUDA=1, where it
    fails the install after the other extensions are built.
    """
    from torch.utils.cpp_extension import BuildExtension

    class CudaBuildExt(base, BuildExtension):  # type: ignore[misc, valid-type]
        cuda_error: Optional[BaseException] = None

        def run(self) -> None:
            super().run()
            if self.cuda_error is not None:
                raise SystemExit(f"brcd: {ENV_VAR}=1 but the CUDA kernels failed to build: {self.cuda_error}")

        def build_extension(self, ext: Any) -> None:
            if ext.name != EXTENSION_NAME:
                super().build_extension(ext)
                return
            try:
                BuildExtension.build_extension(self, ext)
            except Exception as exc:  # noqa: BLE001 - any compiler or linker failure
                if build_mode() == "1":
                    self.cuda_error = exc
                else:
                    _say(f"CUDA kernels not built ({' '.join(str(exc).split())[:300]}); GPU tensors will use CuPy or torch")

    return CudaBuildExt


def jit_build(build_dir: Path, verbose: bool = False) -> Path:
    """Compile the extension with torch.utils.cpp_extension.load; return the path of the built module."""
    cpp_extension = check_prerequisites()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    build_dir.mkdir(parents=True, exist_ok=True)
    ldflags = []
    lib_dir = wheel_cudart_dir()
    if lib_dir is not None:
        ldflags = [f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}"]
    module = cpp_extension.load(
        name=EXTENSION_NAME.rsplit(".", 1)[1],
        sources=[str(CSRC / name) for name in SOURCES],
        extra_cflags=list(CXX_FLAGS),
        extra_cuda_cflags=list(NVCC_FLAGS),
        extra_ldflags=ldflags,
        build_directory=str(build_dir),
        verbose=verbose,
    )
    return Path(module.__file__)

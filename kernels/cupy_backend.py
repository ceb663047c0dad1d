"""The GPU kernels through CuPy, for machines where the torch extension was not built.

cupy.RawModule compiles csrc/hamming_kernels.cu, the very source the extension
is built from, with NVRTC at first use. :class:`CupyLauncher` offers the same
launch functions, with the same arguments, as the extension module
brcd_cli._hamming_cuda, so kernels/cuda.py plans every launch once and hands it
to either. Tensors cross to CuPy through DLPack without a copy, and kernels run
on torch's current stream (wrapped as a CuPy ExternalStream), so they are
ordered with the torch work around them as if torch had launched them.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

KERNEL_FILE = "hamming_kernels.cu"
NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++17",)

# Parameter kinds of every kernel, in order: "p" a pointer, "i32" an int, "i64" a long long.
# tests/test_cuda.py checks this table against the kernel source.
SIGNATURES: dict[str, tuple[str, ...]] = {
    **{
        f"brcd_knn_chunk_w{w}": ("p", "p", "i32", "i64", "i64", "i32", "i32", "i32", "p", "p", "i64", "i64")
        for w in (1, 2, 4, 8, 16)
    },
    "brcd_knn_merge": ("p", "p", "i64", "i64", "i64", "i64", "i32", "i32", "p", "p"),
    "brcd_radius_count": ("p", "p", "i32", "i64", "i32", "i64", "i32", "i32", "p"),
    "brcd_radius_emit": ("p", "p", "i32", "i64", "i32", "i64", "i32", "i32", "p", "p", "p", "p"),
    "brcd_pairwise": ("p", "p", "p", "i32", "i32", "i64", "i32", "i32", "p", "p"),
    **{
        f"brcd_msim_forward_{s}": ("p", "p", "p", "i32", "i64", "i32", "i32", "i32", "p")
        for s in ("f32", "f64")
    },
    **{
        f"brcd_msim_backward_rows_{s}": ("p", "p", "p", "p", "i32", "i64", "i32", "i32", "i32", "p", "p", "p")
        for s in ("f32", "f64")
    },
    **{
        f"brcd_msim_backward_cols_{s}": ("p", "p", "p", "i32", "i64", "p", "i32", "i32", "i32", "p")
        for s in ("f32", "f64")
    },
}

THREADS = 256  # BRCD_THREADS in the kernel source
TILE = 16  # BRCD_TILE


def kernel_source() -> str:
    """The text of hamming_kernels.cu: from the source tree (csrc/), else where setup.py installs it (share/brcd)."""
    here = Path(__file__).resolve().parent
    candidates = (here.parent / "csrc" / KERNEL_FILE, Path(sys.prefix) / "share" / "brcd" / KERNEL_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_text()
    raise FileNotFoundError(f"{KERNEL_FILE} is in none of: {', '.join(map(str, candidates))}")


def kernel_parameters(source: str) -> dict[str, tuple[str, ...]]:
    """Parameter kinds of every extern "C" kernel in ``source``, read from its text.

    Kernels declared through a macro are expanded for the suffixes it is
    invoked with, so the table covers every name the module exports.
    """

    def kinds(params: str) -> tuple[str, ...]:
        out = []
        for p in params.split(","):
            p = " ".join(p.split())
            if not p:
                continue
            if "*" in p:
                out.append("p")
            elif p.startswith(("brcd_i64", "long long")):
                out.append("i64")
            elif p.startswith(("int ", "unsigned ")):
                out.append("i32")
            else:
                raise ValueError(f"unrecognised kernel parameter {p!r}")
        return tuple(out)

    flat = source.replace("\\\n", "\n")
    found: dict[str, tuple[str, ...]] = {}
    pattern = re.compile(r'extern "C" __global__ void\s+(?:__launch_bounds__\([^)]*\)\s*)?([\w#]+)\s*\(([^)]*)\)')
    macro_suffixes = re.findall(r"^BRCD_MSIM_KERNELS\((\w+), (\w+)\)", source, flags=re.M)
    for name, params in pattern.findall(flat):
        if name.endswith("##SUFFIX"):
            for _, suffix in macro_suffixes:
                found[name[: -len("##SUFFIX")] + suffix] = kinds(params)
        else:
            found[name] = kinds(params)
    return found


def _arg(kind: str, value: Any) -> Any:
    """One kernel argument as CuPy must pass it: a device array, a null pointer or a sized scalar."""
    if kind == "p":
        return np.uint64(0) if value is None else value
    return np.int32(value) if kind == "i32" else np.int64(value)


class CupyLauncher:
    """Launch functions with the extension module's signatures, running the kernels through CuPy."""

    def __init__(self) -> None:
        import cupy

        self._cp = cupy
        self._module = cupy.RawModule(code=kernel_source(), options=NVRTC_OPTIONS)
        self._functions: dict[str, Any] = {}

    def compile(self) -> None:
        """Compile the module now (NVRTC), instead of at the first launch: looking up a kernel compiles it."""
        self._functions["brcd_knn_merge"] = self._module.get_function("brcd_knn_merge")

    def _launch(
        self, name: str, grid: tuple[int, int], block: tuple[int, int], smem: int, args: Sequence[Any]
    ) -> None:
        import torch

        kinds = SIGNATURES[name]
        if len(kinds) != len(args):
            raise TypeError(f"{name} takes {len(kinds)} arguments, got {len(args)}")
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        fn = self._functions.get(name)
        if fn is None:
            fn = self._functions[name] = self._module.get_function(name)
        stream = torch.cuda.current_stream(device)
        with self._cp.cuda.Device(device.index), self._cp.cuda.ExternalStream(stream.cuda_stream, device.index):
            # detach(): DLPack refuses tensors that require grad; the kernels never need the graph.
            packed = tuple(
                _arg(kind, self._cp.from_dlpack(a.detach()) if isinstance(a, torch.Tensor) else a)
                for kind, a in zip(kinds, args)
            )
            fn((grid[0], grid[1], 1), (block[0], block[1], 1), packed, shared_mem=smem)

    # The functions below mirror csrc/hamming_cuda_bindings.cpp argument for argument.

    def knn_chunk(self, gx: int, gy: int, smem: int, words: int, *args: Any) -> None:
        self._launch(f"brcd_knn_chunk_w{words}", (gx, gy), (THREADS, 1), smem, args)

    def knn_merge(self, gx: int, smem: int, *args: Any) -> None:
        self._launch("brcd_knn_merge", (gx, 1), (THREADS, 1), smem, args)

    def radius_count(self, gx: int, gy: int, smem: int, *args: Any) -> None:
        self._launch("brcd_radius_count", (gx, gy), (THREADS, 1), smem, args)

    def radius_emit(self, gx: int, gy: int, smem: int, *args: Any) -> None:
        self._launch("brcd_radius_emit", (gx, gy), (THREADS, 1), smem, args)

    def pairwise(self, gx: int, gy: int, smem: int, *args: Any) -> None:
        self._launch("brcd_pairwise", (gx, gy), (THREADS, 1), smem, args)

    @staticmethod
    def _suffix(t: "torch.Tensor") -> str:
        import torch

        return "f64" if t.dtype == torch.float64 else "f32"

    def msim_forward(
        self, gx: int, gy: int, a: "torch.Tensor", b: "torch.Tensor", mask: "Optional[torch.Tensor]",
        mask_stride: int, n: int, m: int, length: int, out: "torch.Tensor",
    ) -> None:
        args = (a, b, mask, int(mask is not None), mask_stride, n, m, length, out)
        self._launch(f"brcd_msim_forward_{self._suffix(a)}", (gx, gy), (TILE, TILE), 0, args)

    def msim_backward_rows(
        self, gx: int, gy: int, g: "torch.Tensor", a: "torch.Tensor", b: "torch.Tensor", mask: "Optional[torch.Tensor]",
        mask_stride: int, n: int, m: int, length: int, grad_a: "torch.Tensor",
        grad_mask: "Optional[torch.Tensor]", inv_w: "torch.Tensor",
    ) -> None:
        args = (g, a, b, mask, int(mask is not None), mask_stride, n, m, length, grad_a, grad_mask, inv_w)
        self._launch(f"brcd_msim_backward_rows_{self._suffix(a)}", (gx, gy), (TILE, TILE), 0, args)

    def msim_backward_cols(
        self, gx: int, gy: int, g: "torch.Tensor", a: "torch.Tensor", mask: "Optional[torch.Tensor]",
        mask_stride: int, inv_w: "torch.Tensor", n: int, m: int, length: int, grad_b: "torch.Tensor",
    ) -> None:
        args = (g, a, mask, int(mask is not None), mask_stride, inv_w, n, m, length, grad_b)
        self._launch(f"brcd_msim_backward_cols_{self._suffix(a)}", (gx, gy), (TILE, TILE), 0, args)

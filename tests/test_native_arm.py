"""The scan kernels outside Python: the C++ driver on this machine, and the AArch64 build under qemu-user.

csrc/tests/scan_test.cpp includes the same hamming_scan.h as the extension and
checks every SIMD variant the CPU runs against the scalar one (and that against
brute force). Here it is built natively, and cross-compiled with Debian's
aarch64 g++ and run under qemu-aarch64, so the AArch64 kernels are checked on
an x86 machine: on an emulated CPU without SVE (only neon is chosen) and on
ones with SVE at several vector lengths (sve and neon); a build without
Advanced SIMD shows the scalar-only fallback, and the extension's own sources
are compiled for aarch64. The cross tests skip,
saying why, where g++-aarch64-linux-gnu or qemu-user is missing (.ci/run
installs them).
"""
from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
DRIVER = CSRC / "tests" / "scan_test.cpp"
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")  # the libraries qemu-user loads for the driver


def _missing_cross_tools() -> Optional[str]:
    missing = [tool for tool in (CROSS_CXX, QEMU) if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install g++-aarch64-linux-gnu qemu-user)"
    if not (AARCH64_SYSROOT / "lib").is_dir():
        return f"{AARCH64_SYSROOT}/lib missing: the aarch64 C++ runtime comes with g++-aarch64-linux-gnu"
    return None


needs_cross = pytest.mark.skipif(_missing_cross_tools() is not None, reason=str(_missing_cross_tools()))


def _build(compiler: str, out: Path, *flags: str) -> None:
    cmd = [compiler, "-O2", "-std=c++17", "-Wall", "-Wextra", f"-I{CSRC}", *flags, str(DRIVER), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}"


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def _variants(report: str) -> list[str]:
    line = next(x for x in report.splitlines() if x.startswith("variants checked against scalar:"))
    return line.split(":", 1)[1].split()


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_driver_on_this_machine(tmp_path: Path) -> None:
    exe = tmp_path / "scan_test"
    _build("g++", exe)
    report = _run([str(exe)])
    assert " 0 mismatches" in report, report
    import platform

    if platform.machine() in ("x86_64", "AMD64"):
        assert "popcnt" in _variants(report)  # every x86-64 CPU brcd runs on has POPCNT


@pytest.fixture(scope="module")
def arm64_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("arm64") / "scan_test_arm64"
    _build(CROSS_CXX, exe)
    return exe


def _sve_compiled(exe: Path) -> bool:
    """Whether this cross-compiler built the SVE kernels (GCC 12 and later do)."""
    done = subprocess.run([f"{CROSS_CXX.rsplit('-', 1)[0]}-objdump", "-d", str(exe)], capture_output=True, text=True)
    return done.returncode == 0 and "scan_select_sve" in done.stdout


@needs_cross
def test_neon_kernels_equal_scalar_under_qemu(arm64_driver: Path) -> None:
    """A Cortex-A72 has Advanced SIMD and no SVE: neon is the path chosen, and it equals scalar."""
    report = _run([QEMU, "-L", str(AARCH64_SYSROOT), "-cpu", "cortex-a72", str(arm64_driver)])
    assert _variants(report) == ["neon"], report
    assert " 0 mismatches" in report, report


@needs_cross
@pytest.mark.parametrize("vector_bits", [128, 512, 2048])
def test_sve_kernels_equal_scalar_at_any_vector_length(arm64_driver: Path, vector_bits: int) -> None:
    if not _sve_compiled(arm64_driver):
        pytest.skip(f"{CROSS_CXX} did not build the SVE kernels (they need GCC 12 or later)")
    cpu = f"max,sve{vector_bits}=on"
    report = _run([QEMU, "-L", str(AARCH64_SYSROOT), "-cpu", cpu, str(arm64_driver)])
    assert _variants(report) == ["sve", "neon"], report
    assert " 0 mismatches" in report, report


@needs_cross
def test_build_without_advanced_simd_runs_scalar_only(tmp_path: Path) -> None:
    """Where no SIMD path applies the kernels still build, and the scalar one is checked against brute force."""
    exe = tmp_path / "scan_test_nosimd"
    _build(CROSS_CXX, exe, "-march=armv8-a+nosimd")
    report = _run([QEMU, "-L", str(AARCH64_SYSROOT), "-cpu", "max", str(exe)])
    assert _variants(report) == ["none"], report
    assert " 0 mismatches" in report, report


@needs_cross
def test_extension_sources_compile_for_aarch64(tmp_path: Path) -> None:
    pybind11 = pytest.importorskip("pybind11")
    includes = [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    jobs = []
    for source in ("hamming_cpu.cpp", "mih.cpp"):
        cmd = [CROSS_CXX, "-O1", "-std=c++17", "-Wall", "-fPIC", "-c", *includes, str(CSRC / source),
               "-o", str(tmp_path / f"{source}.o")]
        jobs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for cmd, job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, f"{' '.join(cmd)} failed:\n{err[-4000:]}"
        assert "warning" not in err, err[-4000:]

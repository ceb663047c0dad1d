"""GPU kernels: their sources compile, the pieces that need no GPU behave, and on a GPU every backend is exact.

Without a GPU the compile checks still run (nvcc on the .cu files, NVRTC on the
source CuPy loads, the C++ compiler on the torch binding), so a broken CUDA
source fails the suite on any machine with a CUDA toolkit. Tests that launch
kernels skip cleanly when no CUDA device is visible; scripts/gpu_check.sh runs
them on a machine with one.
"""
from __future__ import annotations

import ctypes
import glob
import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from brcd_cli.kernels import cuda, cupy_backend, gpu_inputs, reference
from brcd_cli.kernels import torch_reference_gpu as torch_ref

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
sys.path.insert(0, str(CSRC))
import cuda_build  # noqa: E402 - csrc/ is not a package

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device visible")
CUDA_HOME = cuda_build.find_cuda_home()
needs_nvcc = pytest.mark.skipif(CUDA_HOME is None, reason="no CUDA toolkit (nvcc) found")


def _nvcc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


# ----------------------------------------------------------------------------- compile checks (no GPU needed)


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernel_source_compiles_with_nvcc_without_warnings(tmp_path: Path, arch: str) -> None:
    """The single kernel source builds to machine code for Ampere and Hopper, warning-free."""
    out = _nvcc("-cubin", f"-arch={arch}", "-Werror", "all-warnings", "-o", str(tmp_path / "k.cubin"),
                str(CSRC / "hamming_kernels.cu"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "k.cubin").stat().st_size > 0


@needs_nvcc
def test_extension_cuda_file_compiles(tmp_path: Path) -> None:
    """hamming_cuda.cu (kernels + launchers, no torch headers) compiles to an object file as setup.py builds it."""
    out = _nvcc("-c", "-std=c++17", "-Xcompiler", "-fPIC", "-gencode", "arch=compute_90,code=sm_90",
                *cuda_build.NVCC_FLAGS, "-o", str(tmp_path / "hamming_cuda.o"), str(CSRC / "hamming_cuda.cu"),
                cwd=tmp_path)
    assert out.returncode == 0, out.stderr


@needs_nvcc
@pytest.mark.skipif(torch.version.cuda is None, reason="torch is a CPU-only build: no CUDA headers of torch")
@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_extension_binding_compiles_against_torch() -> None:
    """The pybind/torch side of the extension passes the C++ compiler with torch's and CUDA's headers."""
    from torch.utils.cpp_extension import include_paths

    includes = [*include_paths(), os.path.join(CUDA_HOME, "include"), sysconfig.get_paths()["include"]]
    cmd = ["c++", "-fsyntax-only", "-std=c++20", "-DTORCH_EXTENSION_NAME=_hamming_cuda",
           "-DTORCH_API_INCLUDE_EXTENSION_H", *[f"-isystem{p}" for p in includes],
           str(CSRC / "hamming_cuda_bindings.cpp")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr


def _nvrtc() -> "ctypes.CDLL | None":
    """libnvrtc from torch's nvidia wheels (what CuPy uses too), with its builtins preloaded."""
    for pattern in ("cu13/lib/libnvrtc.so.*", "cuda_nvrtc/lib/libnvrtc.so.*"):
        for base in importlib.import_module("nvidia").__path__ if importlib.util.find_spec("nvidia") else []:
            libs = sorted(p for p in glob.glob(os.path.join(base, pattern)) if "alt" not in p and "builtins" not in p)
            if libs:
                lib_dir = os.path.dirname(libs[0])
                for builtins in glob.glob(os.path.join(lib_dir, "libnvrtc-builtins.so.*")):
                    if "alt" not in builtins:
                        ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
                return ctypes.CDLL(libs[0])
    return None


def test_kernel_source_compiles_with_nvrtc_as_cupy_loads_it() -> None:
    """NVRTC (no system headers, CuPy's compiler) accepts the source with the options CuPy is given."""
    lib = _nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found in the nvidia wheels")
    prog = ctypes.c_void_p()
    source = cupy_backend.kernel_source().encode()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source, b"hamming_kernels.cu", 0, None, None) == 0
    options = [b"--gpu-architecture=compute_80", *(o.encode() for o in cupy_backend.NVRTC_OPTIONS)]
    result = lib.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert result == 0, log.value.decode(errors="replace")


def test_cupy_launch_table_matches_the_kernel_source() -> None:
    """CuPy passes arguments by the table in cupy_backend; it must list every kernel with its exact parameter kinds."""
    assert cupy_backend.kernel_parameters(cupy_backend.kernel_source()) == cupy_backend.SIGNATURES


def test_kernel_parameter_reader_rejects_unknown_types() -> None:
    with pytest.raises(ValueError, match="unrecognised"):
        cupy_backend.kernel_parameters('extern "C" __global__ void k(float x) {}')


def test_extension_and_cupy_offer_the_same_launch_functions() -> None:
    """kernels/cuda.py drives both through one set of names; the binding must export each of them."""
    names = {n for n in dir(cupy_backend.CupyLauncher) if not n.startswith("_") and n != "compile"}
    binding = (CSRC / "hamming_cuda_bindings.cpp").read_text()
    for name in names:
        assert f'm.def("{name}"' in binding, name


# ----------------------------------------------------------------------------- build configuration


def test_build_mode_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cuda_build.ENV_VAR, raising=False)
    assert cuda_build.build_mode() == "auto"
    monkeypatch.setenv(cuda_build.ENV_VAR, "0")
    assert cuda_build.build_mode() == "0"
    monkeypatch.setenv(cuda_build.ENV_VAR, "maybe")
    with pytest.raises(SystemExit, match="must be 0, 1 or auto"):
        cuda_build.build_mode()


def test_build_off_skips_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv(cuda_build.ENV_VAR, "0")
    assert cuda_build.cuda_extension(ROOT) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["brcd: CUDA kernels skipped (BRCD_BUILD_CUDA=0)"]


@pytest.mark.skipif(torch.version.cuda is None or CUDA_HOME is None, reason="needs a CUDA torch and nvcc")
def test_build_auto_configures_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a CUDA torch and nvcc the extension is planned with our sources, an arch list and the wheel's cudart."""
    monkeypatch.setenv(cuda_build.ENV_VAR, "auto")
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    ext = cuda_build.cuda_extension(ROOT)
    assert ext is not None and ext.name == "brcd_cli._hamming_cuda"
    assert sorted(Path(s).name for s in ext.sources) == sorted(cuda_build.SOURCES)
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == cuda_build.DEFAULT_ARCH_LIST
    if cuda_build.wheel_cudart_dir() is not None:
        assert any(lib.startswith(":libcudart.so.") for lib in ext.libraries)
        assert cuda_build.wheel_cudart_dir() in ext.runtime_library_dirs


# ----------------------------------------------------------------------------- torch reference (runs on CPU too)


def _codes(rng: np.random.Generator, n: int, n_bytes: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, n_bytes), dtype=np.uint8)


def _words(x: np.ndarray, device: str = "cpu") -> torch.Tensor:
    t = torch.from_numpy(x).to(device)
    return gpu_inputs.to_words(t, gpu_inputs.min_words(x.shape[1]))


def test_popcount64_counts_every_bit_pattern() -> None:
    values = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 0x5555555555555555, -0x5555555555555556, 127 << 56, -(1 << 56)])
    want = [bin(v & (2**64 - 1)).count("1") for v in values.tolist()]
    assert torch_ref.popcount64(values).tolist() == want


@pytest.mark.parametrize("n_bytes", [1, 3, 8, 13, 16])
def test_torch_reference_matches_numpy_reference(n_bytes: int) -> None:
    rng = np.random.default_rng(n_bytes)
    q, db = _codes(rng, 9, n_bytes), _codes(rng, 300, n_bytes)
    db[100:140] = db[0]  # ties
    qw, dbw = _words(q), _words(db)
    assert np.array_equal(torch_ref.hamming_distances(qw, dbw).numpy(), reference.hamming_distances(q, db))
    for k in (1, 7, 300, 305):
        got_d, got_i = torch_ref.knn(qw, dbw, k)
        want_d, want_i = reference.knn(q, db, k)
        assert np.array_equal(got_d.numpy(), want_d) and np.array_equal(got_i.numpy(), want_i)
    for r in (0, 2, 4 * n_bytes, 8 * n_bytes):
        got = torch_ref.radius_search(qw, dbw, r)
        want = reference.radius_search(q, db, r)
        for g, w in zip(got, want):
            assert np.array_equal(g.numpy(), w)
    masks = _codes(rng, 9, n_bytes)
    masks[3] = 0
    got = torch_ref.masked_similarity_packed(qw, dbw, _words(masks)).numpy()
    assert np.array_equal(got, reference.masked_similarity_packed(q, db, masks))


def test_torch_reference_handles_an_empty_database() -> None:
    q = _words(np.zeros((2, 8), np.uint8))
    db = _words(np.zeros((0, 8), np.uint8))
    d, i = torch_ref.knn(q, db, 5)
    assert d.shape == (2, 0) and i.shape == (2, 0)
    lims, dd, ii = torch_ref.radius_search(q, db, 3)
    assert lims.tolist() == [0, 0, 0] and dd.numel() == 0 and ii.numel() == 0


def test_to_words_pads_with_zero_bytes() -> None:
    x = torch.tensor([[1, 2, 3]], dtype=torch.uint8)
    w = gpu_inputs.to_words(x, 1)
    assert w.dtype == torch.int64 and w.tolist() == [[1 + (2 << 8) + (3 << 16)]]
    assert gpu_inputs.kernel_words(1) == 1 and gpu_inputs.kernel_words(9) == 2 and gpu_inputs.kernel_words(17) == 4
    assert gpu_inputs.kernel_words(128) == 16 and gpu_inputs.kernel_words(129) is None


# ----------------------------------------------------------------------------- dispatch, planning, registration


def test_gpu_api_rejects_cpu_tensors_with_a_clear_message() -> None:
    q = torch.zeros((2, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match="must be a torch tensor on a CUDA device"):
        cuda.knn(q, q, 3)
    with pytest.raises(ValueError, match="must be a torch tensor on a CUDA device"):
        cuda.radius_search(np.zeros((2, 8), np.uint8), q, 1)


def test_unknown_gpu_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cuda.ENV_VAR, "opencl")
    with pytest.raises(ValueError, match="unknown GPU backend 'opencl'"):
        cuda.REGISTRY.select(None)


def test_backend_report_names_every_backend() -> None:
    report = cuda.available_gpu_backends()
    assert list(report) == list(cuda.GPU_BACKENDS)
    if not HAS_GPU:
        assert all(v.startswith("no CUDA device visible") for v in report.values())
        assert cuda.active_gpu_backend() is None


@pytest.mark.parametrize("n_q,n_db,k,n_bits", [(1, 10, 3, 64), (1000, 10_000_000, 100, 64), (7, 5000, 4000, 64),
                                               (3, 1 << 20, 1, 1024), (100_000, 300, 300, 256), (5, 1, 1, 8)])
def test_knn_plan_respects_the_kernel_limits(n_q: int, n_db: int, k: int, n_bits: int) -> None:
    words = gpu_inputs.kernel_words(n_bits // 8)
    plan = cuda.plan_knn(n_q, n_db, k, words, n_bits)
    assert cuda._knn_shared_bytes(plan["qt"], words, n_bits) <= cuda.SHARED_LIMIT
    assert plan["chunk"] >= min(k, n_db) and plan["n_chunks"] * plan["chunk"] >= n_db
    assert (plan["n_chunks"] - 1) * plan["chunk"] < n_db  # no empty chunk
    assert plan["n_chunks"] <= 1024 and -(-n_q // plan["qt"]) < 2**31
    assert plan["batch"] >= plan["qt"] or plan["batch"] == n_q


def test_op_registration_attaches_to_the_cuda_keys() -> None:
    """In a fresh process: the fused kernels attach to brcd::masked_similarity for CUDA and AutogradCUDA."""
    if cuda.REGISTRY.loaded("cuda") is None:
        pytest.skip(f"CUDA extension not built: {cuda.REGISTRY.status('cuda')}")
    code = (
        "import torch\n"
        "from brcd_cli.kernels import cuda\n"
        "status = cuda.register_cuda_kernels()\n"
        "assert status == 'registered (cuda)', status\n"
        "assert cuda.register_cuda_kernels() == status\n"
        "for key in ('CUDA', 'AutogradCUDA'):\n"
        "    assert torch._C._dispatch_has_kernel_for_dispatch_key('brcd::masked_similarity', key), key\n"
        "a = torch.randn(4, 8, requires_grad=True)\n"
        "m = (torch.rand(4, 8) > 0.5).float()\n"
        "from brcd_cli.kernels import dense_ops, reference\n"
        "out = dense_ops.masked_similarity(a, a, m)\n"
        "assert torch.allclose(out, reference.masked_similarity_forward(a, a, m))\n"
        "out.sum().backward()\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


class _ContractLauncher:
    """The kernels' contracts written in plain torch, on the CPU, to test the launch planning in kernels/cuda.py.

    Each method does what its kernel promises for the arguments it is given
    (flat offsets, strides, list lengths), checks the geometry against the
    kernel's limits, and writes radius hits in reverse order (the kernel's order
    is arbitrary) so that the segment sort is exercised too.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    @staticmethod
    def _dist(q: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
        return torch_ref.hamming_distances(q, db).to(torch.int64)

    def knn_chunk(self, gx, gy, smem, words, q, db, n_q, n_db, chunk, k, max_d, qt, cand_d, cand_i, list_len, q_stride):
        self.calls.append("knn_chunk")
        assert smem <= cuda.SHARED_LIMIT and gx == -(-n_q // qt) and gy == -(-n_db // chunk) <= cuda.MAX_GRID_Y
        assert q.shape == (n_q, words) and db.shape == (n_db, words) and words in gpu_inputs.KERNEL_WORDS
        flat_d, flat_i = cand_d.view(-1), cand_i.view(-1)
        for c in range(gy):
            begin, end = c * chunk, min(n_db, (c + 1) * chunk)
            kk = min(k, end - begin)
            assert kk <= list_len
            key = self._dist(q, db[begin:end]) * n_db + torch.arange(begin, end)
            best = torch.topk(key, kk, dim=1, largest=False).values
            for qi in range(n_q):
                at = qi * q_stride + c * list_len
                flat_d[at : at + kk] = (best[qi] // n_db).to(torch.int32)
                flat_i[at : at + kk] = best[qi] % n_db

    def knn_merge(self, gx, smem, cand_d, cand_i, q_stride, list_len, last_len, n_lists, k_out, max_d, out_d, out_i):
        self.calls.append("knn_merge")
        assert smem <= cuda.SHARED_LIMIT
        flat_d, flat_i = cand_d.view(-1), cand_i.view(-1)
        for qi in range(gx):
            parts = [(c * list_len, c * list_len + (last_len if c == n_lists - 1 else list_len)) for c in range(n_lists)]
            d = torch.cat([flat_d[qi * q_stride + a : qi * q_stride + b] for a, b in parts]).to(torch.int64)
            i = torch.cat([flat_i[qi * q_stride + a : qi * q_stride + b] for a, b in parts])
            order = torch.argsort(d * (1 << 40) + i)[:k_out]
            out_d[qi], out_i[qi] = d[order].to(torch.int32), i[order]

    def radius_count(self, gx, gy, smem, q, db, n_q, n_db, words, chunk, radius, qt, counts):
        self.calls.append("radius_count")
        assert gx == -(-n_q // qt) and gy * chunk >= n_db and gy <= cuda.MAX_GRID_Y and smem == 8 * qt * words
        counts += (self._dist(q, db) <= radius).sum(dim=1)

    def radius_emit(self, gx, gy, smem, q, db, n_q, n_db, words, chunk, radius, qt, cursor, lims, out_d, out_i):
        self.calls.append("radius_emit")
        d = self._dist(q, db)
        for qi in range(n_q):
            hits = torch.nonzero(d[qi] <= radius).flatten().flip(0)
            at = int(lims[qi]) + int(cursor[qi])
            out_d[at : at + hits.numel()] = d[qi, hits].to(torch.int32)
            out_i[at : at + hits.numel()] = hits
            cursor[qi] += hits.numel()

    def pairwise(self, gx, gy, smem, q, db, masks, mask_rows, n_q, n_db, words, qt, out_d, out_s):
        self.calls.append("pairwise")
        assert gx * cuda.THREADS >= n_db and gy == -(-n_q // qt) and (out_d is None) != (out_s is None)
        if masks is None:
            out_d.copy_(torch_ref.hamming_distances(q, db))
        else:
            out_s.copy_(torch_ref.masked_similarity_packed(q, db, masks))


    # The dense kernels' contracts (see the comments above each kernel in hamming_kernels.cu).

    @staticmethod
    def _mask(mask, n, length, like):
        if mask is None:
            return torch.ones((n, length), dtype=like.dtype)
        return mask.expand(n, length) if mask.ndim == 1 else mask

    def msim_forward(self, gx, gy, a, b, mask, mask_stride, n, m, length, out):
        assert (gx, gy) == (-(-m // 16), -(-n // 16)) and mask_stride == (0 if mask is None or mask.ndim == 1 else length)
        out.copy_(reference.masked_similarity_forward(a, b, mask))

    def msim_backward_rows(self, gx, gy, g, a, b, mask, mask_stride, n, m, length, grad_a, grad_mask, inv_w):
        assert (gx, gy) == (-(-length // 16), -(-n // 16))
        mm = self._mask(mask, n, length, a)
        w = mm.sum(dim=1)
        iw = torch.where(w != 0, 1 / torch.where(w != 0, w, torch.ones_like(w)), torch.zeros_like(w))
        gb = g @ b
        inv_w.copy_(iw)
        grad_a.copy_(mm * gb * iw[:, None])
        if grad_mask is not None:
            grad_mask.copy_(iw[:, None] * a * gb)

    def msim_backward_cols(self, gx, gy, g, a, mask, mask_stride, inv_w, n, m, length, grad_b):
        assert (gx, gy) == (-(-length // 16), -(-m // 16))
        grad_b.copy_((g * inv_w[:, None]).T @ (self._mask(mask, n, length, a) * a))


@pytest.mark.parametrize("mask_kind", ["none", "shared", "rows"])
def test_dense_backward_plan_gives_autograd_gradients(mask_kind: str) -> None:
    """The host side of the fused backward (mask-gradient correction, shared-mask sum) against autograd."""
    a, b, mask = _dense_inputs(23, 17, 40, torch.float64, mask_kind)
    leaves = [t.requires_grad_(True) for t in (a, b, mask) if t is not None]
    want = reference.masked_similarity_forward(a, b, mask)
    grad_out = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, leaves, grad_out)
    detached = [None if t is None else t.detach() for t in (a, b, mask)]
    got = cuda.masked_similarity_forward(_ContractLauncher(), *detached)
    torch.testing.assert_close(got, want.detach())
    for out in (got, None):  # with the saved output, and recomputing it
        grads = cuda.masked_similarity_backward(_ContractLauncher(), grad_out, *detached, (True, True, True), out)
        assert (grads[2] is None) == (mask is None)
        for g, w in zip([g for g in grads if g is not None], want_grads):
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize("n_q,n_db,k", [(3, 1, 5), (5, 50, 50), (4, 20000, 7), (9, 9000, 3000), (2, 70000, 100)])
def test_knn_launch_plan_gives_reference_results(n_q: int, n_db: int, k: int) -> None:
    """Chunking, candidate lists and the merge, as planned for the GPU, give exactly the reference's lists."""
    q, db = _codes(np.random.default_rng(n_db), n_q, 8), _codes(np.random.default_rng(k), n_db, 8)
    db[: n_db // 2] = db[0]  # ties across chunks
    launcher = _ContractLauncher()
    got_d, got_i = cuda._knn_launch(launcher, _words(q), _words(db), k, 64)
    want_d, want_i = reference.knn(q, db, k)
    np.testing.assert_array_equal(got_d.numpy(), want_d)
    np.testing.assert_array_equal(got_i.numpy(), want_i)
    plan = cuda.plan_knn(n_q, n_db, k, 1, 64)
    assert ("knn_merge" in launcher.calls) == (plan["n_chunks"] > 1)


def test_knn_launch_plan_in_query_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda, "CANDIDATE_BUDGET", 1 << 14)
    q, db = _codes(np.random.default_rng(0), 40, 8), _codes(np.random.default_rng(1), 30000, 8)
    launcher = _ContractLauncher()
    got_d, got_i = cuda._knn_launch(launcher, _words(q), _words(db), 10, 64)
    want_d, want_i = reference.knn(q, db, 10)
    assert launcher.calls.count("knn_merge") > 1
    np.testing.assert_array_equal(got_d.numpy(), want_d)
    np.testing.assert_array_equal(got_i.numpy(), want_i)


@pytest.mark.parametrize("radius", [0, 20, 64])
def test_radius_launch_plan_sorts_each_segment(radius: int) -> None:
    q, db = _codes(np.random.default_rng(2), 7, 8), _codes(np.random.default_rng(3), 3000, 8)
    db[100:200] = q[0]
    got = cuda._radius_launch(_ContractLauncher(), _words(q), _words(db), radius, 64)
    for g, w in zip(got, reference.radius_search(q, db, radius)):
        np.testing.assert_array_equal(g.numpy(), w)


def test_segment_sort_without_a_combined_key() -> None:
    """Keys that would overflow int64 take the three-stable-sorts path; both paths agree."""
    gen = torch.Generator().manual_seed(0)
    lims = torch.tensor([0, 5, 5, 12])
    d = torch.randint(0, 4, (12,), generator=gen, dtype=torch.int32)
    i = torch.randperm(12, generator=gen)
    small = cuda._sort_segments(lims, d, i, 12, 64)
    huge = cuda._sort_segments(lims, d, i, 1 << 60, 64)
    for got in (small, huge):
        for s, e in ((0, 5), (5, 12)):
            pairs = list(zip(got[0][s:e].tolist(), got[1][s:e].tolist()))
            assert pairs == sorted(zip(d[s:e].tolist(), i[s:e].tolist()))


def test_pairwise_launch_plan() -> None:
    q, db = _codes(np.random.default_rng(4), 11, 5), _codes(np.random.default_rng(5), 700, 5)
    masks = _codes(np.random.default_rng(6), 11, 5)
    got = cuda._pairwise_launch(_ContractLauncher(), _words(q), _words(db), None)
    np.testing.assert_array_equal(got.numpy(), reference.hamming_distances(q, db))
    got = cuda._pairwise_launch(_ContractLauncher(), _words(q), _words(db), _words(masks))
    np.testing.assert_array_equal(got.numpy(), reference.masked_similarity_packed(q, db, masks))


# ----------------------------------------------------------------------------- on a GPU


def _gpu_backends() -> list[str]:
    if not HAS_GPU:
        return list(cuda.GPU_BACKENDS)  # collected, then skipped
    report = cuda.available_gpu_backends()
    return [name for name, state in report.items() if state == "available"] or list(cuda.GPU_BACKENDS)


@pytest.fixture(params=_gpu_backends())
def backend(request: pytest.FixtureRequest) -> str:
    if not HAS_GPU:
        pytest.skip("no CUDA device visible")
    state = cuda.available_gpu_backends()[request.param]
    if state != "available":
        pytest.skip(f"{request.param}: {state}")
    return request.param


def _pair(seed: int, n_q: int, n_db: int, n_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return _codes(rng, n_q, n_bytes), _codes(rng, n_db, n_bytes)


def _gpu(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).cuda()


def _check_knn(q: np.ndarray, db: np.ndarray, k: int, backend: str) -> None:
    got_d, got_i = cuda.knn(_gpu(q), _gpu(db), k, backend=backend)
    want_d, want_i = reference.knn(q, db, k)
    assert got_d.dtype == torch.int32 and got_i.dtype == torch.int64
    np.testing.assert_array_equal(got_d.cpu().numpy(), want_d)
    np.testing.assert_array_equal(got_i.cpu().numpy(), want_i)


@needs_gpu
@pytest.mark.parametrize("n_bytes", [1, 3, 8, 16, 25, 128, 130])
def test_gpu_knn_matches_reference_for_every_code_length(backend: str, n_bytes: int) -> None:
    q, db = _pair(n_bytes, 11, 3000, n_bytes)
    for k in (1, 10, 100):
        _check_knn(q, db, k, backend)


@needs_gpu
@pytest.mark.parametrize("n_db,k", [(1, 1), (1, 5), (50, 50), (50, 57), (5000, 4999), (20000, 64), (70000, 100)])
def test_gpu_knn_edges_and_multi_chunk_merge(backend: str, n_db: int, k: int) -> None:
    q, db = _pair(n_db + k, 13, n_db, 8)
    _check_knn(q, db, k, backend)


@needs_gpu
def test_gpu_knn_ties_are_broken_by_index(backend: str) -> None:
    rng = np.random.default_rng(5)
    db = np.repeat(_codes(rng, 3, 8), 9000, axis=0)  # 27000 codes, only 3 distinct: huge ties at every distance
    q = np.concatenate([db[:2], _codes(rng, 5, 8)])
    for k in (1, 100, 9000, 9001, 27000):
        _check_knn(q, db, k, backend)
    _check_knn(q, np.zeros((20000, 8), np.uint8), 100, backend)  # all-equal database


@needs_gpu
def test_gpu_knn_many_queries_in_batches(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small candidate budget forces several query batches; results must not change."""
    monkeypatch.setattr(cuda, "CANDIDATE_BUDGET", 1 << 16)
    q, db = _pair(3, 200, 30000, 8)
    _check_knn(q, db, 20, backend)


@needs_gpu
def test_gpu_knn_empty_database(backend: str) -> None:
    d, i = cuda.knn(torch.zeros((3, 8), dtype=torch.uint8, device="cuda"),
                    torch.zeros((0, 8), dtype=torch.uint8, device="cuda"), 4, backend=backend)
    assert d.shape == (3, 0) and i.shape == (3, 0)


@needs_gpu
@pytest.mark.parametrize("n_bytes,radius", [(8, 0), (8, 26), (3, 24), (16, 60), (25, 90)])
def test_gpu_radius_search_matches_reference(backend: str, n_bytes: int, radius: int) -> None:
    q, db = _pair(radius, 17, 70000, n_bytes)
    db[500:900] = q[0]
    got = cuda.radius_search(_gpu(q), _gpu(db), radius, backend=backend)
    want = reference.radius_search(q, db, radius)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.cpu().numpy(), w)


@needs_gpu
@pytest.mark.parametrize("n_bytes", [1, 8, 13, 32])
def test_gpu_pairwise_ops_match_reference(backend: str, n_bytes: int) -> None:
    q, db = _pair(n_bytes, 19, 1000, n_bytes)
    got = cuda.hamming_distances(_gpu(q), _gpu(db), backend=backend)
    np.testing.assert_array_equal(got.cpu().numpy(), reference.hamming_distances(q, db))
    rng = np.random.default_rng(1)
    for masks in (_codes(rng, 1, n_bytes)[0], _codes(rng, 19, n_bytes), np.zeros((19, n_bytes), np.uint8)):
        got = cuda.masked_similarity_packed(_gpu(q), _gpu(db), _gpu(masks), backend=backend)
        np.testing.assert_array_equal(got.cpu().numpy(), reference.masked_similarity_packed(q, db, masks))


def _dense_inputs(n: int, m: int, length: int, dtype: torch.dtype, mask_kind: str):
    gen = torch.Generator().manual_seed(n * 1000 + length)
    a = torch.tanh(torch.randn(n, length, generator=gen, dtype=dtype))
    b = torch.tanh(torch.randn(m, length, generator=gen, dtype=dtype))
    if mask_kind == "none":
        mask = None
    elif mask_kind == "shared":
        mask = (torch.rand(length, generator=gen) > 0.4).to(dtype)
    else:
        mask = (torch.rand(n, length, generator=gen) > 0.4).to(dtype)
        mask[1] = 0  # a row with an empty mask: output and gradient 0
    return a, b, mask


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask_kind", ["none", "shared", "rows"])
@pytest.mark.parametrize("n,m,length", [(512, 512, 64), (37, 21, 13), (5, 70, 128), (16, 16, 1)])
def test_fused_masked_similarity_matches_autograd_reference(
    backend: str, dtype: torch.dtype, mask_kind: str, n: int, m: int, length: int
) -> None:
    if backend == "torch":
        pytest.skip("the torch backend is the reference itself")
    launcher = cuda.REGISTRY.loaded(backend)
    a, b, mask = _dense_inputs(n, m, length, dtype, mask_kind)
    a, b = a.cuda().requires_grad_(True), b.cuda().requires_grad_(True)
    mask = None if mask is None else mask.cuda().requires_grad_(True)
    want = reference.masked_similarity_forward(a, b, mask)
    grad_out = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, [t for t in (a, b, mask) if t is not None], grad_out)
    got = cuda.masked_similarity_forward(launcher, a.detach(), b.detach(), None if mask is None else mask.detach())
    got_grads = cuda.masked_similarity_backward(launcher, grad_out, a.detach(), b.detach(),
                                                None if mask is None else mask.detach(), (True, True, True))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want.detach(), atol=tol, rtol=tol)
    for g, w in zip([g for g in got_grads if g is not None], want_grads):
        torch.testing.assert_close(g, w, atol=tol, rtol=tol)


@needs_gpu
def test_registered_op_uses_the_kernels_on_cuda_and_matches_cpu() -> None:
    """Through brcd::masked_similarity: same loss values and gradients on CUDA as on the CPU."""
    from brcd_cli.kernels import dense_ops
    from brcd_cli.losses.brcd import BRCDLoss

    status = cuda.register_cuda_kernels()
    if not status.startswith("registered"):
        pytest.skip(status)
    gen = torch.Generator().manual_seed(0)
    s = torch.tanh(torch.randn(256, 64, generator=gen))
    t, t2 = torch.sign(torch.randn(2, 256, 64, generator=gen))
    clusters = torch.randint(0, 4, (256,), generator=gen)
    centres = torch.randn(4, 64, generator=gen)
    masks = (torch.rand(4, 64, generator=gen) > 0.3).float()
    loss = BRCDLoss()
    values, grads = [], []
    for device in ("cpu", "cuda"):
        x = s.to(device).requires_grad_(True)
        value = loss(x, t.to(device), t2.to(device), clusters.to(device), centres.to(device), masks.to(device))
        (g,) = torch.autograd.grad(value, x)
        values.append(value.item())
        grads.append(g.cpu())
    assert abs(values[0] - values[1]) <= 1e-5
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)
    a = s.cuda()
    with torch.inference_mode():  # the CUDA key (no autograd) too
        torch.testing.assert_close(dense_ops.masked_similarity(a, a), reference.masked_similarity_forward(a, a, None))


# ----------------------------------------------------------------------------- CLI


@pytest.mark.skipif(HAS_GPU, reason="checks the message shown without a GPU")
@pytest.mark.parametrize("args", [["bench", "search", "--device", "cuda", "--n", "1000"], ["bench", "loss-kernel"]])
def test_gpu_benchmarks_without_a_gpu_end_in_one_line(args: list[str], capsys: pytest.CaptureFixture) -> None:
    from conftest import run_cli

    code, out, err = run_cli(args, capsys)
    assert code != 0 and out == ""
    assert err.strip().splitlines() == [err.strip()] and "needs a visible CUDA device" in err


def test_bench_search_refuses_an_unknown_device(capsys: pytest.CaptureFixture) -> None:
    from conftest import run_cli

    code, _, err = run_cli(["bench", "search", "--device", "tpu"], capsys)
    assert code != 0 and "'--device'" in err and "'tpu' is not one of 'cpu', 'cuda'" in err


def test_info_lists_the_gpu_backends(capsys: pytest.CaptureFixture) -> None:
    import json

    from conftest import run_cli

    code, out, _ = run_cli(["info", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and list(info["gpu_backends"]) == list(cuda.GPU_BACKENDS)
    assert info["gpu_backend_in_use"] == (cuda.active_gpu_backend() or "none (no CUDA device visible)")


@needs_gpu
def test_packed_dispatch_keeps_cuda_tensors_on_the_gpu():
    """brcd_cli.kernels routes CUDA tensors to the GPU backends, with the CPU reference's results."""
    from brcd_cli import kernels
    from brcd_cli.kernels import reference

    rng = np.random.default_rng(3)
    q = rng.integers(0, 256, size=(5, 8), dtype=np.uint8)
    db = rng.integers(0, 4, size=(300, 8), dtype=np.uint8)
    d, i = kernels.knn(torch.from_numpy(q).cuda(), torch.from_numpy(db).cuda(), 17)
    rd, ri = reference.knn(q, db, 17)
    assert d.is_cuda and np.array_equal(d.cpu().numpy(), rd) and np.array_equal(i.cpu().numpy(), ri)
    lims, dist, idx = kernels.radius_search(torch.from_numpy(q).cuda(), torch.from_numpy(db).cuda(), 30)
    rl, rdist, ridx = reference.radius_search(q, db, 30)
    assert np.array_equal(lims.cpu().numpy(), rl) and np.array_equal(idx.cpu().numpy(), ridx)

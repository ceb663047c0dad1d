"""Every available kernel backend must agree exactly with the reference."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch

import brcd_cli.kernels as K
from brcd_cli.kernels import dispatch, reference
from brcd_cli.kernels._registry import BackendRegistry

BITS = [8, 16, 24, 32, 40, 64, 72, 128, 200, 256, 520]
FAST = [name for name, state in K.available_backends().items() if state == "available" and name != "reference"]


def _native_paths() -> list[str]:
    if K.available_backends()["native"] != "available":
        return []
    import brcd_cli._hamming_cpu as native

    return list(native.cpu_features()["simd_paths_supported"])


# "native:<path>" runs the C++ kernels with one SIMD path forced (avx512, avx2,
# popcnt, scalar: whichever this CPU supports), so the AVX2 and baseline x86-64
# code is exercised on an AVX-512 machine too. "native:<path>:1" runs one thread.
# "native:avx2+narrow" runs the AVX2 kernel with its other step shape (BRCD_AVX2_STEP).
BACKEND_CASES = (
    [f"native:{p}" for p in _native_paths()]
    + (["native:avx2+narrow"] if "avx2" in _native_paths() else [])
    + [f"native:{p}:1" for p in _native_paths()[:1]]
    + [b for b in FAST if b != "native"]
    + ["reference"]
)


@pytest.fixture(params=BACKEND_CASES)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name, _, rest = request.param.partition(":")
    path, _, threads = rest.partition(":")
    if threads:
        monkeypatch.setattr(dispatch, "default_threads", lambda: int(threads))
    path, _, step = path.partition("+")
    if step:
        monkeypatch.setenv("BRCD_AVX2_STEP", step)
    if path:
        import brcd_cli._hamming_cpu as native

        native._set_simd_path(path)
        try:
            yield name
        finally:
            native._set_simd_path("auto")
    else:
        yield name


def _random(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


def _clustered(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """Codes near a few centres, so small distances and many ties occur."""
    centres = _random(rng, 3, bits)
    codes = centres[rng.integers(0, 3, size=n)]
    flips = rng.random((n, bits)) < 0.05
    return codes ^ np.packbits(flips, axis=1, bitorder="little")


def _assert_same(got: Any, want: Any) -> None:
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
        return
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(got, want)


def _check_all_ops(backend: str, q: np.ndarray, db: np.ndarray, masks: list[np.ndarray], ks: list[int],
                   radii: list[int]) -> None:
    _assert_same(K.hamming_distances(q, db, backend=backend), reference.hamming_distances(q, db))
    for k in ks:
        _assert_same(K.knn(q, db, k, backend=backend), reference.knn(q, db, k))
    for r in radii:
        _assert_same(K.radius_search(q, db, r, backend=backend), reference.radius_search(q, db, r))
    for m in masks:
        _assert_same(K.masked_similarity_packed(q, db, m, backend=backend),
                     reference.masked_similarity_packed(q, db, m))


# --------------------------------------------------------------------------- backends vs reference


@pytest.mark.parametrize("bits", BITS)
def test_random_codes_match_reference(backend: str, bits: int) -> None:
    rng = np.random.default_rng(bits)
    q, db = _random(rng, 9, bits), _clustered(rng, 301, bits)
    q[0] = db[17]  # an exact match
    per_query = _random(rng, 9, bits)
    per_query[3] = 0  # w == 0 for one query
    masks = [per_query, _random(rng, 1, bits)[0], _random(rng, 1, bits), np.zeros(bits // 8, np.uint8),
             np.full(bits // 8, 255, np.uint8)]
    _check_all_ops(backend, q, db, masks, ks=[1, 5, 300, 301, 1000], radii=[0, 1, bits // 4, bits // 2, bits])


@pytest.mark.parametrize("bits", [8, 64, 72])
def test_all_equal_codes_tie_by_index(backend: str, bits: int) -> None:
    rng = np.random.default_rng(1)
    db = np.repeat(_random(rng, 1, bits), 50, axis=0)
    q = np.concatenate([db[:1], ~db[:1], _random(rng, 2, bits)])
    _check_all_ops(backend, q, db, [db[:1]], ks=[1, 7, 50, 51], radii=[0, bits - 1, bits])
    d, i = K.knn(q, db, 7, backend=backend)
    np.testing.assert_array_equal(i, np.tile(np.arange(7), (4, 1)))
    assert (d[0] == 0).all() and (d[1] == bits).all()


def test_large_database_paths(backend: str) -> None:
    """Enough rows for the unrolled/tiled loops and the k-cut inside the threshold group."""
    rng = np.random.default_rng(7)
    for bits in (64, 72):
        q, db = _random(rng, 3, bits), _clustered(rng, 5003, bits)
        _check_all_ops(backend, q, db, [_random(rng, 3, bits)], ks=[10, 2500], radii=[bits // 4])


def test_empty_database_and_no_queries(backend: str) -> None:
    rng = np.random.default_rng(2)
    q, empty = _random(rng, 4, 64), np.zeros((0, 8), np.uint8)
    d, i = K.knn(q, empty, 5, backend=backend)
    assert d.shape == (4, 0) and d.dtype == np.int32 and i.shape == (4, 0) and i.dtype == np.int64
    assert K.hamming_distances(q, empty, backend=backend).shape == (4, 0)
    lims, rd, ri = K.radius_search(q, empty, 64, backend=backend)
    np.testing.assert_array_equal(lims, np.zeros(5, np.int64))
    assert lims.dtype == np.int64 and rd.dtype == np.int32 and ri.dtype == np.int64 and rd.size == ri.size == 0
    assert K.masked_similarity_packed(q, empty, q[:1], backend=backend).shape == (4, 0)
    db = _random(rng, 6, 64)
    _check_all_ops(backend, q[:0], db, [q[:1]], ks=[3], radii=[10])
    _check_all_ops(backend, q[:1], db, [q[:1], q[0]], ks=[1, 6, 9], radii=[0, 32])


def test_database_split_across_threads(backend: str) -> None:
    """Few queries and a large database: the native kernels split the database and merge per query."""
    rng = np.random.default_rng(11)
    for bits in (64, 128, 72):
        q, db = _random(rng, 3, bits), _clustered(rng, 20011, bits)
        q[1] = db[20010]
        for threads in (2, 3):
            for k in (1, 100, 20011, 30000):
                _assert_same(K.knn(q, db, k, backend=backend, threads=threads), reference.knn(q, db, k))
            _assert_same(K.radius_search(q, db, bits // 4, backend=backend, threads=threads),
                         reference.radius_search(q, db, bits // 4))
            _assert_same(K.hamming_distances(q, db, backend=backend, threads=threads),
                         reference.hamming_distances(q, db))


def test_adversarial_orders(backend: str) -> None:
    """Codes that get closer along the database (every code lowers the threshold), and a wall of ties."""
    rng = np.random.default_rng(12)
    for bits in (64, 128):
        q = _random(rng, 1, bits)
        unpacked = np.unpackbits(q, axis=1, bitorder="little")
        flips = np.zeros((bits + 1, bits), np.uint8)
        for d in range(bits + 1):
            flips[d, :d] = 1
        closer = np.packbits(unpacked ^ flips, axis=1, bitorder="little")[::-1]  # distances L, L-1, ..., 0
        db = np.concatenate([np.repeat(closer, 40, axis=0), np.repeat(closer[-3:-2], 3000, axis=0), closer])
        q2 = np.concatenate([q, ~q, q ^ 1])
        for k in (1, 37, 2000, db.shape[0], db.shape[0] + 5):
            _assert_same(K.knn(q2, db, k, backend=backend), reference.knn(q2, db, k))
        _assert_same(K.radius_search(q2, db, 3, backend=backend), reference.radius_search(q2, db, 3))


def test_unaligned_arrays(backend: str) -> None:
    """Rows that start at odd addresses (a view into a byte buffer at offset 1)."""
    rng = np.random.default_rng(13)
    for bits in (64, 128, 24):
        nb = bits // 8
        raw = rng.integers(0, 256, size=1 + 1003 * nb, dtype=np.uint8)
        db = raw[1:].reshape(1003, nb)
        assert db.ctypes.data % 8 != 0 and db.flags.c_contiguous
        raw_q = rng.integers(0, 256, size=3 + 4 * nb, dtype=np.uint8)
        q = raw_q[3:].reshape(4, nb)
        _check_all_ops(backend, q, db, [q], ks=[1, 50, 1003], radii=[bits // 3])


def test_tile_layouts_by_query_block(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of many queries (AVX-512 reads word-major copies) and single queries (rows in place) agree."""
    monkeypatch.setattr(dispatch, "default_threads", lambda: 1)
    rng = np.random.default_rng(16)
    for bits in (64, 128, 256, 72, 192):
        q, db = _random(rng, 40, bits), _clustered(rng, 2077, bits)
        q[5] = db[2076]
        _check_all_ops(backend, q, db, [], ks=[1, 100], radii=[bits // 3])
        for i in (0, 5):
            _check_all_ops(backend, q[i : i + 1], db, [], ks=[1, 100, 2077], radii=[0, bits // 3])


def test_simd_choices_are_this_architectures() -> None:
    if K.available_backends()["native"] != "available":
        pytest.skip("native extension not built")
    import brcd_cli._hamming_cpu as native

    features = native.cpu_features()
    compiled = features["simd_paths_compiled"]
    # SVE is compiled where the compiler can (GCC 12 and later on Linux), fastest first as always.
    ladders = {"x86_64": ["avx512", "avx2", "popcnt", "scalar"],
               "aarch64": (["sve"] if "sve" in compiled else []) + ["neon", "scalar"]}
    ladder = ladders.get(features["arch"], ["scalar"])
    assert compiled == ladder
    with pytest.raises(ValueError, match=f"choose one of {', '.join(reversed(ladder))}, or auto"):
        native._set_simd_path("sse9")
    assert features["cpu_neon"] == (features["arch"] == "aarch64" and "neon" in features["simd_paths_supported"])
    assert features["cpu_sve"] == ("sve" in features["simd_paths_supported"])


def test_simd_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    if K.available_backends()["native"] != "available":
        pytest.skip("native extension not built")
    rng = np.random.default_rng(14)
    q, db = _random(rng, 4, 64), _clustered(rng, 3001, 64)
    want = reference.knn(q, db, 10)
    for path in _native_paths():
        monkeypatch.setenv("BRCD_SIMD", path)
        assert K.native_features()["simd_path"] == path
        _assert_same(K.knn(q, db, 10, backend="native"), want)
    monkeypatch.setenv("BRCD_SIMD", "mmx")
    with pytest.raises(ValueError, match="unknown SIMD path 'mmx'.*BRCD_SIMD"):
        K.knn(q, db, 10, backend="native")
    monkeypatch.setenv("BRCD_SIMD", "auto")
    assert K.native_features()["simd_path"] == _native_paths()[0]


def test_avx2_step_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both AVX2 step shapes give the reference's answer; a bad shape name is one ValueError naming the variable."""
    if K.available_backends()["native"] != "available":
        pytest.skip("native extension not built")
    assert K.native_features()["avx2_step"] == "wide"
    rng = np.random.default_rng(15)
    if "avx2" in _native_paths():
        monkeypatch.setenv("BRCD_SIMD", "avx2")
    for bits in (64, 128, 256):
        q, db = _random(rng, 5, bits), _clustered(rng, 2999, bits)
        for step in ("wide", "narrow"):
            monkeypatch.setenv("BRCD_AVX2_STEP", step)
            assert K.native_features()["avx2_step"] == step
            _assert_same(K.knn(q, db, 17, backend="native"), reference.knn(q, db, 17))
            _assert_same(K.radius_search(q, db, bits // 3, backend="native"), reference.radius_search(q, db, bits // 3))
    monkeypatch.setenv("BRCD_AVX2_STEP", "tall")
    with pytest.raises(ValueError, match="unknown AVX2 step shape 'tall'.*BRCD_AVX2_STEP"):
        K.knn(q, db, 3, backend="native")
    assert K.native_features()["avx2_step"].startswith("none (unknown AVX2 step shape")


def test_threads_argument() -> None:
    rng = np.random.default_rng(15)
    q, db = _random(rng, 2, 64), _random(rng, 10, 64)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            K.knn(q, db, 1, threads=bad)
    assert K.default_threads() >= 1
    _assert_same(K.knn(q, db, 3, threads=5), reference.knn(q, db, 3))


def test_non_contiguous_and_torch_inputs(backend: str) -> None:
    rng = np.random.default_rng(3)
    wide_q, wide_db = _random(rng, 5, 128), _random(rng, 40, 128)
    q, db = wide_q[:, 3:11], wide_db[:, 3:11]  # column slices: not C-contiguous
    assert not q.flags.c_contiguous
    masks = _random(rng, 5, 128)[:, ::2][:, :8]
    qc, dbc, mc = (np.ascontiguousarray(x) for x in (q, db, masks))
    _assert_same(K.hamming_distances(q, db, backend=backend), reference.hamming_distances(qc, dbc))
    _assert_same(K.knn(q, db, 6, backend=backend), reference.knn(qc, dbc, 6))
    _assert_same(K.radius_search(q, db, 28, backend=backend), reference.radius_search(qc, dbc, 28))
    _assert_same(K.masked_similarity_packed(q, db, masks, backend=backend),
                 reference.masked_similarity_packed(qc, dbc, mc))
    tq, tdb = torch.from_numpy(qc), torch.from_numpy(dbc)
    _assert_same(K.knn(tq, tdb, 6, backend=backend), reference.knn(qc, dbc, 6))


def test_hand_worked_masked_similarity(backend: str) -> None:
    a = np.array([[1, 1, -1, -1, 1, 1, 1, 1]])
    b = np.array([[1, -1, -1, 1, 1, 1, 1, 1]])
    mask = np.array([[1, 1, 1, 0, 0, 0, 0, 0]])
    s = K.masked_similarity_packed(K.pack_codes(a), K.pack_codes(b), K.pack_codes(mask), backend=backend)
    assert s.dtype == np.float32
    assert s[0, 0] == np.float32(1 / 3)  # (1 - 1 + 1) / 3


# --------------------------------------------------------------------------- packing


def test_pack_bit_order_and_round_trip() -> None:
    code = -np.ones((1, 16), np.int8)
    code[0, 0] = 1
    code[0, 9] = 1
    np.testing.assert_array_equal(K.pack_codes(code), np.array([[1, 2]], np.uint8))
    rng = np.random.default_rng(4)
    for bits in (8, 24, 72, 256):
        pm = np.where(rng.random((5, bits)) < 0.5, 1, -1).astype(np.int8)
        packed = K.pack_codes(pm)
        assert packed.dtype == np.uint8 and packed.shape == (5, bits // 8)
        np.testing.assert_array_equal(packed, np.packbits(pm > 0, axis=1, bitorder="little"))
        back = K.unpack_codes(packed)
        assert back.dtype == np.int8
        np.testing.assert_array_equal(back, pm)
        for variant in (pm > 0, (pm > 0).astype(np.uint8), pm.astype(np.float32) * 0.3, torch.from_numpy(pm)):
            np.testing.assert_array_equal(K.pack_codes(variant), packed)
    np.testing.assert_array_equal(K.unpack_codes(np.array([[1, 2]], np.uint8), bits=10),
                                  np.array([[1, -1, -1, -1, -1, -1, -1, -1, -1, 1]], np.int8))


def test_pack_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        K.pack_codes(np.ones((2, 12)))
    with pytest.raises(ValueError, match="2-D"):
        K.pack_codes(np.ones(16))


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda q, db: K.hamming_distances(q.astype(np.int64), db), "uint8"),
        (lambda q, db: K.hamming_distances(q[0], db), "2-D"),
        (lambda q, db: K.hamming_distances(q[:, :4], db), "same code length"),
        (lambda q, db: K.knn(q, db, 0), "positive"),
        (lambda q, db: K.knn(q, db, 2.5), "positive integer"),
        (lambda q, db: K.radius_search(q, db, -1), "non-negative"),
        (lambda q, db: K.masked_similarity_packed(q, db, q[:, :4]), "bytes"),
        (lambda q, db: K.masked_similarity_packed(q, db, np.zeros((2, 8), np.uint8)), "one row per query"),
        (lambda q, db: K.masked_similarity_packed(q, db, q.astype(bool)), "uint8"),
    ],
)
def test_validation_errors(call: Callable[[np.ndarray, np.ndarray], Any], message: str) -> None:
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match=message):
        call(_random(rng, 3, 64), _random(rng, 10, 64))


def test_native_module_checks_its_own_inputs() -> None:
    if K.available_backends()["native"] != "available":
        pytest.skip("native extension not built")
    import brcd_cli._hamming_cpu as native

    q = np.zeros((2, 8), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        native.knn(q.astype(np.int32), q, 1)
    with pytest.raises(ValueError, match="same code length"):
        native.hamming_distances(q, q[:, :4])
    with pytest.raises(ValueError, match="positive"):
        native.knn(q, q, 0)
    with pytest.raises(ValueError, match="threads"):
        native.knn(q, q, 1, threads=-1)
    with pytest.raises(ValueError, match="unknown SIMD path 'sse9'"):
        native._set_simd_path("sse9")
    features = native.cpu_features()
    assert features["simd_path"] in features["simd_paths_supported"]
    assert features["simd_paths_compiled"][-1] == "scalar" and "scalar" in features["simd_paths_supported"]


def test_radius_accepts_real_numbers() -> None:
    rng = np.random.default_rng(6)
    q, db = _random(rng, 2, 32), _random(rng, 50, 32)
    _assert_same(K.radius_search(q, db, 12.7), reference.radius_search(q, db, 12))
    _assert_same(K.radius_search(q, db, float("inf")), reference.radius_search(q, db, 32))


# --------------------------------------------------------------------------- dispatch


def test_dispatch_forcing(monkeypatch: pytest.MonkeyPatch) -> None:
    states = K.available_backends()
    assert list(states) == ["native", "numba", "reference"] and states["reference"] == "available"
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert K.active_backend() == next(n for n, s in states.items() if s == "available")
    for name, state in states.items():
        monkeypatch.setenv(dispatch.ENV_VAR, name)
        if state == "available":
            assert K.active_backend() == name
        else:
            with pytest.raises(RuntimeError, match="not available"):
                K.active_backend()
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda-magic")
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda-magic'.*native, numba, reference"):
        K.knn(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8), 1)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        K.knn(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8), 1, backend="gpu")


def test_unavailable_backend_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Any:
        raise ImportError("libfoo.so: cannot open\nshared object file")

    registry = BackendRegistry("kernel", dispatch.ENV_VAR, {**dispatch._LOADERS, "native": broken})
    monkeypatch.setattr(dispatch, "REGISTRY", registry)
    states = K.available_backends()
    assert states["native"] == "ImportError: libfoo.so: cannot open shared object file"
    assert K.active_backend() != "native"
    monkeypatch.setenv(dispatch.ENV_VAR, "native")
    with pytest.raises(RuntimeError, match="'native' was requested .* not available: ImportError"):
        K.hamming_distances(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8))


# --------------------------------------------------------------------------- dense masked similarity


def test_dense_masked_similarity_values() -> None:
    a = torch.tensor([[1.0, 1, -1, -1]])
    b = torch.tensor([[1.0, -1, -1, 1]])
    s = K.masked_similarity(a, b, torch.tensor([1.0, 1, 1, 0]))
    torch.testing.assert_close(s, torch.tensor([[1 / 3]]))
    torch.testing.assert_close(K.masked_similarity(a, b), torch.tensor([[0.0]]))
    assert K.masked_similarity(a, b, torch.zeros(4)).item() == 0.0


def test_dense_matches_packed() -> None:
    rng = np.random.default_rng(8)
    a = np.where(rng.random((6, 72)) < 0.5, 1, -1)
    b = np.where(rng.random((11, 72)) < 0.5, 1, -1)
    m = (rng.random((6, 72)) < 0.3).astype(np.int64)
    m[2] = 0
    dense = K.masked_similarity(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                                torch.tensor(m, dtype=torch.float64))
    packed = K.masked_similarity_packed(K.pack_codes(a), K.pack_codes(b), K.pack_codes(m))
    np.testing.assert_allclose(dense.numpy(), packed, rtol=1e-6, atol=1e-7)
    shared = K.masked_similarity(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                                 torch.tensor(m[0], dtype=torch.float64))
    np.testing.assert_allclose(shared.numpy(), K.masked_similarity_packed(K.pack_codes(a), K.pack_codes(b),
                                                                          K.pack_codes(m[:1])), rtol=1e-6)


def test_dense_masked_similarity_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.tanh(torch.randn(4, 16, generator=g, dtype=torch.float64)).requires_grad_()
    b = torch.tanh(torch.randn(3, 16, generator=g, dtype=torch.float64)).requires_grad_()
    soft_mask = (0.1 + torch.rand(4, 16, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(K.masked_similarity, (a, b, soft_mask))
    assert torch.autograd.gradcheck(K.masked_similarity, (a, b, soft_mask[0].detach().requires_grad_()))
    assert torch.autograd.gradcheck(lambda x, y: K.masked_similarity(x, y), (a, b))
    # A row with w == 0 is a jump in the mask (0 there, +-1 for any tiny w), so its gradient
    # is checked for a and b only; it must be zero and finite.
    mask = (torch.rand(4, 16, generator=g, dtype=torch.float64) < 0.5).double()
    mask[1] = 0.0
    assert torch.autograd.gradcheck(lambda x, y: K.masked_similarity(x, y, mask), (a, b))
    out = K.masked_similarity(a, b, mask)
    out.sum().backward()
    assert torch.isfinite(a.grad).all() and (a.grad[1] == 0).all() and (out[1] == 0).all()


def test_dense_rejects_bad_mask() -> None:
    with pytest.raises(ValueError, match="mask must have shape"):
        K.masked_similarity(torch.ones(2, 8), torch.ones(3, 8), torch.ones(3, 8))


# --------------------------------------------------------------------------- the registered torch op


def _dense_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.tanh(torch.randn(5, 24, generator=g, dtype=torch.float64))
    b = torch.tanh(torch.randn(7, 24, generator=g, dtype=torch.float64))
    mask = (torch.rand(5, 24, generator=g, dtype=torch.float64) < 0.5).double()
    mask[2] = 0.0
    return a, b, mask


def test_torch_op_is_registered_and_matches_reference_exactly() -> None:
    from brcd_cli.kernels import masked_op

    assert masked_op.op_status() == "available"
    assert hasattr(torch.ops.brcd, "masked_similarity")
    a, b, mask = _dense_inputs(0)
    for m in (None, mask, mask[0], mask[1]):
        got = K.masked_similarity(a, b, m)
        want = reference.masked_similarity(a, b, m)
        assert got.dtype == want.dtype and torch.equal(got, want)
    # Mixed dtypes, integer +-1 codes and a float32 batch like the loss's.
    ints = torch.randint(0, 2, (4, 16)) * 2 - 1
    assert torch.equal(K.masked_similarity(ints, ints.float()), reference.masked_similarity(ints, ints.float()))
    z = torch.randn(6, 32)
    zm = (torch.rand(6, 32) < 0.7).float()
    assert torch.equal(K.masked_similarity(z, z, zm), reference.masked_similarity(z, z, zm))


def test_torch_op_backward_matches_autograd_and_gradchecks() -> None:
    a, b, mask = _dense_inputs(1)
    soft = (0.1 + torch.rand(5, 24, dtype=torch.float64))
    for m in (None, mask, soft, soft[0]):
        leaves = [a.clone().requires_grad_(), b.clone().requires_grad_()]
        mm = None if m is None else m.clone().requires_grad_(m is soft or m.ndim == 1)
        out = K.masked_similarity(leaves[0], leaves[1], mm)
        weights = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)
        grads = torch.autograd.grad((out * weights).sum(), [*leaves] + ([mm] if mm is not None and mm.requires_grad else []))
        ref_leaves = [a.clone().requires_grad_(), b.clone().requires_grad_()]
        rm = None if m is None else m.clone().requires_grad_(m is soft or m.ndim == 1)
        ref_out = reference.masked_similarity(ref_leaves[0], ref_leaves[1], rm)
        ref_grads = torch.autograd.grad((ref_out * weights).sum(),
                                        [*ref_leaves] + ([rm] if rm is not None and rm.requires_grad else []))
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(torch.ops.brcd.masked_similarity,
                                    (a.requires_grad_(), b.requires_grad_(), soft.requires_grad_()))
    assert torch.autograd.gradcheck(torch.ops.brcd.masked_similarity, (a, b, None))
    assert torch.autograd.gradcheck(lambda x, y: torch.ops.brcd.masked_similarity(x, y, mask), (a, b))


def test_torch_op_opcheck_and_same_tensor_twice() -> None:
    a, _, mask = _dense_inputs(2)
    torch.library.opcheck(torch.ops.brcd.masked_similarity.default, (a, a, mask))
    torch.library.opcheck(torch.ops.brcd.masked_similarity.default, (a, a[:3], None))
    z = a.clone().requires_grad_()
    K.masked_similarity(z, z, mask).sum().backward()
    z_ref = a.clone().requires_grad_()
    reference.masked_similarity(z_ref, z_ref, mask).sum().backward()
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-10, atol=1e-12)


def test_reference_fallback_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, mask = _dense_inputs(3)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    out = K.masked_similarity(a.requires_grad_(), b, mask)
    assert out.grad_fn is not None and "brcd" not in type(out.grad_fn).__name__.lower()
    assert torch.equal(out, reference.masked_similarity(a, b, mask))


def test_brcd_loss_identical_with_op_and_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    from brcd_cli.losses.brcd import BRCDLoss

    g = torch.Generator().manual_seed(4)
    s = torch.tanh(torch.randn(8, 32, generator=g))
    t, t2 = torch.randn(8, 32, generator=g).sign(), torch.randn(8, 32, generator=g).sign()
    clusters = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    centres = torch.randn(3, 32, generator=g).sign()
    masks = (torch.rand(3, 32, generator=g) < 0.6).float()

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        leaf = s.clone().requires_grad_()
        loss = BRCDLoss()(leaf, t, t2, clusters, centres, masks)
        loss.backward()
        return loss.detach(), leaf.grad

    loss_op, grad_op = run()
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    loss_ref, grad_ref = run()
    assert torch.equal(loss_op, loss_ref)
    torch.testing.assert_close(grad_op, grad_ref, rtol=1e-5, atol=1e-7)


def test_numba_backend_runs_with_the_threads_asked_for(monkeypatch):
    numba = pytest.importorskip("numba")
    if K.available_backends()["numba"] != "available":
        pytest.skip("numba backend not available")
    from brcd_cli.kernels import numba_backend

    rng = np.random.default_rng(3)
    db = rng.integers(0, 256, size=(3000, 8), dtype=np.uint8)
    q = db[:5]
    seen: list[int] = []
    kernel = numba_backend._knn_kernel

    def recording(*args):
        seen.append(numba.get_num_threads())
        return kernel(*args)

    monkeypatch.setattr(numba_backend, "_knn_kernel", recording)
    before = numba.get_num_threads()
    want = K.knn(q, db, 7, backend="reference")
    for threads in (1, 2):
        got = K.knn(q, db, 7, backend="numba", threads=threads)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert seen == [1, min(2, numba.config.NUMBA_NUM_THREADS)]
    assert numba.get_num_threads() == before

"""Every available kernel backend must agree exactly with the reference."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch

import brcd_cli.kernels as K
from brcd_cli.kernels import dispatch, reference

BITS = [8, 16, 24, 32, 40, 64, 72, 128, 256]
FAST = [name for name, state in K.available_backends().items() if state == "available" and name != "reference"]


def _native_paths() -> list[str]:
    if K.available_backends()["native"] != "available":
        return []
    import brcd_cli._hamming_cpu as native

    paths = ["portable"]
    if native.cpu_features()["cpu_popcnt"]:
        paths.append("popcnt")
    return paths


# "native:<path>" runs the C++ kernels with one popcount path forced, so the
# baseline x86-64 code is exercised on this CPU too.
BACKEND_CASES = [f"native:{p}" for p in _native_paths()] + [b for b in FAST if b != "native"] + ["reference"]


@pytest.fixture(params=BACKEND_CASES)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    name, _, path = request.param.partition(":")
    if path:
        import brcd_cli._hamming_cpu as native

        native._set_popcount_path(path)
        try:
            yield name
        finally:
            native._set_popcount_path("auto")
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
    assert native.cpu_features()["popcount_path"] in ("popcnt", "portable")


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

    monkeypatch.setitem(dispatch._LOADERS, "native", broken)
    monkeypatch.setattr(dispatch, "_status", {})
    monkeypatch.setattr(dispatch, "_modules", {})
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

"""The packed operations and the dense masked similarity on GPU tensors.

Three backends serve CUDA tensors, in order of preference:

- "cuda": the torch extension brcd_cli._hamming_cuda (built by setup.py when a
  CUDA torch and nvcc are present);
- "cupy": the same kernel source compiled at run time by cupy.RawModule;
- "torch": plain torch (xor + popcount + topk, kernels/torch_reference_gpu.py).

BRCD_GPU_BACKEND=cuda|cupy|torch forces one (auto, the default, takes the first
that loads); they form a backend registry (kernels/_registry.py) like the CPU
and lookup dispatch, whose precondition is a visible CUDA device. The first two run the same kernels with launches planned here
once (``_Plan*`` helpers below), so they cannot drift apart; results are exact
and ordered like the CPU backends: (distance, index) for k-NN and each radius
hit list. Results stay on the GPU as torch tensors.

The dense masked similarity of the BRCD loss is the torch op
``brcd::masked_similarity`` (defined in kernels/masked_op.py, called through
kernels/dense_ops.py, which imports this module and not the other way round).
:func:`register_cuda_kernels` attaches the fused CUDA forward to its CUDA
dispatch key and a forward + backward pair of kernels to its AutogradCUDA key;
without a GPU backend the op's own torch implementation keeps running on CUDA
tensors.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Optional

from . import _checks, gpu_inputs, masked_op, reference
from . import torch_reference_gpu as torch_ref
from ._loading import import_extension
from ._registry import BackendRegistry

if TYPE_CHECKING:
    import torch

ENV_VAR = "BRCD_GPU_BACKEND"
EXTENSION = "brcd_cli._hamming_cuda"
_EXTENSION_API_VERSION = 1
DENSE_BACKENDS: tuple[str, ...] = ("cuda", "cupy")  # the ones with fused kernels for the loss op

WARPS = 8
THREADS = 32 * WARPS
TILE = 16
SHARED_LIMIT = 48 * 1024  # bytes of dynamic shared memory a launch may take without opting in
MAX_GRID_Y = 65535
CANDIDATE_BUDGET = 1 << 30  # bytes of per-chunk k-NN candidates held at once


# --------------------------------------------------------------------------- backends


def _no_device() -> Optional[str]:
    """Why no GPU backend can run: no visible CUDA device (or a torch without CUDA), else None."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return None
    except Exception:  # noqa: BLE001 - a torch without CUDA support
        pass
    return "no CUDA device visible"


def _load_cupy() -> Any:
    from .cupy_backend import CupyLauncher

    launcher = CupyLauncher()
    launcher.compile()  # a source NVRTC refuses makes CuPy unavailable, not the first search fail
    return launcher


def _load_torch() -> Any:
    import torch  # noqa: F401 - the torch backend needs nothing else

    return torch_ref


REGISTRY = BackendRegistry(
    "GPU",
    ENV_VAR,
    {"cuda": lambda: import_extension(EXTENSION, _EXTENSION_API_VERSION), "cupy": _load_cupy, "torch": _load_torch},
    precondition=_no_device,
)
GPU_BACKENDS: tuple[str, ...] = REGISTRY.names


def available_gpu_backends() -> dict[str, str]:
    """GPU backend -> "available" or why it cannot run, in order of preference.

    Without a visible CUDA device nothing can run, whatever is installed; each
    entry then says so first and whether the backend itself loaded, so `brcd
    info` can tell the two apart.
    """
    return REGISTRY.available()


def active_gpu_backend() -> Optional[str]:
    """The backend GPU tensors would use now (honours BRCD_GPU_BACKEND), or None without a CUDA device."""
    return REGISTRY.active()


# --------------------------------------------------------------------------- launch planning


def _knn_shared_bytes(qt: int, words: int, n_bits: int) -> int:
    """Dynamic shared memory of brcd_knn_chunk_w*: query tile + per-warp histograms and counters."""
    return 8 * qt * words + 4 * (WARPS * qt * (n_bits + 1) + 2 * WARPS * qt + qt)


def _merge_shared_bytes(n_bits: int) -> int:
    return _knn_shared_bytes(1, 0, n_bits)


def _query_tile(n_q: int, words: int, n_bits: int, most: int = 8) -> int:
    """Queries per block: up to ``most``, as many as the shared memory allows."""
    qt = max(1, min(most, n_q))
    while qt > 1 and _knn_shared_bytes(qt, words, n_bits) > SHARED_LIMIT:
        qt -= 1
    return qt


def plan_knn(n_q: int, n_db: int, k: int, words: int, n_bits: int) -> dict[str, int]:
    """Query tile, chunking of the database and query batch of one k-NN call.

    Each block takes qt queries and one chunk of the database. Enough chunks to
    give the GPU a few thousand blocks, but no more than 1024 (each adds k
    candidates per query to merge), and never shorter than k, so every full
    chunk yields exactly k candidates.
    """
    qt = _query_tile(n_q, words, n_bits)
    if _knn_shared_bytes(qt, words, n_bits) > SHARED_LIMIT:
        raise ValueError(f"{n_bits}-bit codes need more shared memory than one block may take")
    q_tiles = -(-n_q // qt)
    n_chunks = max(1, min(-(-n_db // 2048), -(-4096 // q_tiles), 1024))
    chunk = max(-(-n_db // n_chunks), k)
    n_chunks = -(-n_db // chunk)
    per_query = n_chunks * k * 12 if n_chunks > 1 else 0
    batch = n_q if per_query == 0 else max(qt, min(n_q, CANDIDATE_BUDGET // per_query // qt * qt))
    return {"qt": qt, "chunk": chunk, "n_chunks": n_chunks, "batch": batch}


def _knn_launch(launcher: Any, q: "torch.Tensor", db: "torch.Tensor", k: int, n_bits: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """k-NN with the chunk + merge kernels on word rows q (Q, W) and db (N, W)."""
    import torch

    n_q, words = q.shape
    n_db = db.shape[0]
    k_out = min(k, n_db)
    out_d = torch.empty((n_q, k_out), dtype=torch.int32, device=q.device)
    out_i = torch.empty((n_q, k_out), dtype=torch.int64, device=q.device)
    if n_q == 0 or k_out == 0:
        return out_d, out_i
    plan = plan_knn(n_q, n_db, k, words, n_bits)
    qt, chunk, n_chunks = plan["qt"], plan["chunk"], plan["n_chunks"]
    smem = _knn_shared_bytes(qt, words, n_bits)
    for s in range(0, n_q, plan["batch"]):
        qb = q[s : s + plan["batch"]]
        nb = qb.shape[0]
        grid_x = -(-nb // qt)
        if n_chunks == 1:  # one chunk: its list is the answer
            launcher.knn_chunk(grid_x, 1, smem, words, qb, db, nb, n_db, chunk, k, n_bits, qt,
                               out_d[s : s + nb], out_i[s : s + nb], k_out, k_out)
            continue
        cand_d = torch.empty((nb, n_chunks * k), dtype=torch.int32, device=q.device)
        cand_i = torch.empty((nb, n_chunks * k), dtype=torch.int64, device=q.device)
        launcher.knn_chunk(grid_x, n_chunks, smem, words, qb, db, nb, n_db, chunk, k, n_bits, qt,
                           cand_d, cand_i, k, n_chunks * k)
        last_len = min(k, n_db - (n_chunks - 1) * chunk)
        launcher.knn_merge(nb, _merge_shared_bytes(n_bits), cand_d, cand_i, n_chunks * k, k, last_len, n_chunks,
                           k_out, n_bits, out_d[s : s + nb], out_i[s : s + nb])
    return out_d, out_i


def _scan_plan(n_q: int, n_db: int, words: int, shared_per_query: int) -> tuple[int, int, int]:
    """(qt, chunk, n_chunks) for the radius kernels: 8 queries a block, chunks of 64K codes."""
    qt = max(1, min(8, n_q, SHARED_LIMIT // shared_per_query))
    chunk = max(1 << 16, -(-n_db // MAX_GRID_Y))
    return qt, chunk, max(1, -(-n_db // chunk))


def _sort_segments(lims: "torch.Tensor", d: "torch.Tensor", i: "torch.Tensor", n_db: int, n_bits: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """Order each query's hits by (distance, index), keeping the segments in place."""
    import torch

    if d.numel() == 0:
        return d, i
    seg = torch.repeat_interleave(torch.arange(lims.numel() - 1, device=d.device), lims.diff())
    if (lims.numel() - 1) * (n_bits + 1) * max(n_db, 1) < (1 << 62):
        order = torch.argsort((seg * (n_bits + 1) + d.to(torch.int64)) * n_db + i)
    else:  # keys would overflow: three stable sorts, least significant first
        order = torch.argsort(i, stable=True)
        order = order[torch.argsort(d[order], stable=True)]
        order = order[torch.argsort(seg[order], stable=True)]
    return d[order], i[order]


def _radius_launch(launcher: Any, q: "torch.Tensor", db: "torch.Tensor", radius: int, n_bits: int) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    import torch

    n_q, words = q.shape
    n_db = db.shape[0]
    dev = q.device
    lims = torch.zeros(n_q + 1, dtype=torch.int64, device=dev)
    if n_q == 0 or n_db == 0:
        return lims, torch.empty(0, dtype=torch.int32, device=dev), torch.empty(0, dtype=torch.int64, device=dev)
    qt, chunk, n_chunks = _scan_plan(n_q, n_db, words, 8 * words)
    smem = 8 * qt * words
    grid_x = -(-n_q // qt)
    counts = torch.zeros(n_q, dtype=torch.int64, device=dev)
    launcher.radius_count(grid_x, n_chunks, smem, q, db, n_q, n_db, words, chunk, radius, qt, counts)
    lims[1:] = torch.cumsum(counts, dim=0)
    total = int(lims[-1])
    out_d = torch.empty(total, dtype=torch.int32, device=dev)
    out_i = torch.empty(total, dtype=torch.int64, device=dev)
    if total:
        cursor = torch.zeros(n_q, dtype=torch.int64, device=dev)
        launcher.radius_emit(grid_x, n_chunks, smem, q, db, n_q, n_db, words, chunk, radius, qt, cursor, lims,
                             out_d, out_i)
    out_d, out_i = _sort_segments(lims, out_d, out_i, n_db, n_bits)
    return lims, out_d, out_i


def _pairwise_launch(launcher: Any, q: "torch.Tensor", db: "torch.Tensor", masks: "Optional[torch.Tensor]") -> "torch.Tensor":
    import torch

    n_q, words = q.shape
    n_db = db.shape[0]
    dtype = torch.int32 if masks is None else torch.float32
    out = torch.empty((n_q, n_db), dtype=dtype, device=q.device)
    if n_q == 0 or n_db == 0:
        return out
    qt = max(1, min(8, n_q))
    smem = 16 * qt * words + 4 * qt
    step = qt * MAX_GRID_Y
    for s in range(0, n_q, step):
        qb = q[s : s + step]
        mb = None if masks is None else (masks if masks.shape[0] == 1 else masks[s : s + step])
        mask_rows = 0 if mb is None else mb.shape[0]
        ob = out[s : s + step]
        launcher.pairwise(-(-n_db // THREADS), -(-qb.shape[0] // qt), smem, qb, db, mb, mask_rows, qb.shape[0],
                          n_db, words, qt, ob if masks is None else None, ob if masks is not None else None)
    return out


# --------------------------------------------------------------------------- packed operations


def _prepared(queries: Any, database: Any) -> "tuple[torch.Tensor, torch.Tensor, int]":
    q, db = gpu_inputs.packed_pair(queries, database)
    return q, db, 8 * q.shape[1]


def knn(queries: Any, database: Any, k: int, *, backend: Optional[str] = None) -> "tuple[torch.Tensor, torch.Tensor]":
    """Exact k nearest codes of CUDA packed codes: (int32 (q, k'), int64 (q, k')) on the device, k' = min(k, n).

    Sorted by (distance, database index), like the CPU backends. Codes longer
    than 1024 bits go to the torch backend (the kernel is compiled for up to 16 words).
    """
    q, db, n_bits = _prepared(queries, database)
    kk = _checks.check_k(k)
    name, launcher = REGISTRY.select(backend)
    words = gpu_inputs.kernel_words(q.shape[1])
    if name == "torch" or words is None:
        w = gpu_inputs.min_words(q.shape[1])
        return torch_ref.knn(gpu_inputs.to_words(q, w), gpu_inputs.to_words(db, w), kk)
    return _knn_launch(launcher, gpu_inputs.to_words(q, words), gpu_inputs.to_words(db, words), kk, n_bits)


def radius_search(
    queries: Any, database: Any, radius: float, *, backend: Optional[str] = None
) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """Every code within distance <= radius, as CSR tensors (lims int64, distances int32, indices int64).

    The hits of query i are [lims[i], lims[i+1]), sorted by (distance, index).
    """
    q, db, n_bits = _prepared(queries, database)
    r = _checks.check_radius(radius, n_bits)
    name, launcher = REGISTRY.select(backend)
    w = gpu_inputs.min_words(q.shape[1])
    qw, dbw = gpu_inputs.to_words(q, w), gpu_inputs.to_words(db, w)
    if name == "torch":
        return torch_ref.radius_search(qw, dbw, r)
    return _radius_launch(launcher, qw, dbw, r, n_bits)


def hamming_distances(queries: Any, database: Any, *, backend: Optional[str] = None) -> "torch.Tensor":
    """All-pairs Hamming distances of CUDA packed codes, int32 (q, n) on the device."""
    q, db, _ = _prepared(queries, database)
    name, launcher = REGISTRY.select(backend)
    w = gpu_inputs.min_words(q.shape[1])
    qw, dbw = gpu_inputs.to_words(q, w), gpu_inputs.to_words(db, w)
    if name == "torch":
        return torch_ref.hamming_distances(qw, dbw)
    return _pairwise_launch(launcher, qw, dbw, None)


def masked_similarity_packed(queries: Any, database: Any, masks: Any, *, backend: Optional[str] = None) -> "torch.Tensor":
    """cos_M of CUDA packed codes, float32 (q, n); masks (n_bytes,), (1, n_bytes) or (q, n_bytes)."""
    q, db, _ = _prepared(queries, database)
    m = gpu_inputs.packed_masks(masks, q.shape[0], q.shape[1], q.device)
    name, launcher = REGISTRY.select(backend)
    w = gpu_inputs.min_words(q.shape[1])
    qw, dbw, mw = gpu_inputs.to_words(q, w), gpu_inputs.to_words(db, w), gpu_inputs.to_words(m, w)
    if name == "torch":
        return torch_ref.masked_similarity_packed(qw, dbw, mw)
    return _pairwise_launch(launcher, qw, dbw, mw)


# --------------------------------------------------------------------------- dense masked similarity


def _dense_supported(a: "torch.Tensor", b: "torch.Tensor", mask: "Optional[torch.Tensor]") -> bool:
    """The fused kernels take float32/float64 and grids of at most 65535 row tiles."""
    import torch

    tensors = [a, b] + ([mask] if mask is not None else [])
    return (
        a.dtype in (torch.float32, torch.float64)
        and all(t.dtype == a.dtype and t.is_cuda and t.device == a.device for t in tensors)
        and -(-max(a.shape[0], b.shape[0]) // TILE) <= MAX_GRID_Y
    )


def masked_similarity_forward(launcher: Any, a: "torch.Tensor", b: "torch.Tensor", mask: "Optional[torch.Tensor]") -> "torch.Tensor":
    """out[i, j] = sum_l M_il a_il b_jl / w_i (0 where w_i = 0) with the fused kernel; inputs as prepared by the op."""
    import torch

    a, b = a.contiguous(), b.contiguous()
    mask = None if mask is None else mask.contiguous()
    n, length = a.shape
    m = b.shape[0]
    out = torch.empty((n, m), dtype=a.dtype, device=a.device)
    if n and m:
        stride = 0 if mask is None or mask.ndim == 1 else length
        launcher.msim_forward(-(-m // TILE), -(-n // TILE), a, b, mask, stride, n, m, length, out)
    return out


def masked_similarity_backward(
    launcher: Any, grad: "torch.Tensor", a: "torch.Tensor", b: "torch.Tensor", mask: "Optional[torch.Tensor]",
    needs: tuple[bool, bool, bool], out: "Optional[torch.Tensor]" = None,
) -> "tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]":
    """Gradients for (a, b, mask) with two fused kernels (row side, then column side).

    ``out`` is the forward result; it is needed only for the mask's gradient
    (recomputed when not given): dM_il = (a_il (G b)_il - sum_j G_ij out_ij) / w_i.
    """
    import torch

    grad, a, b = grad.contiguous(), a.contiguous(), b.contiguous()
    mask = None if mask is None else mask.contiguous()
    n, length = a.shape
    m = b.shape[0]
    if not (n and m and length):  # nothing to launch: every gradient is zero
        zeros = [torch.zeros_like(t) if t is not None and need else None for t, need in zip((a, b, mask), needs)]
        return zeros[0], zeros[1], zeros[2]
    stride = 0 if mask is None or mask.ndim == 1 else length
    want_mask = mask is not None and needs[2]
    grad_a = torch.empty((n, length), dtype=a.dtype, device=a.device)
    grad_rows_mask = torch.empty((n, length), dtype=a.dtype, device=a.device) if want_mask else None
    inv_w = torch.empty(n, dtype=a.dtype, device=a.device)
    launcher.msim_backward_rows(-(-length // TILE), -(-n // TILE), grad, a, b, mask, stride, n, m, length, grad_a,
                                grad_rows_mask, inv_w)
    grad_b = None
    if needs[1]:
        grad_b = torch.empty((m, length), dtype=a.dtype, device=a.device)
        launcher.msim_backward_cols(-(-length // TILE), -(-m // TILE), grad, a, mask, stride, inv_w, n, m, length,
                                    grad_b)
    grad_mask = None
    if grad_rows_mask is not None:
        if out is None:
            out = masked_similarity_forward(launcher, a, b, mask)
        grad_rows_mask -= ((grad * out).sum(dim=1) * inv_w)[:, None]
        grad_mask = grad_rows_mask.sum(dim=0) if mask.ndim == 1 else grad_rows_mask
    return (grad_a if needs[0] else None), grad_b, grad_mask


def _dense_launcher() -> Optional[tuple[str, Any]]:
    """The backend for the fused dense kernels, or None where the op's torch implementation runs.

    The GPU registry decides, as for the packed operations: BRCD_GPU_BACKEND=cuda
    or cupy forces that one (an error when it cannot run), torch asks for the
    torch implementation, auto takes the first of DENSE_BACKENDS that loads.
    """
    requested = REGISTRY.requested()
    if requested is None:
        return REGISTRY.first_available(DENSE_BACKENDS)
    return REGISTRY.select(requested) if requested in DENSE_BACKENDS else None


_registration_lock = threading.Lock()
_registration: Optional[str] = None


def register_cuda_kernels() -> str:
    """Attach the fused kernels to brcd::masked_similarity for CUDA tensors; say what happened.

    Registers, once per process: the forward for the op's CUDA dispatch key
    (calls in inference mode) and a forward + backward pair for its
    AutogradCUDA key (every differentiable call on CUDA tensors). Inputs the
    kernels do not take (half precision, huge batches) and BRCD_GPU_BACKEND=torch
    go to the op's torch implementation. Returns "registered (<backend>)" or why not.
    """
    global _registration
    if _registration is not None:
        return _registration
    with _registration_lock:
        if _registration is None:
            _registration = _register()
    return _registration


def _register() -> str:
    op = masked_op.registered_op()
    if op is None:
        return f"not registered: the op {masked_op.OP_NAME} is unavailable ({masked_op.op_status()})"
    loaded = REGISTRY.first_available(DENSE_BACKENDS)
    if loaded is None:
        reasons = "; ".join(REGISTRY.status(name) for name in DENSE_BACKENDS)
        return f"not registered: no GPU kernel backend ({reasons})"

    import torch

    class _FusedMaskedSimilarity(torch.autograd.Function):
        """The op on CUDA tensors with the fused forward and backward kernels."""

        @staticmethod
        def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor], launcher: Any) -> torch.Tensor:
            ctx.launcher = launcher
            ctx.has_mask = mask is not None
            out = masked_similarity_forward(launcher, a, b, mask)
            ctx.save_for_backward(a, b, mask if mask is not None else a.new_empty(0), out)
            return out

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
            a, b, mask, out = ctx.saved_tensors
            needs = tuple(bool(x) for x in ctx.needs_input_grad[:3])
            grads = masked_similarity_backward(ctx.launcher, grad, a, b, mask if ctx.has_mask else None, needs, out)
            return (*grads, None)

    def autograd_cuda(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        chosen = _dense_launcher()
        if chosen is None or not _dense_supported(a, b, mask):
            return reference.masked_similarity_forward(a, b, mask)
        return _FusedMaskedSimilarity.apply(a, b, mask, chosen[1])

    def forward_cuda(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        chosen = _dense_launcher()
        if chosen is None or not _dense_supported(a, b, mask):
            return reference.masked_similarity_forward(a, b, mask)
        return masked_similarity_forward(chosen[1], a, b, mask)

    namespace, name = masked_op.OP_NAME.split("::")
    torch.library.register_kernel(masked_op.OP_NAME, "cuda", forward_cuda)
    library = torch.library.Library(namespace, "IMPL")
    library.impl(name, autograd_cuda, "AutogradCUDA")
    _LIBRARIES.append(library)  # a Library unregisters its kernels when collected
    return f"registered ({loaded[0]})"


_LIBRARIES: list[Any] = []

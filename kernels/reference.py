"""Plain numpy/torch versions of every kernel: the ground truth for the tests.

These are written to be obviously correct rather than fast (full stable sorts,
a byte lookup table for popcount), so a fast backend that disagrees with them is
the one that is wrong. They are also the last-resort backend when neither the
native extension nor numba can be used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from . import _checks

if TYPE_CHECKING:  # torch is imported lazily so that `import brcd_cli.kernels` stays light
    import torch

# Number of set bits of every byte value.
_POPCOUNT8 = np.array([bin(v).count("1") for v in range(256)], dtype=np.int32)

# Upper bound on the (queries x database x bytes) block materialised at once.
_BLOCK_ELEMENTS = 1 << 24


def pack_codes(codes: Any) -> np.ndarray:
    """Pack (n, L) codes into the (n, L/8) uint8 form all packed kernels take.

    Any sign convention works (+-1, {0, 1}, bool, float scores): a bit is 1 where
    the value is > 0, so thresholded network outputs can be packed directly.
    """
    x = _checks.to_numpy(codes, "codes")
    if x.ndim != 2:
        raise ValueError(f"codes must be 2-D (n_codes, n_bits), got shape {tuple(x.shape)}")
    if x.shape[1] % 8 != 0:
        raise ValueError(
            f"code length must be a multiple of 8 bits to pack into bytes, got {x.shape[1]} bits"
        )
    return np.packbits(x > 0, axis=1, bitorder="little")


def unpack_codes(packed: Any, bits: Optional[int] = None) -> np.ndarray:
    """Undo pack_codes, giving int8 +-1 codes ready to compare with model outputs."""
    p = _checks.packed_codes(packed, "packed")
    total = 8 * p.shape[1]
    if bits is None:
        bits = total
    if not 0 <= bits <= total:
        raise ValueError(f"bits must be between 0 and {total} for codes of {p.shape[1]} bytes, got {bits}")
    b = np.unpackbits(p, axis=1, count=bits, bitorder="little").astype(np.int8)
    return (2 * b - 1).astype(np.int8)


def _block_rows(n_db: int, n_bytes: int) -> int:
    """Queries per block, so the broadcast xor never holds more than _BLOCK_ELEMENTS bytes."""
    return max(1, _BLOCK_ELEMENTS // max(1, n_db * n_bytes))


def hamming_distances(queries: Any, database: Any) -> np.ndarray:
    """All-pairs Hamming distances, int32 (q, n)."""
    q, db = _checks.packed_pair(queries, database)
    out = np.empty((q.shape[0], db.shape[0]), dtype=np.int32)
    step = _block_rows(db.shape[0], q.shape[1])
    for s in range(0, q.shape[0], step):
        x = np.bitwise_xor(q[s : s + step, None, :], db[None, :, :])
        out[s : s + step] = _POPCOUNT8[x].sum(axis=2, dtype=np.int32)
    return out


def knn(queries: Any, database: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest codes per query, ties broken by database index (stable sort)."""
    kk = _checks.check_k(k)
    d = hamming_distances(queries, database)
    kk = min(kk, d.shape[1])
    order = np.argsort(d, axis=1, kind="stable")[:, :kk].astype(np.int64)
    return np.take_along_axis(d, order, axis=1).astype(np.int32), order


def radius_search(queries: Any, database: Any, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All codes within Hamming distance <= radius, as CSR (lims, distances, indices)."""
    q, db = _checks.packed_pair(queries, database)
    r = _checks.check_radius(radius, 8 * q.shape[1])
    d = hamming_distances(q, db)
    lims = np.zeros(q.shape[0] + 1, dtype=np.int64)
    dists: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    for i in range(q.shape[0]):
        hit = np.nonzero(d[i] <= r)[0]
        order = hit[np.argsort(d[i, hit], kind="stable")]
        dists.append(d[i, order])
        ids.append(order.astype(np.int64))
        lims[i + 1] = lims[i] + order.size
    if dists:
        return lims, np.concatenate(dists).astype(np.int32), np.concatenate(ids).astype(np.int64)
    return lims, np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)


def masked_similarity_packed(queries: Any, database: Any, masks: Any) -> np.ndarray:
    """Cosine similarity of +-1 codes restricted to the bits set in a mask, float32 (q, n).

    Rows whose mask is empty give 0.0 rather than NaN, so a query that masks out
    every bit ranks nothing above anything else.
    """
    q, db = _checks.packed_pair(queries, database)
    m = _checks.packed_masks(masks, q.shape[0], q.shape[1])
    w = _POPCOUNT8[m].sum(axis=1).astype(np.float64)  # (1 or q,)
    out = np.empty((q.shape[0], db.shape[0]), dtype=np.float32)
    step = _block_rows(db.shape[0], q.shape[1])
    for s in range(0, q.shape[0], step):
        ms = m if m.shape[0] == 1 else m[s : s + step]
        ws = w if w.shape[0] == 1 else w[s : s + step]
        x = np.bitwise_and(np.bitwise_xor(q[s : s + step, None, :], db[None, :, :]), ms[:, None, :])
        mism = _POPCOUNT8[x].sum(axis=2).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            sim = np.where(ws[:, None] > 0, (ws[:, None] - 2.0 * mism) / ws[:, None], 0.0)
        out[s : s + step] = sim
    return out


def prepare_masked_inputs(
    a: "torch.Tensor", b: "torch.Tensor", mask: "Optional[torch.Tensor]" = None
) -> "tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]":
    """Check and promote the inputs of masked_similarity: (a, b, mask) in one floating dtype.

    The mask comes back as (L,) (shared by all rows of a), (n, L) (one per row)
    or None, on a's device. Shared by the reference and the registered torch op
    so that both accept and reject exactly the same inputs.
    """
    import torch

    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError("masked_similarity takes torch tensors a (n, L) and b (m, L)")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"a and b must be 2-D (rows, L), got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} bits per row but b has {b.shape[1]}; they must match")
    dtype = torch.promote_types(a.dtype, b.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    a = a.to(dtype)
    b = b.to(dtype)
    n, length = a.shape
    if mask is None:
        return a, b, None
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    mask = mask.to(device=a.device, dtype=dtype)
    if not (mask.ndim == 1 and mask.shape[0] == length) and not (mask.ndim == 2 and mask.shape == (n, length)):
        raise ValueError(
            f"mask must have shape ({length},) (shared) or ({n}, {length}) (one per row of a), "
            f"got {tuple(mask.shape)}"
        )
    return a, b, mask


def masked_similarity_forward(
    a: "torch.Tensor", b: "torch.Tensor", mask: "Optional[torch.Tensor]"
) -> "torch.Tensor":
    """The arithmetic of masked_similarity on prepared inputs (see prepare_masked_inputs)."""
    import torch

    n, length = a.shape
    if mask is None:
        num = a @ b.T
        w = torch.full((n,), float(length), dtype=a.dtype, device=a.device)
    else:
        w = mask.sum().expand(n) if mask.ndim == 1 else mask.sum(dim=1)
        num = (a * mask) @ b.T
    nonzero = w != 0
    safe_w = torch.where(nonzero, w, torch.ones_like(w))
    return torch.where(nonzero[:, None], num / safe_w[:, None], torch.zeros_like(num))


def masked_similarity(a: "torch.Tensor", b: "torch.Tensor", mask: "Optional[torch.Tensor]" = None) -> "torch.Tensor":
    """Differentiable masked cosine similarity of dense (relaxed) codes, (n, m).

    This is the training-time twin of masked_similarity_packed: with +-1 inputs it
    gives the same numbers, and with tanh-relaxed codes it carries gradients to a,
    b and a float mask. Rows of a whose mask is empty give 0 (and zero gradient).
    Gradients come from torch autograd through the plain tensor operations.
    """
    return masked_similarity_forward(*prepare_masked_inputs(a, b, mask))

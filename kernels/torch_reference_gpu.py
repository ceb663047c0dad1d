"""The packed operations in plain torch (xor + popcount + topk): the GPU fallback and benchmark peer.

This is what a user would write without brcd's kernels, and it runs on any
device torch supports: xor the 64-bit words, count bits with the classic
shift-and-mask popcount (torch has no popcount op), then rank. Ties are broken
by database index exactly as the other backends do, by ranking the unique key
distance * n + index instead of the distance alone.

Work is done in blocks of queries so that the (queries x database) temporaries
stay under a fixed budget.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Bytes of one (block x database) int64 temporary; a few live at once.
BLOCK_BYTES = 1 << 28

_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F


def popcount64(x: "torch.Tensor") -> "torch.Tensor":
    """Set bits of every int64 element (as an unsigned 64-bit pattern), int64.

    Shifts are arithmetic on int64, so every shifted term is masked before it
    is added; the masks clear the sign-extended bits.
    """
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    x = x + (x >> 8)
    x = x + (x >> 16)
    x = x + (x >> 32)
    return x & 0x7F


def _block_rows(n_db: int, words: int) -> int:
    return max(1, BLOCK_BYTES // max(1, 8 * n_db * words))


def _distances_block(q: "torch.Tensor", db: "torch.Tensor", mask: "torch.Tensor | None" = None) -> "torch.Tensor":
    """(b, words) x (n, words) -> (b, n) int64 distances, optionally counting only mask bits."""
    x = q[:, None, :] ^ db[None, :, :]
    if mask is not None:
        x = x & mask[:, None, :]
    return popcount64(x).sum(dim=2)


def hamming_distances(q: "torch.Tensor", db: "torch.Tensor") -> "torch.Tensor":
    """All-pairs distances of word rows, int32 (q, n)."""
    import torch

    out = torch.empty((q.shape[0], db.shape[0]), dtype=torch.int32, device=q.device)
    step = _block_rows(db.shape[0], q.shape[1])
    for s in range(0, q.shape[0], step):
        out[s : s + step] = _distances_block(q[s : s + step], db).to(torch.int32)
    return out


def knn(q: "torch.Tensor", db: "torch.Tensor", k: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """The k nearest rows by (distance, index): (int32 (q, k'), int64 (q, k')), k' = min(k, n)."""
    import torch

    n = db.shape[0]
    kk = min(k, n)
    out_d = torch.empty((q.shape[0], kk), dtype=torch.int32, device=q.device)
    out_i = torch.empty((q.shape[0], kk), dtype=torch.int64, device=q.device)
    if kk == 0:
        return out_d, out_i
    index = torch.arange(n, dtype=torch.int64, device=q.device)
    step = _block_rows(n, q.shape[1])
    for s in range(0, q.shape[0], step):
        key = _distances_block(q[s : s + step], db) * n + index
        best = torch.topk(key, kk, dim=1, largest=False, sorted=True).values
        out_d[s : s + step] = torch.div(best, n, rounding_mode="floor").to(torch.int32)
        out_i[s : s + step] = best % n
    return out_d, out_i


def radius_search(q: "torch.Tensor", db: "torch.Tensor", radius: int) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """Rows within distance <= radius as CSR (lims int64 (q+1,), distances int32, indices int64)."""
    import torch

    n = db.shape[0]
    lims = torch.zeros(q.shape[0] + 1, dtype=torch.int64, device=q.device)
    dists, ids = [], []
    index = torch.arange(n, dtype=torch.int64, device=q.device)
    step = _block_rows(n, q.shape[1])
    for s in range(0, q.shape[0], step):
        d = _distances_block(q[s : s + step], db)
        hit = d <= radius
        lims[s + 1 : s + 1 + d.shape[0]] = hit.sum(dim=1)
        key = torch.where(hit, d * n + index, torch.full_like(d, torch.iinfo(torch.int64).max))
        key = torch.sort(key, dim=1).values
        key = key[key != torch.iinfo(torch.int64).max]  # row-major: query by query, each sorted
        dists.append(torch.div(key, n, rounding_mode="floor").to(torch.int32))
        ids.append(key % n if n else key)
    lims = torch.cumsum(lims, dim=0)
    if not dists:
        return lims, torch.empty(0, dtype=torch.int32, device=q.device), torch.empty(0, dtype=torch.int64, device=q.device)
    return lims, torch.cat(dists), torch.cat(ids)


def masked_similarity_packed(q: "torch.Tensor", db: "torch.Tensor", masks: "torch.Tensor") -> "torch.Tensor":
    """(w - 2 popcount((a ^ b) & M)) / w, float32 (q, n); 0 where w = 0. masks: (1 or q, words)."""
    import torch

    w = popcount64(masks).sum(dim=1).to(torch.float64)  # (1 or q,)
    out = torch.empty((q.shape[0], db.shape[0]), dtype=torch.float32, device=q.device)
    step = _block_rows(db.shape[0], q.shape[1])
    for s in range(0, q.shape[0], step):
        qs = q[s : s + step]
        ms = masks if masks.shape[0] == 1 else masks[s : s + step]
        ws = w if w.shape[0] == 1 else w[s : s + step]
        mism = _distances_block(qs, db, ms.expand(qs.shape[0], -1)).to(torch.float64)
        safe = torch.where(ws > 0, ws, torch.ones_like(ws))[:, None]
        sim = torch.where(ws[:, None] > 0, (ws[:, None] - 2.0 * mism) / safe, torch.zeros_like(mism))
        out[s : s + step] = sim.to(torch.float32)
    return out

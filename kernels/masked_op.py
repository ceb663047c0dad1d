"""The dense masked similarity of the BRCD loss as a registered torch op, ``brcd::masked_similarity``.

The loss compares every pair of a (2B, L) batch of relaxed codes under each
row's bit mask. As a torch op (torch.library.custom_op) that computation is a
single node: autograd saves only its inputs and output instead of every
intermediate, the backward is a closed form of three matrix products, and
torch.compile sees an opaque op with a fake (meta) implementation instead of
tracing the masking logic. The forward runs the reference arithmetic
(reference.masked_similarity_forward) on whatever device the tensors live on,
so loss values are bit-identical to the reference.

This module only defines the op; kernels/dense_ops.py decides when it runs
and kernels/cuda.py attaches fused CUDA kernels to it. Both import it, and it
imports neither, so the dependencies go one way.

Gradients, with w_i = sum_l M_il, G' = G / w (rows with w_i = 0 are zero) and
out = S the forward result:
    dA = (G' B) * M,   dB = G'^T (A * M),   dM_il = A_il (G' B)_il - sum_j G'_ij S_ij
(summed over rows for a mask shared by all rows).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import reference
from ._loading import load_once

if TYPE_CHECKING:
    import torch

OP_NAME = "brcd::masked_similarity"

_lock = threading.Lock()
_loaded: dict[str, Callable[..., Any]] = {}
_status: dict[str, str] = {}


def _register() -> Callable[..., Any]:
    """Define the op with its implementation, fake implementation and autograd formula."""
    import torch

    # An explicit schema: this module postpones annotations, so they cannot be inferred.
    @torch.library.custom_op(OP_NAME, mutates_args=(), schema="(Tensor a, Tensor b, Tensor? mask) -> Tensor")
    def masked_similarity_op(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        return reference.masked_similarity_forward(a, b, mask)

    @masked_similarity_op.register_fake
    def _(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        return a.new_empty((a.shape[0], b.shape[0]))

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        a, b, mask = inputs
        ctx.has_mask = mask is not None
        ctx.save_for_backward(a, b, mask if mask is not None else a.new_empty(0), output)

    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        a, b, mask, out = ctx.saved_tensors
        n, length = a.shape
        if ctx.has_mask:
            w = mask.sum().expand(n) if mask.ndim == 1 else mask.sum(dim=1)
        else:
            w = torch.full((n,), float(length), dtype=a.dtype, device=a.device)
        nonzero = w != 0
        safe_w = torch.where(nonzero, w, torch.ones_like(w))
        g = torch.where(nonzero[:, None], grad / safe_w[:, None], torch.zeros_like(grad))
        gb = g @ b  # (n, L)
        grad_a = grad_b = grad_mask = None
        if ctx.needs_input_grad[0]:
            grad_a = gb * mask if ctx.has_mask else gb
        if ctx.needs_input_grad[1]:
            grad_b = g.T @ (a * mask if ctx.has_mask else a)
        if ctx.has_mask and ctx.needs_input_grad[2]:
            per_row = a * gb - (g * out).sum(dim=1, keepdim=True)
            grad_mask = per_row.sum(dim=0) if mask.ndim == 1 else per_row
        return grad_a, grad_b, grad_mask

    masked_similarity_op.register_autograd(backward, setup_context=setup_context)
    return masked_similarity_op


def registered_op() -> Optional[Callable[..., Any]]:
    """The registered op (registering it on first use), or None when this torch cannot have it."""
    load_once("op", _register, _loaded, _status, _lock)
    return _loaded.get("op")


def op_status() -> str:
    """"available", or why the op could not be registered (the reference runs instead)."""
    registered_op()
    return _status["op"]

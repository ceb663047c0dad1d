"""The dense masked similarity of the BRCD loss as a registered torch op, ``brcd::masked_similarity``.

The loss compares every pair of a (2B, L) batch of relaxed codes under each
row's bit mask. As a torch op (torch.library.custom_op) that computation is a
single node: autograd saves only its inputs and output instead of every
intermediate, the backward is a closed form of three matrix products, and
torch.compile sees an opaque op with a fake (meta) implementation instead of
tracing the masking logic. The forward runs the reference arithmetic
(reference.masked_similarity_forward) on whatever device the tensors live on,
so loss values are bit-identical to the reference.

The reference (plain autograd) is the fallback: when this torch has no
torch.library.custom_op, when registration fails, or when
BRCD_KERNEL_BACKEND=reference asks for it.

Gradients, with w_i = sum_l M_il, G' = G / w (rows with w_i = 0 are zero) and
out = S the forward result:
    dA = (G' B) * M,   dB = G'^T (A * M),   dM_il = A_il (G' B)_il - sum_j G'_ij S_ij
(summed over rows for a mask shared by all rows).
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import reference
from ._loading import load_once
from .dispatch import ENV_VAR

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


def masked_similarity(a: "torch.Tensor", b: "torch.Tensor", mask: "Optional[torch.Tensor]" = None) -> "torch.Tensor":
    """Differentiable masked cosine similarity of dense (relaxed) codes, (n, m).

    cos_M(a_i, b_j) = sum_l M_il a_il b_jl / sum_l M_il, 0 for rows whose mask
    is empty (with zero gradient). mask is None (all ones), (L,) shared by all
    rows of a, or (n, L) one per row; it may be a float (soft) mask and then
    receives gradients too. This is the training-time twin of
    masked_similarity_packed: with +-1 inputs it gives the same numbers.
    Runs the brcd::masked_similarity op, or the reference where that is
    unavailable or BRCD_KERNEL_BACKEND=reference.
    """
    a, b, mask = reference.prepare_masked_inputs(a, b, mask)
    op = None if os.environ.get(ENV_VAR, "").strip().lower() == "reference" else registered_op()
    if op is None:
        return reference.masked_similarity_forward(a, b, mask)
    if a.is_cuda:  # attach the fused CUDA kernels once; outside registered_op(), whose lock they take too
        from .cuda import register_cuda_kernels

        register_cuda_kernels()
    return op(a, b, mask)

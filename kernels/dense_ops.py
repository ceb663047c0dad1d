"""The dense masked similarity of the BRCD loss: the registered op where it can run, else the reference.

The op itself, ``brcd::masked_similarity`` (its implementation, fake
implementation and closed-form backward), is defined in kernels/masked_op.py.
This is the function the loss calls. The reference (plain autograd) is the
fallback: when this torch has no torch.library.custom_op, when registration
fails, or when BRCD_KERNEL_BACKEND=reference asks for it. On the first call
with CUDA tensors the fused CUDA kernels are attached to the op
(kernels/cuda.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from . import cuda, dispatch, masked_op, reference

if TYPE_CHECKING:
    import torch


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
    op = None if dispatch.REGISTRY.requested() == "reference" else masked_op.registered_op()
    if op is None:
        return reference.masked_similarity_forward(a, b, mask)
    if a.is_cuda:
        cuda.register_cuda_kernels()  # once per process; later calls return at once
    return op(a, b, mask)

"""SP (Tung & Mori, 2019): similarity-preserving distillation of the batch Gram matrix.

On codes (student straight-through codes s, teacher codes t):

    G = X X^T (B x B),   G~_ij = G_ij / ||G_i.||_2   (each row L2-normalised)
    L_SP = 1/B^2 || G~^s - G~^t ||_F^2

For +-1 codes G_ij = L - 2 d_H(i, j), so SP asks pairs that are Hamming
neighbours under the teacher to be neighbours under the student. Relational,
so it leaves the student's bit order free (no direct ASHP alignment). The
paper weighs it by gamma = 3000 against cross-entropy; that constant is the
default weight here (registered below).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import MethodContext, Term, per_view, register_method


def normalised_gram(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x @ x.T, p=2, dim=1)


class SPLoss(nn.Module):
    """Squared Frobenius distance of the row-normalised Gram matrices, over B^2."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        b = student.shape[0]
        g_t = normalised_gram(teacher.detach().to(student.dtype))
        g_s = normalised_gram(student)
        return ((g_s - g_t) ** 2).sum() / (b * b)


@register_method("sp", weight=3000.0, needs=("codes",), keeps_code_space=True,
                 summary="row-normalised Gram matrices of codes (Tung & Mori; weight 3000 as published)")
def sp_term(ctx: MethodContext) -> Term:
    return per_view(SPLoss())

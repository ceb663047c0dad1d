"""CRD (Tian et al., 2020): contrastive representation distillation, with in-batch negatives.

CRD maximises a lower bound on the mutual information between student and
teacher representations of the same input: the teacher's representation of
sample k is the student's positive, the teacher's representations of other
samples are negatives. The paper draws 16,384 negatives from a memory bank
and scores them with NCE; brcd uses the other B - 1 samples of the batch as
negatives and the InfoNCE (softmax cross-entropy) form, in both directions:

    S_kj = cos(s_k, t_j) / tau
    L_CRD = 1/2 [ 1/B sum_k -log softmax_j(S_k.)_k  +  1/B sum_k -log softmax_j(S_.k)_k ]

The representations are the codes themselves (student: straight-through sign
codes; teacher: +-1 codes), not the paper's learned projections: a
projection would decouple the student's bits from the teacher's, and ASHP
needs them to agree. tau = 0.3 as in CIBHash (codes are +-1, so the paper's
0.07 for unit features would make every logit saturate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import MethodContext, Term, per_view, register_method


class CRDLoss(nn.Module):
    """Symmetric InfoNCE between student and teacher codes, negatives from the batch."""

    def __init__(self, tau: float = 0.3) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = tau

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = teacher.detach().to(student.dtype)
        logits = F.normalize(student, dim=1) @ F.normalize(teacher, dim=1).T / self.tau
        target = torch.arange(student.shape[0], device=student.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@register_method("crd", weight=0.8, needs=("codes",), keeps_code_space=True,
                 summary="in-batch contrastive student-teacher codes (Tian et al.; weight 0.8 as published)")
def crd_term(ctx: MethodContext) -> Term:
    return per_view(CRDLoss())

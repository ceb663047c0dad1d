"""PKT (Passalis & Tefas, 2018): probabilistic knowledge transfer by matching similarity distributions.

On codes (student straight-through codes s, teacher codes t), with the cosine
kernel shifted into [0, 1]:

    K_ij = (cos(x_i, x_j) + 1) / 2,    P_{j|i} = K_ij / sum_j' K_ij'
    L_PKT = 1/B sum_i sum_j P^t_{j|i} log( P^t_{j|i} / P^s_{j|i} )

i.e. the mean over anchors of KL(P^t_i || P^s_i); the sums include j = i, as
in the paper's code, and eps = 1e-7 guards the logarithm. For +-1 codes
cos = 1 - 2 d_H / L, so PKT matches normalised Hamming-neighbour
distributions. Like RKD it is relational and blind to bit permutations: it
shapes the student's Hamming space, not its agreement with teacher codes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import MethodContext, Term, per_view, register_method

EPS = 1e-7


def similarity_distribution(x: torch.Tensor) -> torch.Tensor:
    """Row-stochastic matrix P_{j|i} from the shifted cosine kernel."""
    z = F.normalize(x, p=2, dim=1)
    k = (z @ z.T + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


class PKTLoss(nn.Module):
    """Mean over anchors of KL(teacher similarity distribution || student's)."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        p_t = similarity_distribution(teacher.detach().to(student.dtype))
        p_s = similarity_distribution(student)
        return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).sum(dim=1).mean()


@register_method("pkt", weight=1.0, needs=("codes",), keeps_code_space=True,
                 summary="similarity-distribution KL of codes (Passalis & Tefas)")
def pkt_term(ctx: MethodContext) -> Term:
    return per_view(PKTLoss())

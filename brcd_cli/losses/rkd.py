"""RKD (Park et al., 2019): relational distillation by pairwise distances and triplet angles.

On codes (student: straight-through sign codes s, so Hamming-space relations
are what is matched; teacher: its +-1 codes t):

  distance:  psi_D(x_i, x_j) = ||x_i - x_j||_2 / mu,  mu = mean over pairs i != j of ||x_i - x_j||_2
             L_D = mean over pairs i != j of huber(psi_D(s_i, s_j) - psi_D(t_i, t_j))
  angle:     e_ij = (x_i - x_j) / ||x_i - x_j||,  psi_A(x_i, x_j, x_k) = <e_ij, e_kj>
             L_A = mean over all (i, j, k) of huber(psi_A(s) - psi_A(t))
  L_RKD = w_D L_D + w_A L_A,  w_D = 25, w_A = 50 (the paper's setting)

huber is the smooth L1 loss with threshold 1; pairs with zero distance give
e_ij = 0 (their angles are 0). RKD matches relations only: any permutation or
sign flip of the student's bits scores the same, so it does not tie the
student's bits to the teacher's, and ASHP (student queries against teacher
codes) gets no direct help from it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import MethodContext, Term, per_view, register_method


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, x)
    off = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    mu = d[off].mean().clamp_min(1e-12)
    return d / mu


def _angles(x: torch.Tensor) -> torch.Tensor:
    diff = x[None, :, :] - x[:, None, :]  # diff[j, i] = x_i - x_j
    e = F.normalize(diff, p=2, dim=2)  # zero vectors stay zero
    return torch.bmm(e, e.transpose(1, 2))  # [j, i, k] = <e_ij, e_kj>


class RKDLoss(nn.Module):
    """Distance-wise plus angle-wise relational loss on (B, L) codes."""

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = teacher.detach().to(student.dtype)
        b = student.shape[0]
        off = ~torch.eye(b, dtype=torch.bool, device=student.device)
        with torch.no_grad():
            td = _normalised_distances(teacher)
            ta = _angles(teacher)
        sd = _normalised_distances(student)
        loss_d = F.smooth_l1_loss(sd[off], td[off])
        loss_a = F.smooth_l1_loss(_angles(student), ta)
        return self.distance_weight * loss_d + self.angle_weight * loss_a


@register_method("rkd", weight=1.0, needs=("codes",), keeps_code_space=True,
                 summary="distance and angle relations of codes (Park et al.; its 25/50 inside the loss)")
def rkd_term(ctx: MethodContext) -> Term:
    return per_view(RKDLoss())

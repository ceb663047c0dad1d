"""FitNet (Romero et al., 2015): hint regression from a student layer to a teacher layer.

The teacher's hint layer and the student's guided layer are the inputs of
their hash layers (the last Linear of the head): the backbone features for a
linear head, the hidden activation for an MLP head. Their widths differ, so a
regressor r (a Linear layer, trained with the student) maps the student's
guided features g^s into the teacher's hint space:

    L_FitNet = 1/(B d_t) sum_k || r(g^s_k) - g^t_k ||^2

(mean squared error over the batch and the d_t hint dimensions, teacher
side detached). FitNet's hint aligns what the hash layers see, not the bits
themselves, so the student's own CIBHash loss decides its last layer: the
code space is the teacher's only as far as the hint carries it. With a frozen
backbone and a linear student head the guided layer is frozen too and the
hint can only train the regressor; an MLP head gives it a layer to guide.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import MethodContext, Term, register_method


class FitNetLoss(nn.Module):
    """MSE between regressed student features and teacher features; owns the regressor."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.regressor = nn.Linear(student_dim, teacher_dim)

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        """student_features: (B, d_s) guided layer; teacher_features: (B, d_t) hint layer."""
        return F.mse_loss(self.regressor(student_features), teacher_features.detach())


@register_method("fitnet", weight=100.0, needs=("hidden",), keeps_code_space=True,
                 summary="hint regression of the hash layers' inputs (Romero et al.; weight 100 as published)")
def fitnet_term(ctx: MethodContext) -> Term:
    """The regressor trains with the student (the trainer attaches it while training, drops it before saving)."""
    loss = FitNetLoss(ctx.student_dim, ctx.teacher_dim)
    return Term(lambda b: loss(b.s_hidden, b.t_hidden), trainable=loss.regressor)

"""KD (Hinton et al., 2015) adapted to hashing: every bit is a two-way classifier.

A hashing head gives L logits h; bit i is a Bernoulli variable with
P(b_i = +1) = sigmoid(h_i). Classic KD matches the student's softened class
distribution to the teacher's; here the "classes" are the two values of each
bit, so the softened distributions are p_i = sigmoid(h_i / T) and the loss is

    L_KD = T^2 * 1/B sum_k sum_i KL( Bern(p^t_ki) || Bern(p^s_ki) )

with teacher logits h^t and student logits h^s (both before the sign), T the
temperature (4, the common setting) and T^2 restoring the gradient scale.
Because the targets are the teacher's own bits, KD keeps the student in the
teacher's code space (ASHP works).
"""
from __future__ import annotations

import torch
from torch import nn

from .cibhash import bernoulli_kl
from .registry import MethodContext, Term, register_method


class KDLoss(nn.Module):
    """Per-bit softened Bernoulli KL from the teacher's logits to the student's."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """student_logits, teacher_logits: (B, L) logits before the sign."""
        t = self.temperature
        p_teacher = torch.sigmoid(teacher_logits.detach() / t)
        p_student = torch.sigmoid(student_logits / t)
        return t * t * bernoulli_kl(p_teacher, p_student)


@register_method("kd", weight=1.0, needs=("logits",), keeps_code_space=True,
                 summary="per-bit softened Bernoulli KL on logits (Hinton et al.)")
def kd_term(ctx: MethodContext) -> Term:
    loss = KDLoss(ctx.options.kd_temperature)
    return Term(lambda b: loss(b.s_logits, b.t_logits))

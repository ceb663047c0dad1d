"""CIBHash: contrastive hashing with an information bottleneck.

For two augmented views of each of B images the head gives bit probabilities
p = sigmoid(h) and codes b = sign(p - 0.5) in {-1, +1} with a straight-through
gradient (the backward pass is the identity from b to p). The loss is

    NTXent(b, b') + beta * 1/2 [KL(p || sg p') + KL(p' || sg p)]

NTXent: over the 2B codes, S_ab = cos(b_a, b_b) / tau; row a's positive is
its other view, the other 2B - 2 rows are negatives; cross-entropy averaged
over all 2B rows. For +-1 codes cos(a, b) = <a, b> / L, the unmasked case of
the masked Hamming similarity kernel. KL is the per-bit Bernoulli divergence,
summed over bits and averaged over the batch; sg is stop-gradient.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import masked_similarity
from .registry import MethodContext, Term, register_method

EPS = 1e-7


def straight_through_sign(p: torch.Tensor, stochastic: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """sign(p - u) forward, identity backward; u = 0.5, or u ~ U(0, 1) when stochastic."""
    threshold = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype) if stochastic else 0.5
    hard = torch.where(p >= threshold, 1.0, -1.0).to(p.dtype)
    # hard + (p - sg p): exactly +-1 forward (p - p is 0 exactly), identity backward
    return hard + (p - p.detach())


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.3) -> torch.Tensor:
    """NT-Xent with cosine similarity: row k of z1 and row k of z2 are positives."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent needs two (B, L) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.shape[0]
    z = torch.cat([F.normalize(z1, dim=1), F.normalize(z2, dim=1)]) * (z1.shape[1] ** 0.5)
    logits = masked_similarity(z, z) / tau
    self_mask = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, targets)


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(Bern(p) || Bern(q)) summed over bits, averaged over rows."""
    p = p.clamp(EPS, 1 - EPS)
    q = q.clamp(EPS, 1 - EPS)
    kl = p * (torch.log(p) - torch.log(q)) + (1 - p) * (torch.log1p(-p) - torch.log1p(-q))
    return kl.sum(dim=1).mean()


def symmetric_bottleneck(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """1/2 [KL(p1 || sg p2) + KL(p2 || sg p1)]."""
    return 0.5 * (bernoulli_kl(p1, p2.detach()) + bernoulli_kl(p2, p1.detach()))


class CIBHashLoss(nn.Module):
    """The CIBHash objective on the logits of two views; returns (loss, codes1, codes2)."""

    def __init__(self, tau: float = 0.3, beta: float = 0.001, stochastic: bool = False) -> None:
        super().__init__()
        self.tau, self.beta, self.stochastic = tau, beta, stochastic

    def forward(self, logits1: torch.Tensor, logits2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p1, p2 = torch.sigmoid(logits1), torch.sigmoid(logits2)
        b1 = straight_through_sign(p1, self.stochastic)
        b2 = straight_through_sign(p2, self.stochastic)
        loss = nt_xent(b1, b2, self.tau) + self.beta * symmetric_bottleneck(p1, p2)
        return loss, b1, b2


@register_method("none", weight=0.0, keeps_code_space=False,
                 summary="no teacher term: the student trained alone with CIBHash, the floor every method is measured against")
def no_term(ctx: MethodContext) -> Optional[Term]:
    """The student's own CIBHash loss is the whole objective; its codes get a code space of their own."""
    return None

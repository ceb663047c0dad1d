"""BRCD: bit-mask robust contrastive distillation of a hashing teacher.

Student codes s (view x), teacher codes t = T(x) and t' = T(x'), teacher
frozen. Stack z = [s_1..s_B, t'_1..t'_B]. For anchor row a with mask row M_a
(the bit mask of the anchor's cluster, all ones without masks),

    S_ab = cos_{M_a}(z_a, z_b) / tau,  cos_M(a, b) = sum_i M_i a_i b_i / |M|.

The positive of row k and of its partner B+k is

    P_k = alpha_k cos(s_k, t_k) / tau + (1 - alpha_k) cos_{M_k}(s_k, t'_k) / tau

(individual alignment, unmasked, blended with structural alignment, masked).
Negatives are S_ab for every b other than a and its partner; with cluster
handling, b in a's cluster is dropped too (a false negative). If t'_k fell in
another cluster than x_k's (c'_k != c_k, an offset positive) alpha_k = 1, and
the teacher-view rows take c' as their cluster for the false-negative test.
Loss: cross-entropy with the positive in column 0, averaged over 2B rows.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import masked_similarity
from .registry import DistillBatch, MethodContext, Term, register_method


def nearest_centre(codes: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the closest k-means centre (Euclidean) for each code, vectorised."""
    d = torch.cdist(codes.to(centres.dtype), centres)
    return d.argmin(dim=1)


class BRCDLoss(nn.Module):
    """The distillation term; every part can be switched off for ablations."""

    def __init__(
        self,
        tau: float = 0.3,
        alpha: float = 0.8,
        false_negatives: bool = True,
        false_positives: bool = True,
        bit_mask: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.tau, self.alpha = tau, alpha
        self.false_negatives, self.false_positives, self.bit_mask = false_negatives, false_positives, bit_mask

    def forward(
        self,
        s: torch.Tensor,
        t: torch.Tensor,
        t2: torch.Tensor,
        clusters: Optional[torch.Tensor] = None,
        centres: Optional[torch.Tensor] = None,
        masks: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """s, t, t2: (B, L) +-1 codes; clusters: (B,) teacher clusters c_k of the images;
        centres: (K, L) k-means centres; masks: (K, L) 0/1 bit masks per cluster."""
        b, length = s.shape
        t, t2 = t.detach(), t2.detach()
        use_clusters = clusters is not None and (self.false_negatives or self.false_positives or self.bit_mask)
        if use_clusters and (self.false_positives and centres is None or self.bit_mask and masks is None):
            raise ValueError("cluster handling needs the k-means centres and the bit masks")

        row_mask = None
        if use_clusters and self.bit_mask:
            m = masks[clusters].to(s.dtype)
            row_mask = torch.cat([m, m])
        z = torch.cat([s, t2])
        sim = masked_similarity(z, z, row_mask) / self.tau

        individual = (s * t).sum(dim=1) / (length * self.tau)
        structural = torch.diagonal(sim, offset=b)  # S[k, B+k] = cos_{M_k}(s_k, t'_k) / tau
        alpha = torch.full((b,), self.alpha, dtype=s.dtype, device=s.device)
        teacher_rows = clusters
        if use_clusters and self.false_positives:
            shifted = nearest_centre(t2, centres)
            alpha = torch.where(shifted != clusters, torch.ones_like(alpha), alpha)
            teacher_rows = shifted
        positive = alpha * individual + (1 - alpha) * structural
        positive = torch.cat([positive, positive])

        idx = torch.arange(2 * b, device=s.device)
        partner = (idx + b) % (2 * b)
        excluded = torch.zeros(2 * b, 2 * b, dtype=torch.bool, device=s.device)
        excluded[idx, idx] = True
        excluded[idx, partner] = True
        if use_clusters and self.false_negatives:
            row_cluster = torch.cat([clusters, teacher_rows])
            excluded |= row_cluster[:, None] == row_cluster[None, :]
        negatives = sim.masked_fill(excluded, float("-inf"))
        logits = torch.cat([positive[:, None], negatives], dim=1)
        return F.cross_entropy(logits, torch.zeros(2 * b, dtype=torch.long, device=s.device))


@register_method("brcd", weight=1.0, needs=("codes", "clusters"), keeps_code_space=True,
                 summary="bit-mask robust contrastive distillation (the method)",
                 variants={"brcd-no-fn": {"false_negatives": False}, "brcd-no-fp": {"false_positives": False},
                           "brcd-no-mask": {"bit_mask": False}, "brcd-opposite-mask": {"mask_rule": "opposite"}})
def brcd_term(ctx: MethodContext) -> Term:
    """BRCD on the first view's student codes against both teacher views; clusters and masks from the context."""
    o = ctx.options
    loss = BRCDLoss(tau=o.tau, alpha=o.alpha, false_negatives=o.false_negatives, false_positives=o.false_positives,
                    bit_mask=o.bit_mask)

    def term(b: DistillBatch) -> torch.Tensor:
        (s1, _), (t1, t2) = b.s_codes, b.t_codes
        clusters = ctx.clusters[b.idx] if ctx.clusters is not None else None
        return loss(s1, t1, t2, clusters=clusters, centres=ctx.centres, masks=ctx.masks)

    return Term(term)

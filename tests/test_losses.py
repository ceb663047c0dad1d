"""Losses against hand-worked values and against a plain per-sample reference."""
from __future__ import annotations

import math

import pytest
import torch

from brcd_cli.losses import BRCDLoss, CIBHashLoss, bernoulli_kl, nearest_centre, nt_xent, straight_through_sign


def test_straight_through_sign_forward_and_identity_backward():
    p = torch.tensor([[0.2, 0.5, 0.9]], requires_grad=True)
    b = straight_through_sign(p)
    assert b.tolist() == [[-1.0, 1.0, 1.0]]
    b.sum().backward()
    assert p.grad.tolist() == [[1.0, 1.0, 1.0]]


def test_stochastic_sign_is_plus_minus_one_and_follows_probability():
    torch.manual_seed(0)
    p = torch.full((20000, 1), 0.8)
    b = straight_through_sign(p, stochastic=True)
    assert set(b.unique().tolist()) == {-1.0, 1.0}
    assert abs((b > 0).float().mean().item() - 0.8) < 0.02


def test_nt_xent_hand_worked():
    z1 = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    z2 = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    expected = (math.log(2 + math.e) + math.log(2 + math.exp(-1))) / 2
    assert nt_xent(z1, z2, tau=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_bernoulli_kl_hand_worked():
    p, q = torch.tensor([[0.5]]), torch.tensor([[0.25]])
    assert bernoulli_kl(p, q).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-5)
    assert bernoulli_kl(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_cibhash_loss_gradient_reaches_logits():
    torch.manual_seed(0)
    h1 = torch.randn(8, 16, requires_grad=True)
    h2 = torch.randn(8, 16, requires_grad=True)
    loss, b1, b2 = CIBHashLoss()(h1, h2)
    loss.backward()
    assert torch.isfinite(loss) and h1.grad.abs().sum() > 0 and h2.grad.abs().sum() > 0
    assert set(b1.detach().unique().tolist()) <= {-1.0, 1.0}


def test_brcd_hand_worked_without_clusters():
    s = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    t = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    t2 = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    loss = BRCDLoss(tau=1.0, alpha=0.5, false_negatives=False, false_positives=False, bit_mask=False)(s, t, t2)
    e = math.e
    expected = (2 * (-1 + math.log(e + 1 + 1 / e)) + math.log(3) + math.log(1 + 2 / e)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def reference_brcd(s, t, t2, clusters, centres, masks, tau, alpha, false_neg, false_pos, bit_mask):
    """Row by row, straight from the formulas in METHOD.md (slow, obvious)."""
    b, L = s.shape
    z = torch.cat([s, t2])
    c_img = clusters.tolist()
    shifted = [int(torch.argmin(((centres - t2[k]) ** 2).sum(1))) for k in range(b)]
    row_cluster = c_img + (shifted if false_pos else c_img)
    losses = []
    for a in range(2 * b):
        k = a % b
        m = masks[c_img[k]] if bit_mask else torch.ones(L)
        w = m.sum()

        def cos_m(x, y):
            return (m * x * y).sum() / w if w > 0 else torch.tensor(0.0)

        alpha_k = 1.0 if (false_pos and shifted[k] != c_img[k]) else alpha
        pos = alpha_k * (s[k] * t[k]).sum() / L / tau + (1 - alpha_k) * cos_m(s[k], t2[k]) / tau
        partner = (a + b) % (2 * b)
        logits = [pos]
        for col in range(2 * b):
            if col in (a, partner):
                continue
            if false_neg and row_cluster[col] == row_cluster[a]:
                continue
            logits.append(cos_m(z[a], z[col]) / tau)
        logits = torch.stack(logits)
        losses.append(-logits[0] + torch.logsumexp(logits, 0))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("false_neg,false_pos,bit_mask", [(True, True, True), (True, False, True), (False, True, False), (False, False, True)])
def test_brcd_matches_per_sample_reference(false_neg, false_pos, bit_mask):
    g = torch.Generator().manual_seed(1)
    b, L, k = 12, 16, 3
    sign = lambda x: torch.where(x >= 0, 1.0, -1.0)
    s = sign(torch.randn(b, L, generator=g))
    t = sign(torch.randn(b, L, generator=g))
    t2 = sign(torch.randn(b, L, generator=g))
    centres = torch.randn(k, L, generator=g).tanh()
    clusters = torch.randint(0, k, (b,), generator=g)
    masks = (torch.rand(k, L, generator=g) > 0.4).float()
    masks[2] = 0  # an empty mask: similarity defined as 0
    loss = BRCDLoss(tau=0.3, alpha=0.8, false_negatives=false_neg, false_positives=false_pos, bit_mask=bit_mask)(
        s, t, t2, clusters=clusters, centres=centres, masks=masks
    )
    ref = reference_brcd(s, t, t2, clusters, centres, masks, 0.3, 0.8, false_neg, false_pos, bit_mask)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)


def test_brcd_gradient_flows_to_student_only():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(6, 8, generator=g).requires_grad_()
    t = torch.randn(6, 8, generator=g).sign().requires_grad_()
    t2 = torch.randn(6, 8, generator=g).sign().requires_grad_()
    loss = BRCDLoss(false_negatives=False, false_positives=False, bit_mask=False)(s, t, t2)
    loss.backward()
    assert s.grad.abs().sum() > 0
    assert t.grad is None and t2.grad is None


def test_offset_positive_sets_alpha_to_one():
    """If t' moved to another cluster, the structural positive is dropped: the loss no longer depends on it."""
    centres = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
    s = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, 1.0]])
    t = s.clone()
    t2 = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])  # row 0 drifted to cluster 1
    clusters = torch.tensor([0, 1])
    masks = torch.ones(2, 4)
    assert nearest_centre(t2, centres).tolist() == [1, 1]
    fn = BRCDLoss(tau=1.0, alpha=0.5, false_negatives=False, false_positives=True, bit_mask=True)
    ref = reference_brcd(s, t, t2, clusters, centres, masks, 1.0, 0.5, False, True, True)
    assert fn(s, t, t2, clusters, centres, masks).item() == pytest.approx(ref.item(), rel=1e-6)
    no_fp = BRCDLoss(tau=1.0, alpha=0.5, false_negatives=False, false_positives=False, bit_mask=True)
    assert no_fp(s, t, t2, clusters, centres, masks).item() != pytest.approx(ref.item(), rel=1e-3)


def test_brcd_requires_centres_and_masks_with_clusters():
    s = torch.ones(2, 8)
    with pytest.raises(ValueError, match="centres"):
        BRCDLoss()(s, s, s, clusters=torch.tensor([0, 1]))

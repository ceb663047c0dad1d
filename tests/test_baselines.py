"""The KD baselines on small hand-worked cases, and their gradients where the maths says what they must be."""
from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from brcd_cli.losses import CRDLoss, FitNetLoss, KDLoss, PKTLoss, RKDLoss, SPLoss


def test_kd_is_zero_on_equal_logits_and_matches_hand_computed_bernoulli_kl():
    h = torch.tensor([[2.0, -1.0]])
    assert KDLoss(temperature=1.0)(h, h).item() == pytest.approx(0.0, abs=1e-6)
    # one bit: teacher p = sigmoid(0) = 0.5, student p = sigmoid(ln 3) = 0.75, T = 1
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    got = KDLoss(temperature=1.0)(torch.tensor([[math.log(3.0)]]), torch.tensor([[0.0]]))
    assert got.item() == pytest.approx(kl, rel=1e-5)
    # T = 2 softens the logits by 2 and scales by 4: student logit 2 ln 3 at T = 2 is the case above
    got2 = KDLoss(temperature=2.0)(torch.tensor([[2 * math.log(3.0)]]), torch.tensor([[0.0]]))
    assert got2.item() == pytest.approx(4 * kl, rel=1e-5)


def test_kd_pushes_the_student_logit_towards_the_teacher_and_leaves_the_teacher_alone():
    s = torch.tensor([[-1.0, 1.0]], requires_grad=True)
    t = torch.tensor([[3.0, 1.0]], requires_grad=True)
    KDLoss()(s, t).backward()
    assert s.grad[0, 0] < 0 and s.grad[0, 1] == pytest.approx(0.0, abs=1e-7)
    assert t.grad is None


def test_fitnet_is_the_mse_of_the_regressed_features():
    loss = FitNetLoss(student_dim=2, teacher_dim=1)
    with torch.no_grad():
        loss.regressor.weight.copy_(torch.tensor([[1.0, 2.0]]))
        loss.regressor.bias.fill_(0.5)
    s = torch.tensor([[1.0, 1.0], [0.0, -1.0]])  # regressed: 3.5 and -1.5
    t = torch.tensor([[3.0], [0.5]])  # errors 0.5 and -2
    assert loss(s, t).item() == pytest.approx((0.25 + 4.0) / 2)
    assert sum(p.numel() for p in loss.parameters()) == 3  # the regressor trains with the student


def test_rkd_is_zero_for_identical_or_uniformly_scaled_codes_and_positive_otherwise():
    t = torch.tensor([[1.0, 1.0, -1.0, 1.0], [1.0, -1.0, -1.0, 1.0], [-1.0, -1.0, 1.0, 1.0]])
    rkd = RKDLoss()
    assert rkd(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd(3 * t, t).item() == pytest.approx(0.0, abs=1e-6)  # distances are normalised by their mean
    assert rkd(t[:, [1, 0, 3, 2]] * -1, t).item() == pytest.approx(0.0, abs=1e-6)  # blind to bit order and sign
    assert rkd(t[[1, 0, 2]], t).item() > 0


def test_rkd_distance_term_by_hand():
    # three points on a line at 0, 1, 3: pair distances 1, 3, 2 (mean 2) -> normalised 0.5, 1.5, 1
    t = torch.tensor([[0.0], [1.0], [3.0]])
    # student at 0, 2, 3: distances 2, 3, 1 (mean 2) -> 1, 1.5, 0.5; errors 0.5, 0, 0.5 -> huber 0.125 each
    s = torch.tensor([[0.0], [2.0], [3.0]])
    got = RKDLoss(distance_weight=1.0, angle_weight=0.0)(s, t)
    assert got.item() == pytest.approx((0.125 + 0 + 0.125) * 2 / 6)


def test_rkd_angle_term_by_hand():
    # right angle at the origin for the teacher, straight line for the student (1-D embedding in 2-D)
    t = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    got = RKDLoss(distance_weight=0.0, angle_weight=1.0)(s, t).item()
    # reference: every (i, j, k) cosine of the angle at j, huber of the difference, mean over 27 triples
    def cosines(x):
        out = torch.zeros(3, 3, 3)
        for j in range(3):
            for i in range(3):
                for k in range(3):
                    a, c = x[i] - x[j], x[k] - x[j]
                    if a.norm() > 0 and c.norm() > 0:
                        out[j, i, k] = a @ c / (a.norm() * c.norm())
        return out
    diff = (cosines(s) - cosines(t)).abs()
    huber = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5)
    assert got == pytest.approx(huber.mean().item(), rel=1e-5)
    assert got > 0


def test_pkt_by_hand_and_zero_for_equal_codes():
    t = torch.tensor([[1.0, 1.0], [1.0, -1.0]])  # cos = 0 -> K = [[1, .5], [.5, 1]] -> P rows (2/3, 1/3)
    s = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # cos = 1 -> K all ones -> P rows (1/2, 1/2)
    kl = (2 / 3) * math.log((2 / 3) / 0.5) + (1 / 3) * math.log((1 / 3) / 0.5)
    assert PKTLoss()(s, t).item() == pytest.approx(kl, rel=1e-4)
    assert PKTLoss()(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_sp_by_hand():
    t = torch.tensor([[1.0, 1.0], [1.0, -1.0]])  # G = [[2, 0], [0, 2]] -> rows (1, 0), (0, 1)
    s = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # G all 2 -> rows (1/sqrt2, 1/sqrt2)
    r = 1 / math.sqrt(2)
    expected = 2 * ((r - 1) ** 2 + r**2) / 4
    assert SPLoss()(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert SPLoss()(2 * t, t).item() == pytest.approx(0.0, abs=1e-7)  # scale-free


def test_crd_by_hand_and_prefers_the_matching_teacher_code():
    s = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    t = s.clone()
    # cosines: diagonal 1, off-diagonal 0; logits / tau with tau = 0.5: 2 and 0
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert CRDLoss(tau=0.5)(s, t).item() == pytest.approx(expected, rel=1e-6)
    assert CRDLoss(tau=0.5)(s, t[[1, 0]]).item() > expected
    with pytest.raises(ValueError):
        CRDLoss(tau=0.0)


@pytest.mark.parametrize("loss", [KDLoss(), RKDLoss(), PKTLoss(), SPLoss(), CRDLoss()], ids=lambda l: type(l).__name__)
def test_every_code_loss_gives_the_student_a_gradient_and_the_teacher_none(loss):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 8, generator=g, requires_grad=True)
    t = torch.where(torch.randn(6, 8, generator=g) >= 0, 1.0, -1.0).requires_grad_(True)
    value = loss(s, t)
    value.backward()
    assert torch.isfinite(value) and s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


# --- wired into distill -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from brcd_cli.data import synthetic_source
    from brcd_cli.training import FitOptions, TeacherOptions, train_teacher
    from conftest import TINY_ARCH

    out = tmp_path_factory.mktemp("bt") / "teacher"
    train_teacher(synthetic_source(n=64, n_classes=4, size=16), out,
                  TeacherOptions(arch=TINY_ARCH, bits=16, image_size=16, pretrained="none", fit=FitOptions(epochs=1, batch_size=16)),
                  log=lambda m: None)
    return out


@pytest.mark.parametrize("method,cache", [("kd", True), ("fitnet", True), ("fitnet", False), ("rkd", True),
                                          ("pkt", True), ("sp", True), ("crd", False)])
def test_every_baseline_trains_a_student_in_the_teachers_code_space(tiny_teacher, tmp_path, method, cache):
    from brcd_cli.data import synthetic_source
    from brcd_cli.models import load_model
    from brcd_cli.training import DistillOptions, FitOptions, distill
    from conftest import TINY_ARCH

    _, teacher_fp = load_model(tiny_teacher)
    opts = DistillOptions(arch=TINY_ARCH, pretrained="none", hidden=24, method=method, freeze_backbone=True,
                          feature_cache=cache, cache_views=2, fit=FitOptions(epochs=1, batch_size=16))
    trained = distill(synthetic_source(n=64, n_classes=4, size=16), tiny_teacher, tmp_path / "s", opts, log=lambda m: None)
    student, _ = load_model(tmp_path / "s")  # the FitNet regressor is not part of the saved student
    assert student.config.code_space == teacher_fp and student.config.method == method
    assert np.isfinite(trained.result.history[0]["loss"])


def test_unknown_method_is_a_user_error(tiny_teacher, tmp_path):
    from brcd_cli.data import synthetic_source
    from brcd_cli.errors import BrcdError
    from brcd_cli.training import DistillOptions, distill

    with pytest.raises(BrcdError, match="method must be one of brcd, none, kd, fitnet, rkd, pkt, sp, crd"):
        distill(synthetic_source(n=64), tiny_teacher, tmp_path / "s", DistillOptions(method="sskd"), log=lambda m: None)

"""TADF (docs/tadf.md): Gaussian masks, teacher-wins masks, KL, decay, region proposal sharing,
frozen teacher, and a few training steps for the Faster R-CNN and RetinaNet variants."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from kdzoo.distill import build_distiller
from kdzoo.distill.tadf import (TADF, decay_factor, gaussian_fg_mask, masked_feature_loss, soft_label_kl,
                                teacher_better_cls_mask, teacher_better_reg_mask)
from kdzoo.faster_rcnn import faster_rcnn_mnv3s, faster_rcnn_r18
from kdzoo.retinanet import retinanet_r18

SMALL = dict(num_classes=3, input_size=(128, 128), fpn_channels=32, frozen_stages=-1)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test in this module runs on one thread (tests/conftest.py)."""


def frcnn(seed: int, **kw):
    torch.manual_seed(seed)
    return faster_rcnn_r18(**{**SMALL, "fc_channels": 64, **kw})


def retina(seed: int, **kw):
    torch.manual_seed(seed)
    return retinanet_r18(**{**SMALL, "feat_channels": 32, "stacked_convs": 2, **kw})


def data() -> tuple[list[torch.Tensor], list[dict]]:
    torch.manual_seed(1)
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 20, 70, 90], [80, 30, 120, 100]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[8.0, 8, 60, 50]]), "labels": torch.tensor([1])}]
    return images, targets


# ---------------------------------------------------------------------------- Gaussian mask
def test_gaussian_mask_peak_support_and_falloff_on_stride_4():
    # Box [6, 22] x [6, 22]: centre 14 = the centre of cell 3 ((3 + .5) * 4); sigma = .25 * 16 = 4.
    mask = gaussian_fg_mask(torch.tensor([[6.0, 6, 22, 22]]), (8, 8), stride=4)
    g = torch.tensor([0.0, math.exp(-2), math.exp(-0.5), 1.0, math.exp(-0.5), math.exp(-2), 0.0, 0.0])
    # cell centres 2, 6, 10, 14, 18, 22, 26, 30: 2 and 26+ lie outside, 6 and 22 on the edges (inside)
    torch.testing.assert_close(mask, g[:, None] * g[None, :])
    assert mask.max() == 1.0 and mask[3, 3] == 1.0


def test_gaussian_mask_on_a_coarser_level():
    # stride 8: centres 4, 12, 20, 28; the box centre 14 falls between cells 1 and 2.
    mask = gaussian_fg_mask(torch.tensor([[6.0, 6, 22, 22]]), (4, 4), stride=8)
    g = torch.tensor([0.0, math.exp(-4 / 32), math.exp(-36 / 32), 0.0])
    torch.testing.assert_close(mask, g[:, None] * g[None, :])


def test_gaussian_mask_takes_the_max_over_overlapping_boxes_and_is_zero_without_boxes():
    a, b = torch.tensor([[6.0, 6, 22, 22]]), torch.tensor([[10.0, 2, 34, 26]])  # b: centre (22, 14), sigma (6, 6)
    both = gaussian_fg_mask(torch.cat([a, b]), (8, 8), stride=4)
    torch.testing.assert_close(both, torch.maximum(gaussian_fg_mask(a, (8, 8), 4), gaussian_fg_mask(b, (8, 8), 4)))
    assert both[3, 5] == 1.0 and both[3, 3] == 1.0  # both centres are cell centres
    assert gaussian_fg_mask(torch.zeros(0, 4), (5, 7), stride=8).equal(torch.zeros(5, 7))
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
        gaussian_fg_mask(torch.zeros(4), (5, 7), stride=8)


def test_masked_feature_loss_is_normalised_by_the_mask_sum():
    f = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 1, 1)]
    t = [torch.ones(1, 2, 2, 2) * torch.tensor([1.0, 3.0])[None, :, None, None], torch.full((1, 2, 1, 1), 2.0)]
    masks = [torch.tensor([[[1.0, 0.5], [0.0, 0.0]]]), torch.tensor([[[0.5]]])]
    # per-location MSE: level 0 (1 + 9) / 2 = 5, level 1: 4; (5 * 1.5 + 4 * .5) / 2
    torch.testing.assert_close(masked_feature_loss(f, t, masks), torch.tensor((5 * 1.5 + 4 * 0.5) / 2.0))
    with pytest.raises(ValueError, match="FPN level 1"):
        masked_feature_loss(f, [t[0], torch.zeros(1, 2, 2, 2)], masks)


# ------------------------------------------------------------------------- adaptive masks
def test_teacher_better_cls_mask_softmax_and_sigmoid():
    labels = torch.tensor([0, 1, 2, 1])
    student = torch.tensor([[2.0, 0, 0], [0, 1, 0], [0, 0, 0], [5, 0, 0]])
    teacher = torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 0], [0, 0, -3]])
    # p_gt: row 0 teacher lower; row 1 higher; row 2 equal (not strictly better); row 3 teacher
    # softmax(0, 0, -3)[1] = 0.488 > student's e^0 / (e^5 + 2) = 0.0067.
    assert teacher_better_cls_mask(student, teacher, labels).tolist() == [False, True, False, True]
    # sigmoid: only the GT column matters (row 3: sigmoid(0) = .5 vs sigmoid(0) = .5 -> equal)
    assert teacher_better_cls_mask(student, teacher, labels, use_sigmoid=True).tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match="labels"):
        teacher_better_cls_mask(student, teacher, labels[:2])


def test_teacher_better_reg_mask_with_margin():
    gt = torch.tensor([[0.0, 0, 10, 10]]).expand(3, 4)
    student = torch.tensor([[0.0, 0, 10, 8], [0, 0, 10, 10], [0, 0, 10, 5]])  # IoU 0.8, 1.0, 0.5
    teacher = torch.tensor([[0.0, 0, 10, 9], [0, 0, 10, 9], [0, 0, 10, 5.5]])  # IoU 0.9, 0.9, 0.55
    assert teacher_better_reg_mask(student, teacher, gt).tolist() == [True, False, True]
    assert teacher_better_reg_mask(student, teacher, gt, margin=0.07).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="share one shape"):
        teacher_better_reg_mask(student, teacher[:2], gt)


def test_soft_label_kl_hand_computed():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    p = torch.tensor([math.exp(1), 1.0]) / (math.exp(1) + 1)  # teacher at T = 2
    expected = (p * (p.log() - math.log(0.5))).sum() * 4
    torch.testing.assert_close(soft_label_kl(s, t, temperature=2.0), expected[None])
    assert soft_label_kl(t, t, 3.0).abs().max() < 1e-6
    # sigmoid: one Bernoulli per class; the zero-logit class has KL 0
    q = 1 / (1 + math.exp(-1))
    bern = q * math.log(q / 0.5) + (1 - q) * math.log((1 - q) / 0.5)
    torch.testing.assert_close(soft_label_kl(s, t, 2.0, use_sigmoid=True), torch.tensor([bern * 4]))


def test_classification_loss_selects_exactly_where_the_teacher_wins():
    distiller = TADF(frcnn(0), frcnn(1), temperature=1.0)
    s = torch.tensor([[2.0, 0, 0], [0, 1, 0], [0, 0, 3]])
    t = torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 4]])
    labels = torch.tensor([0, 1, 2])  # teacher wins rows 1 and 2
    loss = distiller.classification_loss(s, t, labels, torch.tensor(3.0), use_sigmoid=False)
    torch.testing.assert_close(loss, soft_label_kl(s[1:], t[1:]).sum() / 3)
    assert distiller.step_stats["kept_cls"] == pytest.approx(2 / 3)  # the share the rule keeps, logged per step
    distiller.adaptive = False
    torch.testing.assert_close(distiller.classification_loss(s, t, labels, torch.tensor(3.0), False),
                               soft_label_kl(s, t).sum() / 3)


def test_regression_loss_selects_exactly_where_the_teacher_box_is_better():
    distiller = TADF(frcnn(0), frcnn(1), reg_margin=0.0)
    gt = torch.tensor([[0.0, 0, 10, 10]]).expand(2, 4)
    boxes = torch.tensor([[0.0, 0, 10, 8], [0, 0, 10, 10]])
    t_boxes = torch.tensor([[0.0, 0, 10, 9], [0, 0, 10, 9]])  # teacher wins row 0 only
    d, td = torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1]]), torch.tensor([[0.5, 0, 0, -0.5], [0, 0, 0, 0]])
    torch.testing.assert_close(distiller.regression_loss(d, td, boxes, t_boxes, gt, torch.tensor(2.0)), torch.tensor(0.5))
    assert distiller.step_stats["kept_reg"] == 0.5


# --------------------------------------------------------------------------- decay
def test_decay_schedule_values():
    assert [decay_factor(t) for t in (0.0, 0.25, 1.0)] == [1.0, 0.75, 0.0]
    assert decay_factor(0.5, "cosine") == pytest.approx(0.5)
    assert decay_factor(0.25, "cosine") == pytest.approx((1 + math.sqrt(0.5)) / 2)
    assert decay_factor(1.0, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert decay_factor(0.9, "constant") == 1.0
    with pytest.raises(ValueError, match="decay schedule"):
        decay_factor(0.5, "step")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        decay_factor(1.5)


def test_decay_scales_the_distillation_losses():
    distiller = build_distiller("tadf", frcnn(0), frcnn(1), terms=["feat"], loss_feat_weight=2.0).train()
    images, targets = data()
    at0 = distiller(images, targets)["loss_kd_feat"]
    distiller.set_progress(0.75)
    torch.testing.assert_close(distiller(images, targets)["loss_kd_feat"], at0 * 0.25)
    distiller.set_progress(1.0)
    assert distiller(images, targets)["loss_kd_feat"] == 0


# ------------------------------------------------------------- region proposal sharing
def test_shared_proposals_pair_teacher_and_student_one_to_one():
    student = frcnn(0)
    teacher = copy.deepcopy(student)  # identical weights: paired outputs must coincide row by row
    distiller = TADF(student, teacher, adaptive=False).train()
    images, targets = data()
    batch, targets_r = student.preprocess(images, targets)
    feats = student.extract_feats(batch.tensors)
    _, out = student.forward_train(feats, targets_r, batch.image_sizes)
    with torch.no_grad():
        t_cls, t_deltas = teacher.roi_head.forward_rois(teacher.extract_feats(batch.tensors), out.sampled.rois)
    assert t_cls.shape == out.cls_logits.shape and t_deltas.shape == out.deltas.shape
    torch.testing.assert_close(t_cls, out.cls_logits.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(t_deltas, out.deltas.detach(), rtol=1e-4, atol=1e-5)
    # Through the distiller: identical models give zero KD on every (non-adaptively selected) positive RoI.
    losses = distiller(images, targets)
    assert losses["loss_kd_cls"].abs() < 1e-6 and losses["loss_kd_reg"].abs() < 1e-4


def test_no_gradient_reaches_the_teacher_and_checkpoint_is_the_plain_student():
    student, teacher = frcnn(0), frcnn(1, fpn_channels=48)  # different FPN widths: the adapter bridges them
    distiller = build_distiller("tadf", student, teacher).train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    images, targets = data()
    losses = distiller(images, targets)
    assert {"loss_kd_feat", "loss_kd_cls", "loss_kd_reg"} <= set(losses)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert distiller.adapter.weight.shape == (48, 32, 1, 1) and distiller.adapter.weight.grad.abs().sum() > 0
    assert student.neck.fpn.inner_blocks[0][0].weight.grad.abs().sum() > 0
    assert distiller.student_state_dict().keys() == student.state_dict().keys()
    assert not any(k.startswith("adapter") for k in distiller.student_state_dict())


def test_pair_and_option_errors():
    with pytest.raises(TypeError, match="Faster R-CNN student with a Faster R-CNN teacher"):
        TADF(frcnn(0), retina(1))
    with pytest.raises(ValueError, match="num_classes"):
        TADF(frcnn(0), frcnn(1, num_classes=4))
    with pytest.raises(ValueError, match="terms must be a subset"):
        TADF(frcnn(0), frcnn(1), terms=("feat", "mask"))
    with pytest.raises(ValueError, match="decay schedule"):
        TADF(frcnn(0), frcnn(1), decay="exp")


# ---------------------------------------------------------------- training steps
def mnv3s(seed: int):
    """The shapes pair's shape: a MobileNetV3 student (FPN 24) for the ResNet-18 teacher (FPN 32)."""
    torch.manual_seed(seed)
    return faster_rcnn_mnv3s(**{**SMALL, "fpn_channels": 24, "fc_channels": 32})


@pytest.mark.parametrize("make_student,make_teacher", [(frcnn, frcnn), (retina, retina), (mnv3s, frcnn)],
                         ids=["faster_rcnn", "retinanet", "faster_rcnn_mobilenet_student"])
def test_a_few_training_steps(make_student, make_teacher):
    student, teacher = make_student(0), make_teacher(1)
    distiller = build_distiller("tadf", student, teacher, decay="cosine").train()
    assert distiller.adapter.weight.shape == (teacher.neck.out_channels, student.neck.out_channels, 1, 1)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    before = {k: v.clone() for k, v in student.state_dict().items()}
    opt = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images, targets = data()
    for step in range(3):
        distiller.set_progress(step / 3)
        losses = distiller(images, targets)
        assert {"loss_kd_feat", "loss_kd_cls", "loss_kd_reg"} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items() if v.is_floating_point())
    assert distiller.student_state_dict().keys() == student.state_dict().keys()

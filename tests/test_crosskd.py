"""CrossKD (kdzoo.distill.crosskd): gradient routing, frozen teacher, the copy invariant,
hand-computed KD losses, heterogeneous pairs and construction errors."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from kdzoo import create_detector
from kdzoo.distill import Distiller, build_distiller, list_distillers, teacher_inputs
from kdzoo.criterion import Assignment
from kdzoo.distill.crosskd import (
    align_statistics,
    distribution_kl_loss,
    kd_quality_focal_loss,
    pkd_loss,
)
from kdzoo.transform import DetectionTransform


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: intra-op threads only spin against each other (and against other
    processes on a shared machine, 10x slower here), so run the module on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FAMILIES = {"gfl": "gfl_r18", "atss": "atss_r18", "retinanet": "retinanet_r18", "fcos": "fcos_r18"}
SIZE = 64


def small(name: str, seed: int, **kwargs) -> nn.Module:
    """A 64 px detector whose head outputs vary over locations (MMDet's N(0, 0.01) init makes them
    nearly constant, which would make the invariants trivially true)."""
    torch.manual_seed(seed)
    kwargs = {"num_classes": 3, "fpn_channels": 32, "input_size": (SIZE, SIZE), "norm_eval": False, "frozen_stages": -1, **kwargs}
    model = create_detector(name, **kwargs)
    for m in model.bbox_head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.1)
    return model


def batch(seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 4.0, 60.0, 30.0]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[4.0, 20.0, 50.0, 62.0]]), "labels": torch.tensor([1])}]
    return images, targets


def kd_total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in losses.items() if k.startswith("loss_kd"))


# ------------------------------------------------------------------------- gradient routing
@pytest.mark.parametrize("family", FAMILIES)
def test_kd_gradients_reach_early_student_layers_only(family: str) -> None:
    name = FAMILIES[family]
    distiller = build_distiller("crosskd", small(name, 0), small(name, 1))
    student, teacher, layer = distiller.student, distiller.teacher, distiller.layer
    assert layer == (2 if family == "fcos" else 3)
    losses = distiller(*batch())
    assert set(losses) >= {"loss_cls", "loss_bbox", "loss_kd_cls", "loss_kd_reg"}
    assert ("loss_kd_centerness" in losses) == (family == "atss")
    kd_total(losses).backward()

    def has_grad(p: nn.Parameter) -> bool:
        return p.grad is not None and bool(p.grad.abs().sum() > 0)

    assert any(has_grad(p) for p in student.backbone.parameters())
    # P6/P7 are 1x1 here: two values per channel standardise to +-1/sqrt(2) whatever they are, so
    # the alignment passes no gradient to the extra convs at this size; check the P3-P5 convs.
    assert all(has_grad(p) for n, p in student.neck.named_parameters() if "extra" not in n)
    head = student.bbox_head
    early = {id(p) for b in ("cls", "reg") for conv in head.tower(b)[:layer] for p in conv.parameters()}
    for b in ("cls", "reg"):
        for conv in head.tower(b)[:layer]:
            assert has_grad(conv.conv.weight), f"{b} tower layer before the tap gets no KD gradient"
    for pname, p in head.named_parameters():
        if id(p) not in early:
            assert p.grad is None, f"KD gradient leaked into the student's later head layer {pname}"
    for p in teacher.parameters():
        assert not p.requires_grad and p.grad is None


def test_mimic_and_pkd_modes_route_gradients_differently() -> None:
    mimic = build_distiller("crosskd", small("gfl_r18", 0), small("gfl_r18", 1), mode="mimic")
    kd_total(mimic(*batch())).backward()
    assert mimic.student.bbox_head.gfl_cls.weight.grad is not None  # mimicking trains the predictors
    pkd = build_distiller("crosskd", small("gfl_r18", 0), small("gfl_r18", 1), mode="pkd")
    losses = pkd(*batch())
    assert {k for k in losses if k.startswith("loss_kd")} == {"loss_kd_feat"}
    losses["loss_kd_feat"].backward()
    assert all(p.grad is None for p in pkd.student.bbox_head.parameters())
    assert any(p.grad is not None for p in pkd.student.neck.parameters())
    both = build_distiller("crosskd", small("gfl_r18", 0), small("gfl_r18", 1), mode="crosskd+pkd")
    assert {k for k in both(*batch()) if k.startswith("loss_kd")} == {"loss_kd_cls", "loss_kd_reg", "loss_kd_feat"}


# ------------------------------------------------------------------------------ frozen teacher
def test_teacher_frozen_and_outside_the_module_tree() -> None:
    distiller = build_distiller("crosskd", small("gfl_r18", 0), small("gfl_r18", 1))
    teacher = distiller.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_bn = distiller.student.backbone.state_dict()
    student_bn = {k: v.clone() for k, v in student_bn.items() if "running_mean" in k}
    opt = torch.optim.SGD(distiller.parameters(), lr=0.01, momentum=0.9)
    distiller.train()
    for step in range(3):
        losses = distiller(*batch(step))
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert not teacher.training and distiller.student.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher {k} changed during distillation"
    changed = [k for k, v in distiller.student.backbone.state_dict().items() if k in student_bn and not torch.equal(v, student_bn[k])]
    assert changed, "the student's BN statistics should update (sanity check of the test)"
    assert not any(k.startswith("teacher") or "_teacher" in k for k in distiller.state_dict())
    n_student = sum(p.numel() for p in distiller.student.parameters())
    assert sum(p.numel() for p in distiller.parameters()) == n_student  # no adapters for equal widths
    distiller.to(torch.float64)
    assert next(teacher.parameters()).dtype == torch.float64


# ------------------------------------------------------------------------------ copy invariant
@pytest.mark.parametrize("family", FAMILIES)
def test_cross_head_equals_teacher_when_student_is_a_copy(family: str) -> None:
    teacher = small(FAMILIES[family], 3)
    distiller = build_distiller("crosskd", copy.deepcopy(teacher), teacher).eval()
    images, targets = batch()
    x = distiller.student.preprocess(images)[0].tensors
    with torch.no_grad():
        s_out, s_taps = distiller.student.bbox_head.forward_taps(distiller.student.extract_feats(x), distiller.layer)
        t_out, t_taps = teacher.bbox_head.forward_taps(teacher.extract_feats(x), distiller.layer)
        cross = distiller.cross_head_predictions(s_taps, t_taps)
    for c, t in zip(cross, t_out):
        assert c.keys() == t.keys()
        for k in t:
            assert torch.allclose(c[k], t[k], rtol=1e-4, atol=1e-4), f"{family} level output {k} differs"
    # The whole path: identical predictions give (numerically) zero KD losses.
    with torch.no_grad():
        losses = distiller(images, targets)
    for k, v in losses.items():
        if k.startswith("loss_kd") and k != "loss_kd_centerness":
            assert abs(float(v)) < 1e-3, f"{k} = {float(v)} for a student identical to the teacher"
    if family == "atss":  # BCE against soft targets bottoms out at their entropy, over the positives
        assignment = teacher.bbox_head.assign(t_out, targets)
        c = teacher.bbox_head.flatten(t_out)["centerness"][assignment.positive].sigmoid()
        entropy = -(c * c.log() + (1 - c) * (1 - c).log()).sum() / assignment.num_pos
        assert losses["loss_kd_centerness"].item() == pytest.approx(entropy.item(), rel=1e-4)


@pytest.mark.parametrize("tap", ["post_relu", "pre_relu"])
def test_cross_head_invariant_under_both_taps(tap: str) -> None:
    teacher = small("gfl_r18", 3)
    distiller = build_distiller("crosskd", copy.deepcopy(teacher), teacher, tap=tap).eval()
    x = distiller.student.preprocess(batch()[0])[0].tensors
    activated = tap == "post_relu"
    with torch.no_grad():
        _, s_taps = distiller.student.bbox_head.forward_taps(distiller.student.extract_feats(x), 3, activated=activated)
        t_out, t_taps = teacher.bbox_head.forward_taps(teacher.extract_feats(x), 3, activated=activated)
        cross = distiller.cross_head_predictions(s_taps, t_taps)
    assert ((s_taps[0]["cls"] >= 0).all()) == activated  # after the ReLU: no negative values
    for c, t in zip(cross, t_out):
        for k in t:
            assert torch.allclose(c[k], t[k], rtol=1e-4, atol=1e-4), (tap, k)


def test_default_tap_is_after_the_relu_as_the_reference_computes() -> None:
    """The reference holds the feature before ``conv.activate`` but mmcv's ReLU is in place, so the
    held tensor (student and teacher) is the activated one: alignment sees non-negative features and
    the student's gradient is masked by the ReLU. kdzoo's default reproduces that; the pre-ReLU tap
    gives another cross-head prediction."""
    student, teacher = small("gfl_r18", 0), small("gfl_r18", 1)
    post = build_distiller("crosskd", student, teacher)
    pre = build_distiller("crosskd", copy.deepcopy(student), teacher, tap="pre_relu")
    assert post.tap == "post_relu" and "tap='post_relu'" in repr(post)
    x = student.preprocess(batch()[0])[0].tensors
    with torch.no_grad():
        feats, t_feats = student.extract_feats(x), teacher.extract_feats(x)
        _, t_post = teacher.bbox_head.forward_taps(t_feats, 3)
        _, t_pre = teacher.bbox_head.forward_taps(t_feats, 3, activated=False)
        _, s_post = student.bbox_head.forward_taps(feats, 3)
        _, s_pre = student.bbox_head.forward_taps(feats, 3, activated=False)
        # What the reference computes, written out: hold = conv+norm output; ReLU in place on it.
        head = student.bbox_head
        held = feats[0]
        for conv in head.cls_convs[:3]:
            held = conv(held, activate=False)
            held = torch.relu_(held)
        assert torch.equal(s_post[0]["cls"], held)
        a = post.cross_head_predictions(s_post, t_post)[0]["cls"]
        b = pre.cross_head_predictions(s_pre, t_pre)[0]["cls"]
    assert not torch.allclose(a, b, atol=1e-3)
    with pytest.raises(ValueError, match="tap must be one of"):
        build_distiller("crosskd", copy.deepcopy(student), teacher, tap="before")


# ------------------------------------------------------------------------- hand-computed losses
def test_kd_quality_focal_loss_by_hand() -> None:
    logits, teacher = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, -1.0]])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    t, p = sig(-1.0), sig(2.0)
    expected = -(t * math.log(p) + (1 - t) * math.log(1 - p)) * abs(p - t)  # 0.97226
    out = kd_quality_focal_loss(logits, teacher, beta=1.0)
    assert out[0, 0].item() == pytest.approx(0.0, abs=1e-7)  # equal scores: no loss
    assert out[0, 1].item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.972264, rel=1e-5)
    assert kd_quality_focal_loss(logits, teacher, beta=2.0)[0, 1].item() == pytest.approx(expected * abs(p - t), rel=1e-5)


def test_distribution_kl_loss_by_hand() -> None:
    # teacher softmax [0.75, 0.25], student [0.5, 0.5]: KL = .75 ln 1.5 + .25 ln .5, summed over the 2 bins
    # (the reference's class_reduction='sum'); 'mean' is half of it.
    out = distribution_kl_loss(torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]))
    assert out.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-5)
    assert out.item() == pytest.approx(0.130812, rel=1e-4)
    mean = distribution_kl_loss(torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]), bin_reduction="mean")
    assert mean.item() == pytest.approx(0.065406, rel=1e-4)
    # 17 bins (GFL's reg_max 16): the sum is 17 times the mean.
    s, t = torch.randn(5, 17), torch.randn(5, 17)
    assert torch.allclose(distribution_kl_loss(s, t), 17 * distribution_kl_loss(s, t, bin_reduction="mean"))
    assert distribution_kl_loss(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.0]])).item() == pytest.approx(0, abs=1e-7)


def test_align_statistics_and_pkd_by_hand() -> None:
    s = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    t = torch.tensor([0.0, 0.0, 10.0, 10.0]).view(1, 1, 1, 4)
    z = (s - 2.5) / (math.sqrt(5 / 3) + 1e-6)  # unbiased std of 1..4
    assert torch.allclose(align_statistics(s, t), z * math.sqrt(100 / 3) + 5.0, atol=1e-5)
    assert align_statistics(s, t)[0, 0, 0, 0].item() == pytest.approx(-1.708203, abs=1e-4)
    # s and its reverse standardise to z and -z: MSE = 4 * mean(z^2) = 4 * 3/4, halved.
    assert pkd_loss(s, s.flip(-1)).item() == pytest.approx(1.5, rel=1e-5)
    one = torch.ones(1, 1, 1, 1)  # a single element (1x1 P7 of one image) must not give NaN
    assert torch.isfinite(align_statistics(one, one)).all()


def _gfl_outputs(cls: torch.Tensor, reg: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """One level of one image with the locations along W: cls [P, C], reg [P, 4 * bins]."""
    return [{"cls": cls.t()[None, :, None, :], "reg": reg.t()[None, :, None, :]}]


def test_gfl_kd_normalisers_by_hand() -> None:
    distiller = build_distiller("crosskd", small("gfl_r18", 0, num_classes=2, reg_max=1), small("gfl_r18", 1, num_classes=2, reg_max=1))
    t_cls = torch.tensor([[0.0, 1.0], [-2.0, -3.0]])  # teacher max scores sigmoid(1), sigmoid(-2)
    p_cls = torch.tensor([[0.5, 1.0], [-2.0, -3.0]])
    t_reg = torch.zeros(2, 8)
    p_reg = torch.zeros(2, 8)
    p_reg[0, 0] = math.log(3.0)  # location 0, side 0: [0.75, 0.25] vs teacher [0.5, 0.5]
    p_reg[1, 2:4] = torch.tensor([math.log(3.0), 0.0])  # location 1, side 1: same distributions
    assignment = Assignment(gt_index=torch.tensor([[0, -1]]), labels=torch.tensor([[0, 2]]), pos_gt_boxes=torch.zeros(1, 4),
                            num_pos=torch.tensor(2.0))
    losses = distiller.prediction_kd_losses(_gfl_outputs(p_cls, p_reg), _gfl_outputs(t_cls, t_reg), assignment)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    t, p = sig(0.0), sig(0.5)
    qfl = -(t * math.log(p) + (1 - t) * math.log(1 - p)) * abs(p - t)
    assert losses["loss_kd_cls"].item() == pytest.approx(qfl / 2.0, rel=1e-5)  # weight 1, / num_pos
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(teacher||student), summed over the 2 bins
    w0, w1 = sig(1.0), sig(-2.0)
    expected = 4.0 * (w0 * kl / 4 + w1 * kl / 4) / (w0 + w1)  # weight 4, sides summed / 4, / sum of weights
    assert losses["loss_kd_reg"].item() == pytest.approx(expected, rel=1e-5)



def test_teacher_temperatures_sharpen_the_targets_by_hand() -> None:
    """teacher_cls_temperature / teacher_reg_temperature divide the teacher's logits only: the same
    losses as the reference's with the teacher's logits pre-divided, computed here by hand for one
    location (KD-QFL target, box weight and distribution all from the tempered teacher)."""
    student, teacher = small("gfl_r18", 0, num_classes=1, reg_max=1), small("gfl_r18", 1, num_classes=1, reg_max=1)
    sharp = build_distiller("crosskd", student, teacher, teacher_cls_temperature=0.5, teacher_reg_temperature=0.25)
    t_cls, p_cls = torch.tensor([[0.4]]), torch.tensor([[0.1]])
    t_reg, p_reg = torch.zeros(1, 8), torch.zeros(1, 8)
    t_reg[0, 0] = math.log(2.0) * 0.25  # side 0: softmax(log 2, 0) = [2/3, 1/3] once divided by 0.25
    assignment = Assignment(gt_index=torch.tensor([[0]]), labels=torch.tensor([[0]]), pos_gt_boxes=torch.zeros(1, 4),
                            num_pos=torch.tensor(1.0))
    losses = sharp.prediction_kd_losses(_gfl_outputs(p_cls, p_reg), _gfl_outputs(t_cls, t_reg), assignment)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    t, p = sig(0.8), sig(0.1)  # the teacher's logit 0.4 / 0.5
    qfl = -(t * math.log(p) + (1 - t) * math.log(1 - p)) * abs(p - t)
    assert losses["loss_kd_cls"].item() == pytest.approx(qfl, rel=1e-5)
    kl = 2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5)  # one side of four differs
    assert losses["loss_kd_reg"].item() == pytest.approx(4.0 * kl / 4, rel=1e-5)  # the one weight cancels
    plain = build_distiller("crosskd", student, teacher).prediction_kd_losses(
        _gfl_outputs(p_cls, p_reg), _gfl_outputs(t_cls, t_reg), assignment)
    assert plain["loss_kd_cls"].item() != pytest.approx(qfl, rel=1e-3)  # 1 is the reference: untouched
    assert "teacher_cls_temperature=0.5" in repr(sharp) and "teacher_cls" not in repr(plain)
    with pytest.raises(ValueError, match="teacher_cls_temperature must be > 0, got 0"):
        build_distiller("crosskd", student, teacher, teacher_cls_temperature=0)
    with pytest.raises(ValueError, match="teacher_reg_temperature applies to box distributions.*ATSSHead"):
        build_distiller("crosskd", small("atss_r18", 0), small("atss_r18", 1), teacher_reg_temperature=0.5)

def test_fcos_iou_kd_by_hand() -> None:
    distiller = build_distiller("crosskd", small("fcos_r18", 0, num_classes=1), small("fcos_r18", 1, num_classes=1))
    level = lambda cls, reg, ctr: [{"cls": torch.tensor(cls).view(1, 1, 1, 1), "reg": torch.tensor(reg).view(1, 4, 1, 1),  # noqa: E731
                                    "centerness": torch.tensor(ctr).view(1, 1, 1, 1)}]
    # A 4x4 box against a 2x2 box around the same point: IoU 1/4.
    pred, teacher = level([0.0], [2.0] * 4, [0.0]), level([0.0], [1.0] * 4, [0.0])
    assignment = Assignment(gt_index=torch.tensor([[0]]), labels=torch.tensor([[0]]), pos_gt_boxes=torch.zeros(1, 4),
                            num_pos=torch.tensor(1.0), centerness_targets=torch.tensor([0.5]),
                            centerness_avg=torch.tensor(0.5))
    losses = distiller.prediction_kd_losses(pred, teacher, assignment)
    assert losses["loss_kd_cls"].item() == pytest.approx(0.0, abs=1e-7)
    # weight 0.75 * (-log IoU) * teacher score sigmoid(0), averaged by the centerness-target sum.
    assert losses["loss_kd_reg"].item() == pytest.approx(0.75 * math.log(4.0) * 0.5 / 0.5, rel=1e-5)


# --------------------------------------------------------------------------- heterogeneous pairs
def test_heterogeneous_pair_with_mismatched_widths_trains() -> None:
    teacher = small("gfl_r18", 1, fpn_channels=64, feat_channels=64)
    student = small("gfl_mnv3", 0, fpn_channels=32, feat_channels=32)
    distiller = build_distiller("crosskd", student, teacher, mode="crosskd+pkd")
    assert distiller.tap_adapters is not None and distiller.feat_adapter is not None
    adapters = list(distiller.tap_adapters.parameters()) + list(distiller.feat_adapter.parameters())
    opt = torch.optim.SGD(distiller.parameters(), lr=0.005, momentum=0.9)
    images, targets = batch()
    totals = []
    for _ in range(4):
        losses = distiller(images, targets)
        total = sum(losses.values())
        assert all(torch.isfinite(v) for v in losses.values()), losses
        opt.zero_grad()
        total.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters)
        opt.step()
        totals.append(total.item())
    assert totals[-1] < totals[0], totals
    saved = distiller.student_state_dict()
    assert not any("adapter" in k for k in saved)
    fresh = create_detector(student.arch_name, **student.build_kwargs)
    fresh.load_state_dict(saved, strict=True)
    assert set(distiller.state_dict()) == {f"student.{k}" for k in saved} | {
        f"{k}" for k in distiller.state_dict() if "adapter" in k}


def test_teacher_inputs_renormalised_for_a_caffe_teacher() -> None:
    student, teacher = small("fcos_r18", 0), small("fcos_r18", 1)
    teacher.transform = DetectionTransform(size=(SIZE, SIZE), mean=(102.98, 115.95, 122.77), std=(1.0, 1.0, 1.0), bgr=True)
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, 48, SIZE)]  # the second one is padded
    batch_ = student.preprocess(images)[0]
    expected = teacher.transform(images)[0].tensors
    assert torch.allclose(teacher_inputs(batch_, student.transform, teacher.transform), expected, atol=1e-4)


# ---------------------------------------------------------------------------- construction errors
def test_mismatched_pairs_and_bad_options_raise() -> None:
    gfl = small("gfl_r18", 0)
    with pytest.raises(ValueError, match="num_classes: student 3, teacher 5"):
        build_distiller("crosskd", gfl, small("gfl_r18", 1, num_classes=5))
    with pytest.raises(ValueError, match="student GFLHead, teacher ATSSHead"):
        build_distiller("crosskd", gfl, small("atss_r18", 1))
    with pytest.raises(ValueError, match="reg_channels: student 68, teacher 36"):
        build_distiller("crosskd", gfl, small("gfl_r18", 1, reg_max=8))
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\]"):
        build_distiller("crosskd", gfl, small("gfl_r18", 1, stacked_convs=2))
    with pytest.raises(ValueError, match="mode must be one of"):
        build_distiller("crosskd", gfl, small("gfl_r18", 1), mode="crosskd+mimic")
    with pytest.raises(ValueError, match="unknown distillation method 'crossk'.*did you mean 'crosskd'"):
        build_distiller("crossk", gfl, small("gfl_r18", 1))
    with pytest.raises(ValueError, match="same object"):
        build_distiller("crosskd", gfl, gfl)
    distiller = build_distiller("crosskd", gfl, small("gfl_r18", 1))
    with pytest.raises(ValueError, match="needs targets"):
        distiller(batch()[0], None)
    with pytest.raises(ValueError, match="progress must be in"):
        distiller.set_progress(1.5)
    assert "crosskd" in list_distillers() and isinstance(distiller, Distiller)

"""Heads split from their criteria: the returned assignment, its normalisers, reuse by the
distillers, the shared post-processing and the output_shape contract backbone -> FPN -> head."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import kdzoo
from kdzoo.assigners import IGNORE, NEGATIVE
from kdzoo.criterion import Assignment, DenseCriterion
from kdzoo.distill import build_distiller
from kdzoo.fcos import centerness_target
from kdzoo.postprocess import batched_nms_topk, filter_scores_and_topk

SMALL = dict(num_classes=3, fpn_channels=32, input_size=(64, 64), norm_eval=False, frozen_stages=-1, stacked_convs=2)
FAMILIES = {"gfl": "gfl_r18", "atss": "atss_r18", "retinanet": "retinanet_r18", "fcos": "fcos_r18"}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = kdzoo.create_detector(name, **{**SMALL, **kwargs})
    for m in model.bbox_head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.1)
    return model


def _data():
    images = [torch.rand(3, 64, 64), torch.rand(3, 32, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 2.0, 60.0, 30.0]]), "labels": torch.tensor([2, 0])},
               {"boxes": torch.tensor([[2.0, 3.0, 30.0, 28.0]]), "labels": torch.tensor([1])}]
    return images, targets


@pytest.mark.parametrize("family", FAMILIES)
def test_assignment_fields_agree_with_the_gt_index(family: str) -> None:
    model = _model(FAMILIES[family]).train()
    images, targets = _data()
    batch, targets = model.preprocess(images, targets)
    head = model.bbox_head
    with torch.no_grad():
        outputs = head(model.extract_feats(batch.tensors))
        losses, a = head.loss_and_assignment(outputs, targets, batch.image_sizes)
        assert losses.keys() == head.loss(outputs, targets, batch.image_sizes).keys()
    assert isinstance(head.criterion, DenseCriterion) and isinstance(a, Assignment)
    assert a.gt_index.shape == a.labels.shape == (2, sum(len(p) for p in head.priors(head.level_sizes(outputs), "cpu")))
    assert torch.equal(a.positive, a.gt_index >= 0) and torch.equal(a.valid, a.gt_index != IGNORE)
    assert a.positive.any() and ((a.gt_index == NEGATIVE) | (a.gt_index == IGNORE) | a.positive).all()
    expected_labels, expected_boxes = [], []
    for i, t in enumerate(targets):
        idx = a.gt_index[i][a.positive[i]]
        expected_labels.append(t["labels"][idx])
        expected_boxes.append(t["boxes"][idx])
    assert torch.equal(a.labels[a.positive], torch.cat(expected_labels))
    assert (a.labels[~a.positive] == head.num_classes).all()
    assert torch.equal(a.pos_gt_boxes, torch.cat(expected_boxes))
    assert a.num_pos.item() == a.positive.sum().item()
    assert (a.centerness_targets is not None) == head.has_centerness


def test_fcos_centerness_normaliser_by_hand() -> None:
    head = _model("fcos_r18").bbox_head
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    outputs = [{"cls": torch.zeros(1, 3, h, w)} for h, w in sizes]
    box = torch.tensor([[0.0, 0.0, 20.0, 12.0]])
    a = head.assign(outputs, [{"boxes": box, "labels": torch.tensor([1])}])
    points = torch.cat(head.priors(sizes, "cpu"))[a.positive[0]]
    # Points at (4, 4), (12, 4) on stride 8 lie inside: distances (l, t, r, b) = (4, 4, 16, 8) and (12, 4, 8, 8).
    assert points.tolist() == [[4.0, 4.0], [12.0, 4.0]]
    expected = [(4 / 16 * 4 / 8) ** 0.5, (8 / 12 * 4 / 8) ** 0.5]
    assert a.centerness_targets.tolist() == pytest.approx(expected)
    assert centerness_target(torch.tensor([[4.0, 4.0, 16.0, 8.0]])).item() == pytest.approx(expected[0])
    assert head.criterion.kd_avg_factor(a).item() == pytest.approx(sum(expected))
    assert a.num_pos.item() == 2.0 and (a.labels[a.positive] == 1).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_crosskd_reuses_the_students_assignment(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    student, teacher = _model(FAMILIES[family], 0), _model(FAMILIES[family], 1)
    distiller = build_distiller("crosskd", student, teacher, layer=1)
    calls = []
    criterion = student.bbox_head.criterion
    original = criterion.assign
    monkeypatch.setattr(criterion, "assign", lambda *a, **k: calls.append(1) or original(*a, **k))
    losses = distiller(*_data())
    assert len(calls) == 1 and {"loss_kd_cls", "loss_kd_reg"} <= set(losses)


def test_tadf_retinanet_reuses_the_students_assignment(monkeypatch: pytest.MonkeyPatch) -> None:
    student, teacher = _model("retinanet_r18", 0), _model("retinanet_r18", 1)
    distiller = build_distiller("tadf", student, teacher)
    calls = []
    original = student.bbox_head.criterion.assign
    monkeypatch.setattr(student.bbox_head.criterion, "assign", lambda *a, **k: calls.append(1) or original(*a, **k))
    losses = distiller(*_data())
    assert len(calls) == 1 and {"loss_kd_cls", "loss_kd_reg", "loss_kd_feat"} <= set(losses)
    assert distiller.strides == (8, 16, 32, 64, 128)


def test_kd_settings_live_in_the_family() -> None:
    for family, name in FAMILIES.items():
        head = _model(name).bbox_head
        assert head.kd_defaults["layer"] == (2 if family == "fcos" else 3)
        assert (head.reg_distribution_bins is not None) == (family == "gfl")
    gfl = _model("gfl_r18", reg_max=8).bbox_head
    assert gfl.reg_distribution_bins == 9 and gfl.reg_channels == 36


# --------------------------------------------------------------------------- post-processing
def test_filter_scores_and_topk_by_hand() -> None:
    scores = torch.tensor([[0.1, 0.9], [0.6, 0.02], [0.3, 0.7]])
    kept, prior, label = filter_scores_and_topk(scores, 0.05, 10)
    # Above the threshold, prior-major order.
    assert kept.tolist() == pytest.approx([0.1, 0.9, 0.6, 0.3, 0.7])
    assert prior.tolist() == [0, 0, 1, 2, 2] and label.tolist() == [0, 1, 0, 0, 1]
    kept, prior, label = filter_scores_and_topk(scores, 0.05, 2)  # the 2 best, best first
    assert kept.tolist() == pytest.approx([0.9, 0.7]) and prior.tolist() == [0, 2] and label.tolist() == [1, 1]
    kept, prior, _ = filter_scores_and_topk(scores[:, :1], None, 2)  # RPN: no threshold, top-k only
    assert kept.tolist() == pytest.approx([0.6, 0.3]) and prior.tolist() == [1, 2]


def test_batched_nms_topk_by_hand() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 20.5, 30], [40, 40, 50, 50]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6])
    groups = torch.tensor([0, 0, 1, 0, 0])
    # Box 1 overlaps box 0 (IoU 9/11) in its group; box 2 is in another group; box 3 is 0.5 px wide.
    assert batched_nms_topk(boxes, scores, groups, iou_threshold=0.5, max_num=10, min_bbox_size=0.5).tolist() == [0, 2, 4]
    assert batched_nms_topk(boxes, scores, groups, iou_threshold=0.5, max_num=2, min_bbox_size=None).tolist() == [3, 0]


# ---------------------------------------------------------------------------- output_shape
def test_output_shapes_wire_backbone_fpn_and_heads() -> None:
    dense = _model("gfl_r18")
    assert [(k, s.stride) for k, s in dense.backbone.output_shape().items()] == [("c3", 8), ("c4", 16), ("c5", 32)]
    shape = dense.neck.output_shape()
    assert list(shape) == ["p3", "p4", "p5", "p6", "p7"] and {s.channels for s in shape.values()} == {32}
    assert dense.bbox_head.strides == dense.feature_strides == (8, 16, 32, 64, 128)
    frcnn = kdzoo.create_detector("faster_rcnn_r18", num_classes=3, fpn_channels=32, fc_channels=32)
    assert list(frcnn.neck.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    assert frcnn.rpn_head.strides == frcnn.feature_strides == (4, 8, 16, 32, 64)
    assert frcnn.roi_head.featmap_strides == (4, 8, 16, 32)
    feats = frcnn.extract_feats(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [64 // s for s in frcnn.feature_strides]

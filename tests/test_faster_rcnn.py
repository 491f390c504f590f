"""Faster R-CNN FPN: call convention, MMDetection's RoI level mapping/RoIAlign, sampler, losses,
background-last scores, MMDetection layout, and (slow) overfitting one image."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

import kdzoo
from kdzoo.convert import mmdet_key_map
from kdzoo.faster_rcnn import FasterRCNN, MMDetRoIExtractor, RoIHead, SampledRoIs, faster_rcnn_r18, random_sample

LAYOUT = Path(__file__).resolve().parent / "data" / "mmdet_layouts" / "faster-rcnn_r50_fpn_1x_coco.json"
SMALL = dict(num_classes=3, input_size=(128, 128), fpn_channels=32, fc_channels=64, norm_eval=False, frozen_stages=-1)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test in this module runs on one thread (tests/conftest.py)."""


def small_model(**kw) -> FasterRCNN:
    torch.manual_seed(0)
    return faster_rcnn_r18(**{**SMALL, **kw})


def targets_two_images() -> list[dict]:
    return [{"boxes": torch.tensor([[10.0, 20, 80, 90], [100, 30, 150, 100]]), "labels": torch.tensor([0, 2])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]


def test_eval_outputs_in_each_images_own_coordinates():
    model = small_model().eval()
    images = [torch.rand(3, 160, 200), torch.rand(3, 90, 120)]
    out = model(images)
    assert len(out) == 2
    for det, img in zip(out, images):
        h, w = img.shape[1:]
        n = len(det["boxes"])
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert n <= 100
        if n:
            assert det["boxes"][:, 0::2].max() <= w and det["boxes"][:, 1::2].max() <= h and det["boxes"].min() >= 0
            assert det["scores"].min() > 0.05 and det["labels"].max() < 3
            assert torch.all(det["scores"][:-1] >= det["scores"][1:])  # NMS keeps the best first


def test_train_losses_and_gradients():
    model = small_model().train()
    losses = model([torch.rand(3, 160, 200), torch.rand(3, 120, 150)], targets_two_images())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
    # The fresh RPN (N(0, 0.01) convs) predicts ~0.5 everywhere: BCE ~ log 2.
    assert losses["loss_rpn_cls"].item() == pytest.approx(math.log(2), abs=0.02)
    sum(losses.values()).backward()
    for name in ("rpn_head.rpn_conv.weight", "roi_head.bbox_head.shared_fcs.0.weight", "roi_head.bbox_head.fc_reg.weight",
                 "neck.fpn.inner_blocks.0.0.weight", "backbone.body.conv1.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_roi_level_mapping_is_mmdetections():
    extractor = MMDetRoIExtractor()
    scales = torch.tensor([8.0, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros_like(scales), torch.zeros_like(scales), scales, scales], 1)  # sqrt(w h) = side
    assert extractor.map_levels(boxes).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_roi_align_is_half_pixel_aligned_on_the_mapped_level():
    # P2 (stride 4) holds f(x, y) = x; the RoI [8, 8, 36, 36] (scale 28 -> P2) covers feature x in
    # [2, 9] - 0.5 = [1.5, 8.5]: 7 bins of width 1 whose averages are the bin centres 2, 3, ..., 8.
    feats = [torch.arange(16.0).expand(1, 1, 16, 16)] + [torch.full((1, 1, 16 >> i, 16 >> i), -1.0) for i in (1, 2, 3)]
    pooled = MMDetRoIExtractor()(feats, torch.tensor([[0.0, 8, 8, 36, 36]]))
    assert pooled.shape == (1, 1, 7, 7)
    torch.testing.assert_close(pooled[0, 0], torch.arange(2.0, 9.0).expand(7, 7))
    with pytest.raises(ValueError, match=r"rois must be \[R, 5\]"):
        MMDetRoIExtractor()(feats, torch.zeros(3, 4))


def test_random_sampler_counts():
    assigned = torch.cat([torch.zeros(300, dtype=torch.long), torch.full((1000,), -1), torch.full((50,), -2)])
    pos, neg = random_sample(assigned, 512, 0.25)
    assert (len(pos), len(neg)) == (128, 384) and (assigned[pos] >= 0).all() and (assigned[neg] == -1).all()
    pos, neg = random_sample(assigned[290:], 512, 0.25)  # 10 positives: negatives fill up the rest
    assert (len(pos), len(neg)) == (10, 502)
    assert len(torch.unique(neg)) == len(neg)


def test_roi_sampling_adds_gt_and_encodes_targets():
    head = RoIHead(num_classes=3, in_channels=8, fc_channels=16)
    gt = torch.tensor([[10.0, 10, 50, 50]])
    proposals = [torch.tensor([[10.0, 10, 50, 54], [60, 60, 90, 90], [0, 0, 5, 5]])]
    sampled = head.sample(proposals, [{"boxes": gt, "labels": torch.tensor([2])}])
    # GT itself (IoU 1) and the first proposal (IoU 40*40/(40*44) = 0.909) are positives, first.
    assert sampled.pos_mask.tolist() == [True, True, False, False]
    assert sampled.labels.tolist() == [2, 2, 3, 3]  # background = num_classes
    pos_boxes = sampled.boxes[0][:2]
    order = pos_boxes[:, 3].argsort()  # the sampler shuffles positives: GT (y2=50) then the proposal (y2=54)
    targets = sampled.bbox_targets[:2][order]
    torch.testing.assert_close(targets[0], torch.zeros(4))
    # proposal h = 44, GT h = 40: dy = (30 - 32) / 44 / 0.1, dh = log(40 / 44) / 0.2
    torch.testing.assert_close(targets[1], torch.tensor([0.0, -2 / 44 / 0.1, 0.0, math.log(40 / 44) / 0.2]))
    assert sampled.rois.shape == (4, 5) and sampled.rois[:, 0].eq(0).all()
    torch.testing.assert_close(sampled.gt_boxes[:2], gt.expand(2, 4))


def test_roi_loss_hand_computed():
    head = RoIHead(num_classes=2, in_channels=8, fc_channels=16)
    sampled = SampledRoIs(boxes=[torch.zeros(3, 4)], labels=torch.tensor([1, 0, 2]), gt_boxes=torch.zeros(3, 4),
                          bbox_targets=torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 2], [0, 0, 0, 0]]),
                          pos_mask=torch.tensor([True, True, False]))
    logits = torch.tensor([[0.0, 2, 0], [1, 0, 0], [0, 0, 3]])
    deltas = torch.zeros(3, 8)
    deltas[0, 4:] = torch.tensor([0.5, 0, 0, 0])  # class 1's deltas of RoI 0: |0.5 - 1| = 0.5
    deltas[1, :4] = torch.tensor([0, 0, 0, 1.5])  # class 0's deltas of RoI 1: |1.5 - 2| = 0.5
    deltas[1, 4:] = 100.0  # another class's deltas are ignored
    losses = head.loss(logits, deltas, sampled)
    ce = -(F.log_softmax(logits, -1)[[0, 1, 2], [1, 0, 2]]).mean()
    torch.testing.assert_close(losses["loss_cls"], ce)
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(1.0 / 3))  # L1 sum over positives / all 3 RoIs


@pytest.mark.parametrize("bias, expect_label", [([0.0, 0.0, 0.0, 10.0], None), ([0.0, 10.0, 0.0, 0.0], 1)])
def test_background_is_the_last_logit(bias, expect_label):
    model = small_model().eval()
    fc_cls, fc_reg = model.roi_head.bbox_head.fc_cls, model.roi_head.bbox_head.fc_reg
    with torch.no_grad():
        fc_cls.weight.zero_()
        fc_cls.bias.copy_(torch.tensor(bias))
        fc_reg.weight.zero_()
        fc_reg.bias.zero_()
    image = torch.rand(3, 128, 128)
    det = model([image])[0]
    if expect_label is None:
        assert len(det["boxes"]) == 0  # background takes e^10 / (e^10 + 3) of every RoI
    else:
        assert len(det["boxes"]) > 0 and (det["labels"] == expect_label).all()
        torch.testing.assert_close(det["scores"], torch.full_like(det["scores"], math.exp(10) / (math.exp(10) + 3)))
        # zero deltas: detections are the RPN's proposals themselves
        batch, _ = model.preprocess([image])
        proposals = model.rpn_proposals(model.extract_feats(batch.tensors), batch.image_sizes)[0]
        assert (det["boxes"][:, None] - proposals[None]).abs().amax(-1).amin(1).max() < 1e-3


def test_state_dict_maps_one_to_one_onto_mmdetection_layout():
    layout = json.loads(LAYOUT.read_text())["state_dict"]
    model = kdzoo.create_detector("faster_rcnn_r50")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapping = mmdet_key_map(list(layout), model)
    assert len(set(mapping.values())) == len(layout) == len(own)
    assert {mapping[k]: tuple(shape) for k, shape in layout.items()} == own


def test_rebuild_from_build_kwargs_and_errors():
    model = kdzoo.create_detector("faster_rcnn_r18", **SMALL)
    again = kdzoo.create_detector(model.arch_name, **model.build_kwargs)
    assert again.state_dict().keys() == model.state_dict().keys() and again.num_classes == 3
    model.train()
    with pytest.raises(ValueError, match="expected 0-based class indices below num_classes=3"):
        model([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match="targets are required"):
        model([torch.rand(3, 64, 64)])
    with pytest.raises(TypeError, match="list of"):
        model.eval()(torch.rand(2, 3, 64, 64))


@pytest.mark.slow
def test_overfits_one_image():
    torch.manual_seed(0)
    model = faster_rcnn_r18(num_classes=2, input_size=(128, 128), fpn_channels=64, fc_channels=256, norm_eval=False,
                            frozen_stages=-1)
    image = torch.full((3, 128, 128), 0.5)
    image[:, 20:60, 16:70] = torch.tensor([1.0, 0, 0])[:, None, None]
    image[:, 70:118, 80:112] = torch.tensor([0, 0, 1.0])[:, None, None]
    target = {"boxes": torch.tensor([[16.0, 20, 70, 60], [80, 70, 112, 118]]), "labels": torch.tensor([0, 1])}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(60):
        loss = sum(model.train()([image], [target]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    det = model.eval()([image])[0]
    for box, label in zip(target["boxes"], target["labels"]):
        hit = (det["labels"] == label) & (det["scores"] > 0.5)
        assert hit.any(), f"class {int(label)} not found with score > 0.5"
        assert box_iou(det["boxes"][hit], box[None]).max() > 0.7


def test_save_pretrained_round_trip(tmp_path):
    model = kdzoo.create_detector("faster_rcnn_r18", **SMALL).eval()
    model.save_pretrained(str(tmp_path))
    again = kdzoo.create_detector(f"local-dir:{tmp_path}", pretrained=True).eval()
    image = [torch.rand(3, 100, 120)]
    a, b = model(image)[0], again(image)[0]
    assert isinstance(again, FasterRCNN) and torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])

"""GFL (Li et al. 2020) with MMDetection's defaults: ATSS anchors and assignment, a joint
class-IoU score trained with quality focal loss, box sides as 17-bin distributions
(reg_max 16) decoded by their expectation and trained with DFL (0.25) and GIoU (2.0)
weighted by the predicted score, NMS 0.6."""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn

from .assigners import ATSSAssigner
from .box_ops import Integral, aligned_iou, bbox2distance, distance2bbox
from .builder import build_dense_detector, build_detector_with_cfg
from .criterion import Assignment, DenseCriterion
from .dense_head import DenseHead, LevelOutputs
from .detector import DenseDetector
from .layers import Scale
from .losses import distribution_focal_loss, giou_loss, quality_focal_loss
from .priors import AnchorGenerator, anchor_centers
from .published import crosskd_cfg, mmdet_cfg
from .registry import register_alias, register_detector, register_pretrained_cfgs

__all__ = ["GFLHead", "GFLCriterion"]


class GFLCriterion(DenseCriterion):
    """ATSS assignment; quality focal loss on a joint class-IoU score, GIoU and DFL on the
    positives weighted by the predicted score, everything in units of the prior's stride."""

    def __init__(self, num_classes: int, *, integral: Integral, topk: int = 9, qfl_beta: float = 2.0,
                 loss_weights: dict[str, float]) -> None:
        super().__init__(num_classes, loss_weights=loss_weights)
        self.assigner = ATSSAssigner(topk)
        self.integral = integral  # the head's module: a plain reference keeps its buffer in the head's state dict
        self.reg_max = integral.reg_max
        self.qfl_beta = qfl_beta

    def assign_single(self, level_priors: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        return self.assigner(torch.cat(level_priors), [len(p) for p in level_priors], boxes)

    def loss(self, flat: dict[str, torch.Tensor], priors: torch.Tensor, strides: torch.Tensor,
             assignment: Assignment) -> dict[str, torch.Tensor]:
        pos, n = assignment.positive, len(assignment.positive)
        # Everything below is in units of the prior's stride, as in MMDetection.
        s = strides[None].expand(n, -1)[pos][:, None]
        centers = anchor_centers(priors[None].expand(n, -1, -1)[pos]) / s
        gt = assignment.pos_gt_boxes / s
        reg = flat["reg"][pos]
        pred_boxes = distance2bbox(centers, self.integral(reg))
        scores = torch.zeros(pos.shape, device=priors.device)
        scores[pos] = aligned_iou(pred_boxes.detach(), gt).clamp(min=0)
        weight = flat["cls"][pos].detach().sigmoid().amax(1)
        losses = {"loss_cls": self.loss_weights["cls"] * self.loss_cls(flat["cls"], assignment, scores=scores)}
        if assignment.positive.any():
            w_avg = self.avg_factor(weight.sum(), priors.device)
            loss_bbox = self.loss_bbox(pred_boxes, gt, weight, w_avg)
            # MMDetection's DistancePointBBoxCoder.encode clamps DFL targets to reg_max - 0.1.
            loss_dfl = self.loss_dfl(reg, bbox2distance(centers, gt, self.reg_max), weight, w_avg)
        else:
            loss_bbox = loss_dfl = reg.sum() * 0
        losses["loss_bbox"] = self.loss_weights["bbox"] * loss_bbox
        losses["loss_dfl"] = self.loss_weights["dfl"] * loss_dfl
        return losses

    def loss_cls(self, cls: torch.Tensor, assignment: Assignment, *, scores: torch.Tensor) -> torch.Tensor:
        """QFL against the IoU-valued ``scores`` [N, P] over the valid priors, averaged by the positives."""
        qfl = quality_focal_loss(cls.reshape(-1, self.num_classes), assignment.labels.reshape(-1), scores.reshape(-1),
                                 self.qfl_beta)
        return (qfl * assignment.valid.reshape(-1)).sum() / assignment.num_pos

    @staticmethod
    def loss_bbox(pred_boxes: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor, w_avg: torch.Tensor) -> torch.Tensor:
        """GIoU on the positives, weighted by the predicted score and averaged by its sum."""
        return (giou_loss(pred_boxes, gt) * weight).sum() / w_avg

    def loss_dfl(self, reg: torch.Tensor, dist_targets: torch.Tensor, weight: torch.Tensor,
                 w_avg: torch.Tensor) -> torch.Tensor:
        """DFL per side, weighted like the GIoU term; the four sides are averaged."""
        dfl = distribution_focal_loss(reg.reshape(-1, self.reg_max + 1), dist_targets.reshape(-1))
        return (dfl * weight[:, None].expand(-1, 4).reshape(-1)).sum() / 4.0 / w_avg


class GFLHead(DenseHead):
    kd_defaults = dict(layer=3, cls=1.0, reg=4.0, centerness=0.0, pkd=6.0)
    classifier = "gfl_cls"  # the layer sized by num_classes (left out of weights for another class count)

    def __init__(self, num_classes: int, *, reg_max: int = 16, topk: int = 9, loss_cls_weight: float = 1.0,
                 loss_bbox_weight: float = 2.0, loss_dfl_weight: float = 0.25, qfl_beta: float = 2.0, **kwargs: Any) -> None:
        self.anchor_generator = AnchorGenerator(kwargs.get("strides", (8, 16, 32, 64, 128)), ratios=(1.0,),
                                                octave_base_scale=8, scales_per_octave=1)
        super().__init__(num_classes, num_anchors=1, **kwargs)
        self.reg_max = reg_max
        self.reg_channels = 4 * (reg_max + 1)
        self.reg_distribution_bins = reg_max + 1
        self.gfl_cls = nn.Conv2d(self.feat_channels, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(self.feat_channels, self.reg_channels, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.integral = Integral(reg_max)
        self.criterion = GFLCriterion(num_classes, integral=self.integral, topk=topk, qfl_beta=qfl_beta,
                                      loss_weights={"cls": loss_cls_weight, "bbox": loss_bbox_weight, "dfl": loss_dfl_weight})
        self.init_weights(self.gfl_cls)

    def predict_level(self, cls_feat: torch.Tensor, reg_feat: torch.Tensor, level: int) -> LevelOutputs:
        return {"cls": self.gfl_cls(cls_feat), "reg": self.scales[level](self.gfl_reg(reg_feat)).float()}

    def priors(self, sizes, device):
        return self.anchor_generator(sizes, device)

    def decode(self, reg, priors, strides, max_shape=None):
        """Distribution logits -> expected side distances (in strides) -> boxes in pixels."""
        return distance2bbox(anchor_centers(priors), self.integral(reg) * strides[:, None], max_shape)


# What every gfl entry point builds; the recipe checker reads its keyword arguments from it.
BUILD_FN = partial(build_dense_detector, GFLHead)


def _create(arch: str, backbone: str, pretrained: bool, defaults: dict[str, Any] | None = None,
            **kwargs: Any) -> DenseDetector:
    return build_detector_with_cfg(partial(BUILD_FN, backbone=backbone), arch, pretrained=pretrained,
                                   defaults={"nms_iou": 0.6, **(defaults or {})}, **kwargs)


@register_detector
def gfl_r50(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, ResNet-50 FPN (MMDetection ``gfl_r50_fpn_1x_coco``; the CrossKD GFL student, tag ``crosskd_coco``)."""
    return _create("gfl_r50", "resnet50", pretrained, **kwargs)


@register_detector
def gfl_r101(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, ResNet-101 FPN (MMDetection ``gfl_r101_fpn_ms-2x_coco``)."""
    return _create("gfl_r101", "resnet101", pretrained, **kwargs)


@register_detector
def gfl_r18(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, ResNet-18 FPN-128: a CPU-friendly student."""
    return _create("gfl_r18", "resnet18", pretrained, dict(fpn_channels=128), **kwargs)


@register_detector
def gfl_r10t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, ResNet-10-T FPN-128: the shapes teacher (7.0 M parameters, 14 MB in fp16)."""
    return _create("gfl_r10t", "resnet10t", pretrained, dict(fpn_channels=128), **kwargs)


@register_detector
def gfl_mnv3s(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, MobileNetV3-Small FPN-48: the shapes student (1.2 M parameters), heterogeneous to gfl_r10t."""
    return _create("gfl_mnv3s", "mobilenetv3_small_100", pretrained, dict(fpn_channels=48), **kwargs)


@register_detector
def gfl_mnv3(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, MobileNetV3-Large FPN-128: a heterogeneous student."""
    return _create("gfl_mnv3", "mobilenetv3_large_100", pretrained, dict(fpn_channels=128), **kwargs)


@register_detector
def gfl_effb0(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, EfficientNet-B0 FPN-128: a heterogeneous student."""
    return _create("gfl_effb0", "efficientnet_b0", pretrained, dict(fpn_channels=128), **kwargs)


@register_detector
def gfl_convnext_t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, ConvNeXt-T FPN: a heterogeneous teacher."""
    return _create("gfl_convnext_t", "convnext_tiny", pretrained, dict(norm_eval=False), **kwargs)


register_pretrained_cfgs({
    "gfl_r50.mmdet_coco": mmdet_cfg("gfl", "gfl_r50_fpn_1x_coco", "gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth", 40.2),
    "gfl_r50.crosskd_coco": crosskd_cfg("gfl_r101.mmdet_coco", 43.7, "1S7fyDkFSAauJry0ZGS-ZW-P3CJb7RlsO",
                                        "crosskd_r50_gflv1_r101-2x-ms_fpn_1x_coco"),
    "gfl_r50.crosskd_pkd_coco": crosskd_cfg("gfl_r101.mmdet_coco", 43.9, "1LJZ27al2omdXb3cUty-RX37pMLp8L-4B",
                                            "crosskd+pkd_r50_gflv1_r101-2x-ms_fpn_1x_coco"),
    "gfl_r101.mmdet_coco": mmdet_cfg("gfl", "gfl_r101_fpn_mstrain_2x_coco",
                                     "gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth", 44.7),
})
# The name the mission and the hub use for the released CrossKD GFL student.
register_alias("gfl_r50_crosskd", "gfl_r50.crosskd_coco")

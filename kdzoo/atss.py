"""ATSS (Zhang et al. 2020) with MMDetection's defaults: one square anchor of 8 x stride per
location, ATSS top-9 assignment, focal loss, GIoU on decoded boxes weighted by centerness
targets (x2), centerness from the regression tower, NMS 0.6."""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn

from .assigners import ATSSAssigner
from .box_ops import DeltaXYWHCoder
from .builder import build_dense_detector, build_detector_with_cfg
from .criterion import Assignment, CenternessCriterion
from .dense_head import DenseHead, LevelOutputs
from .detector import DenseDetector
from .fcos import centerness_target, side_distances
from .layers import Scale
from .losses import giou_loss
from .priors import AnchorGenerator, anchor_centers
from .published import crosskd_cfg, mmdet_cfg
from .registry import register_alias, register_detector, register_pretrained_cfgs

__all__ = ["ATSSHead", "ATSSCriterion"]


class ATSSCriterion(CenternessCriterion):
    """ATSS assignment; focal loss, GIoU on decoded boxes weighted by the centerness targets and
    centerness BCE on the positives."""

    def __init__(self, num_classes: int, *, coder: DeltaXYWHCoder, topk: int = 9, loss_weights: dict[str, float]) -> None:
        super().__init__(num_classes, loss_weights=loss_weights)
        self.assigner = ATSSAssigner(topk)
        self.coder = coder

    def assign_single(self, level_priors: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        return self.assigner(torch.cat(level_priors), [len(p) for p in level_priors], boxes)

    def centerness_targets(self, pos_priors: torch.Tensor, pos_gt_boxes: torch.Tensor) -> torch.Tensor:
        return centerness_target(side_distances(anchor_centers(pos_priors), pos_gt_boxes))

    def loss_bbox(self, pos_priors: torch.Tensor, pos_pred: torch.Tensor, assignment: Assignment) -> torch.Tensor:
        """GIoU of the decoded boxes weighted by the centerness targets, averaged by their sum."""
        pos_boxes = self.coder.decode(pos_priors, pos_pred)
        return (giou_loss(pos_boxes, assignment.pos_gt_boxes) * assignment.centerness_targets).sum() / assignment.centerness_avg


class ATSSHead(DenseHead):
    has_centerness = True
    kd_defaults = dict(layer=3, cls=1.0, reg=1.0, centerness=1.0, pkd=1.0)
    classifier = "atss_cls"  # the layer sized by num_classes (left out of weights for another class count)

    def __init__(self, num_classes: int, *, topk: int = 9, loss_cls_weight: float = 1.0, loss_bbox_weight: float = 2.0,
                 loss_centerness_weight: float = 1.0, **kwargs: Any) -> None:
        self.anchor_generator = AnchorGenerator(kwargs.get("strides", (8, 16, 32, 64, 128)), ratios=(1.0,),
                                                octave_base_scale=8, scales_per_octave=1)
        super().__init__(num_classes, num_anchors=1, **kwargs)
        self.atss_cls = nn.Conv2d(self.feat_channels, num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(self.feat_channels, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(self.feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.coder = DeltaXYWHCoder((0.1, 0.1, 0.2, 0.2))
        self.criterion = ATSSCriterion(num_classes, coder=self.coder, topk=topk, loss_weights={
            "cls": loss_cls_weight, "bbox": loss_bbox_weight, "centerness": loss_centerness_weight})
        self.init_weights(self.atss_cls)

    def predict_level(self, cls_feat: torch.Tensor, reg_feat: torch.Tensor, level: int) -> LevelOutputs:
        return {"cls": self.atss_cls(cls_feat), "reg": self.scales[level](self.atss_reg(reg_feat)).float(),
                "centerness": self.atss_centerness(reg_feat)}

    def priors(self, sizes, device):
        return self.anchor_generator(sizes, device)

    def decode(self, reg, priors, strides, max_shape=None):
        return self.coder.decode(priors, reg, max_shape)


# What every atss entry point builds; the recipe checker reads its keyword arguments from it.
BUILD_FN = partial(build_dense_detector, ATSSHead)


def _create(arch: str, backbone: str, pretrained: bool, defaults: dict[str, Any] | None = None,
            **kwargs: Any) -> DenseDetector:
    return build_detector_with_cfg(partial(BUILD_FN, backbone=backbone), arch, pretrained=pretrained,
                                   defaults={"nms_iou": 0.6, **(defaults or {})}, **kwargs)


@register_detector
def atss_r50(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """ATSS, ResNet-50 FPN (MMDetection ``atss_r50_fpn_1x_coco``; the CrossKD ATSS student, tag ``crosskd_coco``)."""
    return _create("atss_r50", "resnet50", pretrained, **kwargs)


@register_detector
def atss_r101(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """ATSS, ResNet-101 FPN (MMDetection ``atss_r101_fpn_1x_coco``)."""
    return _create("atss_r101", "resnet101", pretrained, **kwargs)


@register_detector
def atss_r18(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """ATSS, ResNet-18 FPN-128: a CPU-friendly student."""
    return _create("atss_r18", "resnet18", pretrained, dict(fpn_channels=128), **kwargs)


@register_detector
def atss_r10t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """ATSS, ResNet-10-T FPN-128: a shapes teacher."""
    return _create("atss_r10t", "resnet10t", pretrained, dict(fpn_channels=128), **kwargs)


@register_detector
def atss_mnv3s(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """ATSS, MobileNetV3-Small FPN-48: a shapes student, heterogeneous to atss_r10t."""
    return _create("atss_mnv3s", "mobilenetv3_small_100", pretrained, dict(fpn_channels=48), **kwargs)


@register_detector
def atss_convnext_t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """ATSS, ConvNeXt-T FPN: a heterogeneous teacher."""
    return _create("atss_convnext_t", "convnext_tiny", pretrained, dict(norm_eval=False), **kwargs)


register_pretrained_cfgs({
    "atss_r50.mmdet_coco": mmdet_cfg("atss", "atss_r50_fpn_1x_coco", "atss_r50_fpn_1x_coco_20200209-985f7bd0.pth", 39.4),
    "atss_r50.crosskd_coco": crosskd_cfg("atss_r101.mmdet_coco", 41.8, "1qyxOMaxQrwJ20tEgIwU8pi31O8A1hsEG",
                                         "crosskd_r50_atss_r101_fpn_1x_coco"),
    "atss_r50.crosskd_pkd_coco": crosskd_cfg("atss_r101.mmdet_coco", 41.8, "1LkuKau1Na843ZPSNz77DqV8v8111b2_y",
                                             "crosskd+pkd_r50_atss_r101_fpn_1x_coco"),
    "atss_r101.mmdet_coco": mmdet_cfg("atss", "atss_r101_fpn_1x_coco", "atss_r101_fpn_1x_20200825-dfcadd6f.pth", 41.5),
})
register_alias("atss_r50_crosskd", "atss_r50.crosskd_coco")

"""FCOS (Tian et al. 2019) with MMDetection's ``fcos_r50-caffe_fpn_gn-head`` defaults: GN head,
points at cell centres, size ranges per level, exp() distances in pixels, focal loss, IoU
loss weighted by centerness targets, centerness from the classification tower, NMS 0.5."""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn

from .assigners import fcos_assign
from .box_ops import distance2bbox
from .builder import build_dense_detector, build_detector_with_cfg
from .criterion import Assignment, CenternessCriterion
from .dense_head import DenseHead, LevelOutputs
from .detector import DenseDetector
from .layers import Scale
from .losses import iou_loss
from .priors import PointGenerator
from .published import CAFFE_INPUT, crosskd_cfg, mmdet_cfg
from .registry import register_alias, register_detector, register_pretrained_cfgs

__all__ = ["FCOSHead", "FCOSCriterion", "centerness_target", "side_distances"]

INF = 1e8


def centerness_target(distances: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for (l, t, r, b) distances."""
    lr, tb = distances[:, 0::2], distances[:, 1::2]
    c = (lr.amin(-1) / lr.amax(-1).clamp(min=1e-12)) * (tb.amin(-1) / tb.amax(-1).clamp(min=1e-12))
    return c.clamp(min=0).sqrt()


def side_distances(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(l, t, r, b) distances from ``points`` [K, 2] to the sides of ``boxes`` [K, 4]."""
    return torch.cat([points - boxes[:, :2], boxes[:, 2:] - points], 1)


class FCOSCriterion(CenternessCriterion):
    """FCOS assignment (size ranges per level); focal loss, IoU loss on the positives weighted by
    the centerness targets and centerness BCE."""

    centerness_avg_minimum = 1e-6
    kd_box_loss = staticmethod(iou_loss)

    def __init__(self, num_classes: int, *, regress_ranges: tuple[tuple[float, float], ...],
                 loss_weights: dict[str, float]) -> None:
        super().__init__(num_classes, loss_weights=loss_weights)
        self.regress_ranges = regress_ranges

    def assign_single(self, level_priors: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        points = torch.cat(level_priors)
        ranges = torch.cat([points.new_tensor(r).expand(len(p), 2) for r, p in zip(self.regress_ranges, level_priors)])
        return fcos_assign(points, ranges, boxes)

    def centerness_targets(self, pos_priors: torch.Tensor, pos_gt_boxes: torch.Tensor) -> torch.Tensor:
        return centerness_target(side_distances(pos_priors, pos_gt_boxes))

    def loss_bbox(self, pos_points: torch.Tensor, pos_pred: torch.Tensor, assignment: Assignment) -> torch.Tensor:
        """IoU loss weighted by the centerness targets, averaged by their sum."""
        pos_target = side_distances(pos_points, assignment.pos_gt_boxes)
        ious = iou_loss(distance2bbox(pos_points, pos_pred), distance2bbox(pos_points, pos_target))
        return (ious * assignment.centerness_targets).sum() / assignment.centerness_avg

    def kd_avg_factor(self, assignment: Assignment) -> torch.Tensor:
        """CrossKD's reference averages FCOS's KD terms by the bbox loss's normaliser."""
        return assignment.centerness_avg


class FCOSHead(DenseHead):
    has_centerness = True
    uses_valid_flags = False  # MMDetection's FCOS assigns every point, padding included
    kd_defaults = dict(layer=2, cls=0.4, reg=0.75, centerness=0.0, pkd=2.0)
    classifier = "conv_cls"  # the layer sized by num_classes (left out of weights for another class count)

    def __init__(self, num_classes: int, *, regress_ranges: tuple[tuple[float, float], ...] | None = None,
                 loss_cls_weight: float = 1.0, loss_bbox_weight: float = 1.0, loss_centerness_weight: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        self.conv_cls = nn.Conv2d(self.feat_channels, num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(self.feat_channels, 4, 3, padding=1)
        self.conv_centerness = nn.Conv2d(self.feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.point_generator = PointGenerator(self.strides)
        self.regress_ranges = regress_ranges or ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF))
        if len(self.regress_ranges) != len(self.strides):
            raise ValueError(f"regress_ranges has {len(self.regress_ranges)} entries for {len(self.strides)} levels")
        self.criterion = FCOSCriterion(num_classes, regress_ranges=self.regress_ranges, loss_weights={
            "cls": loss_cls_weight, "bbox": loss_bbox_weight, "centerness": loss_centerness_weight})
        self.init_weights(self.conv_cls)

    def predict_level(self, cls_feat: torch.Tensor, reg_feat: torch.Tensor, level: int) -> LevelOutputs:
        reg = self.scales[level](self.conv_reg(reg_feat)).float().exp()
        return {"cls": self.conv_cls(cls_feat), "reg": reg, "centerness": self.conv_centerness(cls_feat)}

    def priors(self, sizes, device):
        return self.point_generator(sizes, device)

    def decode(self, reg, priors, strides, max_shape=None):
        return distance2bbox(priors, reg, max_shape)


# What every fcos entry point builds; the recipe checker reads its keyword arguments from it.
BUILD_FN = partial(build_dense_detector, FCOSHead)


def _create(arch: str, backbone: str, pretrained: bool, defaults: dict[str, Any] | None = None,
            **kwargs: Any) -> DenseDetector:
    return build_detector_with_cfg(partial(BUILD_FN, backbone=backbone), arch, pretrained=pretrained,
                                   defaults={"add_extra_convs": "on_output", "relu_before_extra_convs": True, "nms_iou": 0.5, **(defaults or {})}, **kwargs)


@register_detector
def fcos_r50(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """FCOS, caffe ResNet-50 FPN, GN head (MMDetection ``fcos_r50-caffe_fpn_gn-head_1x_coco``; the CrossKD FCOS student, tag ``crosskd_coco``)."""
    return _create("fcos_r50", "resnet50", pretrained, dict(style="caffe", freeze_norm=True), **kwargs)


@register_detector
def fcos_r101(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """FCOS, caffe ResNet-101 FPN, GN head (MMDetection ``fcos_r101-caffe_fpn_gn-head_ms-640-800-2x_coco``)."""
    return _create("fcos_r101", "resnet101", pretrained, dict(style="caffe", freeze_norm=True), **kwargs)


@register_detector
def fcos_r18(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """FCOS, ResNet-18 FPN-128: a CPU-friendly student."""
    return _create("fcos_r18", "resnet18", pretrained, dict(fpn_channels=128), **kwargs)


@register_detector
def fcos_mnv3(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """FCOS, MobileNetV3-Large FPN-128: a heterogeneous student."""
    return _create("fcos_mnv3", "mobilenetv3_large_100", pretrained, dict(fpn_channels=128), **kwargs)


@register_detector
def fcos_convnext_t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """FCOS, ConvNeXt-T FPN: a heterogeneous teacher."""
    return _create("fcos_convnext_t", "convnext_tiny", pretrained, dict(norm_eval=False), **kwargs)


# MMDetection's FCOS checkpoints use caffe-style ResNets (frozen BatchNorm) fed BGR images.
register_pretrained_cfgs({
    "fcos_r50.mmdet_coco": mmdet_cfg("fcos", "fcos_r50_caffe_fpn_gn-head_1x_coco",
                                     "fcos_r50_caffe_fpn_gn-head_1x_coco-821213aa.pth", 36.6, **CAFFE_INPUT),
    "fcos_r50.mmdet_coco_ms2x": mmdet_cfg("fcos", "fcos_r50_caffe_fpn_gn-head_mstrain_640-800_2x_coco",
                                          "fcos_r50_caffe_fpn_gn-head_mstrain_640-800_2x_coco-d92ceeea.pth", 38.5, **CAFFE_INPUT),
    "fcos_r50.crosskd_coco": crosskd_cfg("fcos_r101.mmdet_coco", 41.1, "1ll5vOGFMEfOsNCkgbPuqh0uMNFnfICbE",
                                         "crosskd_r50_fcos_r101-2x-ms_caffe_fpn_gn-head_2x_ms_coco", **CAFFE_INPUT),
    "fcos_r50.crosskd_pkd_coco": crosskd_cfg("fcos_r101.mmdet_coco", 41.3, "1r-UzxAOYOfPJFIV5e7Rd3P3uC9gXP09v",
                                             "crosskd+pkd_r50_fcos_r101-2x-ms_caffe_fpn_gn-head_2x_ms_coco", **CAFFE_INPUT),
    "fcos_r101.mmdet_coco": mmdet_cfg("fcos", "fcos_r101_caffe_fpn_gn-head_mstrain_640-800_2x_coco",
                                      "fcos_r101_caffe_fpn_gn-head_mstrain_640-800_2x_coco-511424d6.pth", 40.8, **CAFFE_INPUT),
})
register_alias("fcos_r50_crosskd", "fcos_r50.crosskd_coco")

"""FCOS (Tian et al. 2019) with MMDetection's ``fcos_r50-caffe_fpn_gn-head`` defaults: GN head,
points at cell centres, size ranges per level, exp() distances in pixels, focal loss, IoU
loss weighted by centerness targets, centerness from the classification tower, NMS 0.5."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .assigners import fcos_assign
from .box_ops import distance2bbox
from .builder import build_dense_detector
from .dense_head import DenseHead, LevelOutputs
from .detector import DenseDetector
from .layers import Scale
from .losses import focal_loss, iou_loss, one_hot
from .pretrained import PretrainedCfg
from .priors import PointGenerator
from .registry import register_detector, register_pretrained_cfgs

__all__ = ["FCOSHead", "centerness_target"]

INF = 1e8


def centerness_target(distances: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for (l, t, r, b) distances."""
    lr, tb = distances[:, 0::2], distances[:, 1::2]
    c = (lr.amin(-1) / lr.amax(-1).clamp(min=1e-12)) * (tb.amin(-1) / tb.amax(-1).clamp(min=1e-12))
    return c.clamp(min=0).sqrt()


class FCOSHead(DenseHead):
    has_centerness = True
    uses_valid_flags = False  # MMDetection's FCOS assigns every point, padding included

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
        self.loss_weights = {"cls": loss_cls_weight, "bbox": loss_bbox_weight, "centerness": loss_centerness_weight}
        self.init_weights(self.conv_cls)

    def predict_level(self, cls_feat: torch.Tensor, reg_feat: torch.Tensor, level: int) -> LevelOutputs:
        reg = self.scales[level](self.conv_reg(reg_feat)).float().exp()
        return {"cls": self.conv_cls(cls_feat), "reg": reg, "centerness": self.conv_centerness(cls_feat)}

    def priors(self, sizes, device):
        return self.point_generator(sizes, device)

    def decode(self, reg, priors, strides, max_shape=None):
        return distance2bbox(priors, reg, max_shape)

    def assign_single(self, level_priors, boxes):
        points = torch.cat(level_priors)
        ranges = torch.cat([points.new_tensor(r).expand(len(p), 2) for r, p in zip(self.regress_ranges, level_priors)])
        return fcos_assign(points, ranges, boxes)

    def loss(self, outputs, targets, image_sizes):
        points = torch.cat(self.priors(self.level_sizes(outputs), outputs[0]["cls"].device))
        flat = self.flatten(outputs)
        all_labels, pos_pred, pos_target, pos_points, pos_ctr = [], [], [], [], []
        for i, (t, assigned) in enumerate(zip(targets, self.assign(outputs, targets))):
            pos = assigned >= 0
            labels = torch.full_like(assigned, self.num_classes)
            labels[pos] = t["labels"][assigned[pos]]
            all_labels.append(labels)
            gt = t["boxes"][assigned[pos]]
            pp = points[pos]
            pos_target.append(torch.cat([pp - gt[:, :2], gt[:, 2:] - pp], 1))
            pos_pred.append(flat["reg"][i][pos])
            pos_points.append(pp)
            pos_ctr.append(flat["centerness"][i][pos])
        labels = torch.cat(all_labels)
        num_pos = int((labels < self.num_classes).sum())
        avg = self.avg_factor(num_pos, points.device)
        loss_cls = focal_loss(flat["cls"].reshape(-1, self.num_classes), one_hot(labels, self.num_classes)).sum() / avg
        pos_pred, pos_target = torch.cat(pos_pred), torch.cat(pos_target)
        pos_points, pos_ctr = torch.cat(pos_points), torch.cat(pos_ctr)
        if num_pos:
            ctr_t = centerness_target(pos_target)
            ctr_avg = self.avg_factor(ctr_t.sum().detach(), points.device, minimum=1e-6)
            ious = iou_loss(distance2bbox(pos_points, pos_pred), distance2bbox(pos_points, pos_target))
            loss_bbox = (ious * ctr_t).sum() / ctr_avg
            loss_ctr = F.binary_cross_entropy_with_logits(pos_ctr, ctr_t, reduction="sum") / avg
        else:
            loss_bbox = pos_pred.sum() * 0
            loss_ctr = pos_ctr.sum() * 0
        return {
            "loss_cls": self.loss_weights["cls"] * loss_cls,
            "loss_bbox": self.loss_weights["bbox"] * loss_bbox,
            "loss_centerness": self.loss_weights["centerness"] * loss_ctr,
        }


def _create(backbone: str, **kwargs: Any) -> DenseDetector:
    kwargs.setdefault("add_extra_convs", "on_output")
    kwargs.setdefault("relu_before_extra_convs", True)
    kwargs.setdefault("nms_iou", 0.5)
    return build_dense_detector(FCOSHead, backbone=backbone, **kwargs)


# MMDetection's FCOS checkpoints use caffe-style ResNets fed BGR images with the caffe mean and
# unit std, and frozen BatchNorm (requires_grad=False).
_CAFFE = dict(mean=(102.9801, 115.9465, 122.7717), std=(1.0, 1.0, 1.0), bgr=True)
register_pretrained_cfgs({
    "fcos_r50": PretrainedCfg(**_CAFFE, paper="https://arxiv.org/abs/1904.01355"),
    "fcos_r101": PretrainedCfg(**_CAFFE, paper="https://arxiv.org/abs/1904.01355"),
})


@register_detector
def fcos_r50(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """FCOS, caffe ResNet-50 FPN, GN head (MMDetection ``fcos_r50-caffe_fpn_gn-head_1x_coco``)."""
    kwargs.setdefault("style", "caffe")
    kwargs.setdefault("freeze_norm", True)
    return _create("resnet50", pretrained=pretrained, **kwargs)


@register_detector
def fcos_r101(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """FCOS, caffe ResNet-101 FPN, GN head (MMDetection ``fcos_r101-caffe_fpn_gn-head_ms-640-800-2x_coco``)."""
    kwargs.setdefault("style", "caffe")
    kwargs.setdefault("freeze_norm", True)
    return _create("resnet101", pretrained=pretrained, **kwargs)


@register_detector
def fcos_r18(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """FCOS, ResNet-18 FPN-128: a CPU-friendly student."""
    kwargs.setdefault("fpn_channels", 128)
    return _create("resnet18", pretrained=pretrained, **kwargs)


@register_detector
def fcos_mnv3(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """FCOS, MobileNetV3-Large FPN-128: a heterogeneous student."""
    kwargs.setdefault("fpn_channels", 128)
    return _create("mobilenetv3_large_100", pretrained=pretrained, **kwargs)


@register_detector
def fcos_convnext_t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """FCOS, ConvNeXt-T FPN: a heterogeneous teacher."""
    kwargs.setdefault("norm_eval", False)
    return _create("convnext_tiny", pretrained=pretrained, **kwargs)

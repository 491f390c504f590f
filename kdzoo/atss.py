"""ATSS (Zhang et al. 2020) with MMDetection's defaults: one square anchor of 8 x stride per
location, ATSS top-9 assignment, focal loss, GIoU on decoded boxes weighted by centerness
targets (x2), centerness from the regression tower, NMS 0.6."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .assigners import IGNORE, ATSSAssigner
from .box_ops import DeltaXYWHCoder
from .builder import build_dense_detector
from .dense_head import DenseHead, LevelOutputs
from .detector import DenseDetector
from .fcos import centerness_target
from .layers import Scale
from .losses import focal_loss, giou_loss, one_hot
from .priors import AnchorGenerator, anchor_centers
from .registry import register_detector

__all__ = ["ATSSHead"]


class ATSSHead(DenseHead):
    has_centerness = True

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
        self.assigner = ATSSAssigner(topk)
        self.loss_weights = {"cls": loss_cls_weight, "bbox": loss_bbox_weight, "centerness": loss_centerness_weight}
        self.init_weights(self.atss_cls)

    def predict_level(self, cls_feat: torch.Tensor, reg_feat: torch.Tensor, level: int) -> LevelOutputs:
        return {"cls": self.atss_cls(cls_feat), "reg": self.scales[level](self.atss_reg(reg_feat)).float(),
                "centerness": self.atss_centerness(reg_feat)}

    def priors(self, sizes, device):
        return self.anchor_generator(sizes, device)

    def decode(self, reg, priors, strides, max_shape=None):
        return self.coder.decode(priors, reg, max_shape)

    def assign_single(self, level_priors, boxes):
        return self.assigner(torch.cat(level_priors), [len(p) for p in level_priors], boxes)

    def loss(self, outputs, targets, image_sizes):
        level_priors = self.priors(self.level_sizes(outputs), outputs[0]["cls"].device)
        priors = torch.cat(level_priors)
        flat = self.flatten(outputs)
        all_labels, all_valid, pos_boxes, pos_gt, pos_ctr_pred, pos_ctr_t = [], [], [], [], [], []
        for i, (t, assigned) in enumerate(zip(targets, self.assign(outputs, targets, image_sizes))):
            pos = assigned >= 0
            all_valid.append(assigned != IGNORE)
            labels = torch.full_like(assigned, self.num_classes)
            labels[pos] = t["labels"][assigned[pos]]
            all_labels.append(labels)
            gt = t["boxes"][assigned[pos]]
            c = anchor_centers(priors[pos])
            pos_ctr_t.append(centerness_target(torch.cat([c - gt[:, :2], gt[:, 2:] - c], 1)))
            pos_boxes.append(self.coder.decode(priors[pos], flat["reg"][i][pos]))
            pos_gt.append(gt)
            pos_ctr_pred.append(flat["centerness"][i][pos])
        labels, valid = torch.cat(all_labels), torch.cat(all_valid)
        num_pos = int((labels < self.num_classes).sum())
        avg = self.avg_factor(num_pos, priors.device)
        cls_logits = flat["cls"].reshape(-1, self.num_classes)
        loss_cls = focal_loss(cls_logits[valid], one_hot(labels[valid], self.num_classes)).sum() / avg
        pos_boxes, pos_gt = torch.cat(pos_boxes), torch.cat(pos_gt)
        pos_ctr_pred, ctr_t = torch.cat(pos_ctr_pred), torch.cat(pos_ctr_t)
        if num_pos:
            ctr_avg = self.avg_factor(ctr_t.sum(), priors.device)
            loss_bbox = (giou_loss(pos_boxes, pos_gt) * ctr_t).sum() / ctr_avg
            loss_ctr = F.binary_cross_entropy_with_logits(pos_ctr_pred, ctr_t, reduction="sum") / avg
        else:
            loss_bbox = pos_boxes.sum() * 0
            loss_ctr = pos_ctr_pred.sum() * 0
        return {
            "loss_cls": self.loss_weights["cls"] * loss_cls,
            "loss_bbox": self.loss_weights["bbox"] * loss_bbox,
            "loss_centerness": self.loss_weights["centerness"] * loss_ctr,
        }


def _create(backbone: str, **kwargs: Any) -> DenseDetector:
    kwargs.setdefault("nms_iou", 0.6)
    return build_dense_detector(ATSSHead, backbone=backbone, **kwargs)


@register_detector
def atss_r50(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """ATSS, ResNet-50 FPN (MMDetection ``atss_r50_fpn_1x_coco``)."""
    return _create("resnet50", pretrained=pretrained, **kwargs)


@register_detector
def atss_r101(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """ATSS, ResNet-101 FPN (MMDetection ``atss_r101_fpn_1x_coco``)."""
    return _create("resnet101", pretrained=pretrained, **kwargs)


@register_detector
def atss_r18(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """ATSS, ResNet-18 FPN-128: a CPU-friendly student."""
    kwargs.setdefault("fpn_channels", 128)
    return _create("resnet18", pretrained=pretrained, **kwargs)


@register_detector
def atss_r10t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """ATSS, ResNet-10-T FPN-128: a shapes teacher."""
    kwargs.setdefault("fpn_channels", 128)
    return _create("resnet10t", pretrained=pretrained, **kwargs)


@register_detector
def atss_mnv3s(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """ATSS, MobileNetV3-Small FPN-48: a shapes student, heterogeneous to atss_r10t."""
    kwargs.setdefault("fpn_channels", 48)
    return _create("mobilenetv3_small_100", pretrained=pretrained, **kwargs)


@register_detector
def atss_convnext_t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """ATSS, ConvNeXt-T FPN: a heterogeneous teacher."""
    kwargs.setdefault("norm_eval", False)
    return _create("convnext_tiny", pretrained=pretrained, **kwargs)

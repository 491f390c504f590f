"""GFL (Li et al. 2020) with MMDetection's defaults: ATSS anchors and assignment, a joint
class-IoU score trained with quality focal loss, box sides as 17-bin distributions
(reg_max 16) decoded by their expectation and trained with DFL (0.25) and GIoU (2.0)
weighted by the predicted score, NMS 0.6."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .assigners import IGNORE, ATSSAssigner
from .box_ops import Integral, aligned_iou, bbox2distance, distance2bbox
from .builder import build_dense_detector
from .dense_head import DenseHead, LevelOutputs
from .detector import DenseDetector
from .layers import Scale
from .losses import distribution_focal_loss, giou_loss, quality_focal_loss
from .priors import AnchorGenerator, anchor_centers
from .registry import register_detector

__all__ = ["GFLHead"]


class GFLHead(DenseHead):
    def __init__(self, num_classes: int, *, reg_max: int = 16, topk: int = 9, loss_cls_weight: float = 1.0,
                 loss_bbox_weight: float = 2.0, loss_dfl_weight: float = 0.25, qfl_beta: float = 2.0, **kwargs: Any) -> None:
        self.anchor_generator = AnchorGenerator(kwargs.get("strides", (8, 16, 32, 64, 128)), ratios=(1.0,),
                                                octave_base_scale=8, scales_per_octave=1)
        super().__init__(num_classes, num_anchors=1, **kwargs)
        self.reg_max = reg_max
        self.reg_channels = 4 * (reg_max + 1)
        self.gfl_cls = nn.Conv2d(self.feat_channels, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(self.feat_channels, self.reg_channels, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.integral = Integral(reg_max)
        self.assigner = ATSSAssigner(topk)
        self.qfl_beta = qfl_beta
        self.loss_weights = {"cls": loss_cls_weight, "bbox": loss_bbox_weight, "dfl": loss_dfl_weight}
        self.init_weights(self.gfl_cls)

    def predict_level(self, cls_feat: torch.Tensor, reg_feat: torch.Tensor, level: int) -> LevelOutputs:
        return {"cls": self.gfl_cls(cls_feat), "reg": self.scales[level](self.gfl_reg(reg_feat)).float()}

    def priors(self, sizes, device):
        return self.anchor_generator(sizes, device)

    def decode(self, reg, priors, strides, max_shape=None):
        """Distribution logits -> expected side distances (in strides) -> boxes in pixels."""
        return distance2bbox(anchor_centers(priors), self.integral(reg) * strides[:, None], max_shape)

    def assign_single(self, level_priors, boxes):
        return self.assigner(torch.cat(level_priors), [len(p) for p in level_priors], boxes)

    def loss(self, outputs, targets, image_sizes):
        level_priors = self.priors(self.level_sizes(outputs), outputs[0]["cls"].device)
        priors = torch.cat(level_priors)
        strides = self.prior_strides(level_priors)
        flat = self.flatten(outputs)
        all_labels, all_scores, all_valid, pos_terms = [], [], [], []
        for i, (t, assigned) in enumerate(zip(targets, self.assign(outputs, targets, image_sizes))):
            pos = assigned >= 0
            all_valid.append(assigned != IGNORE)
            labels = torch.full_like(assigned, self.num_classes)
            labels[pos] = t["labels"][assigned[pos]]
            # Everything below is in units of the prior's stride, as in MMDetection.
            s = strides[pos][:, None]
            centers = anchor_centers(priors[pos]) / s
            gt = t["boxes"][assigned[pos]] / s
            reg = flat["reg"][i][pos]
            pred_boxes = distance2bbox(centers, self.integral(reg))
            scores = torch.zeros(len(priors), device=priors.device)
            scores[pos] = aligned_iou(pred_boxes.detach(), gt).clamp(min=0)
            weight = flat["cls"][i][pos].detach().sigmoid().amax(1)
            all_labels.append(labels)
            all_scores.append(scores)
            # MMDetection's DistancePointBBoxCoder.encode clamps DFL targets to reg_max - 0.1.
            pos_terms.append((pred_boxes, gt, reg, bbox2distance(centers, gt, self.reg_max), weight))
        labels, scores, valid = torch.cat(all_labels), torch.cat(all_scores), torch.cat(all_valid)
        num_pos = int((labels < self.num_classes).sum())
        avg = self.avg_factor(num_pos, priors.device)
        qfl = quality_focal_loss(flat["cls"].reshape(-1, self.num_classes), labels, scores, self.qfl_beta)
        loss_cls = (qfl * valid).sum() / avg
        pred_boxes, gt, reg, dist_t, weight = (torch.cat(x) for x in zip(*pos_terms))
        if num_pos:
            w_avg = self.avg_factor(weight.sum(), priors.device)
            loss_bbox = (giou_loss(pred_boxes, gt) * weight).sum() / w_avg
            dfl = distribution_focal_loss(reg.reshape(-1, self.reg_max + 1), dist_t.reshape(-1))
            loss_dfl = (dfl * weight[:, None].expand(-1, 4).reshape(-1)).sum() / 4.0 / w_avg
        else:
            loss_bbox = loss_dfl = reg.sum() * 0
        return {
            "loss_cls": self.loss_weights["cls"] * loss_cls,
            "loss_bbox": self.loss_weights["bbox"] * loss_bbox,
            "loss_dfl": self.loss_weights["dfl"] * loss_dfl,
        }


def _create(backbone: str, **kwargs: Any) -> DenseDetector:
    kwargs.setdefault("nms_iou", 0.6)
    return build_dense_detector(GFLHead, backbone=backbone, **kwargs)


@register_detector
def gfl_r50(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, ResNet-50 FPN (MMDetection ``gfl_r50_fpn_1x_coco``)."""
    return _create("resnet50", pretrained=pretrained, **kwargs)


@register_detector
def gfl_r101(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, ResNet-101 FPN (MMDetection ``gfl_r101_fpn_ms-2x_coco``)."""
    return _create("resnet101", pretrained=pretrained, **kwargs)


@register_detector
def gfl_r18(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, ResNet-18 FPN-128: a CPU-friendly student."""
    kwargs.setdefault("fpn_channels", 128)
    return _create("resnet18", pretrained=pretrained, **kwargs)


@register_detector
def gfl_r10t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, ResNet-10-T FPN-128: the shapes teacher (7.0 M parameters, 14 MB in fp16)."""
    kwargs.setdefault("fpn_channels", 128)
    return _create("resnet10t", pretrained=pretrained, **kwargs)


@register_detector
def gfl_mnv3s(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, MobileNetV3-Small FPN-48: the shapes student (1.2 M parameters), heterogeneous to gfl_r10t."""
    kwargs.setdefault("fpn_channels", 48)
    return _create("mobilenetv3_small_100", pretrained=pretrained, **kwargs)


@register_detector
def gfl_mnv3(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, MobileNetV3-Large FPN-128: a heterogeneous student."""
    kwargs.setdefault("fpn_channels", 128)
    return _create("mobilenetv3_large_100", pretrained=pretrained, **kwargs)


@register_detector
def gfl_effb0(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, EfficientNet-B0 FPN-128: a heterogeneous student."""
    kwargs.setdefault("fpn_channels", 128)
    return _create("efficientnet_b0", pretrained=pretrained, **kwargs)


@register_detector
def gfl_convnext_t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """GFL, ConvNeXt-T FPN: a heterogeneous teacher."""
    kwargs.setdefault("norm_eval", False)
    return _create("convnext_tiny", pretrained=pretrained, **kwargs)

"""RetinaNet (Lin et al. 2017) with MMDetection's defaults: 9 anchors per location, max-IoU
assignment (0.5/0.4), focal loss, L1 on (dx, dy, dw, dh), P6/P7 from C5, NMS 0.5."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .assigners import IGNORE, MaxIoUAssigner
from .box_ops import DeltaXYWHCoder
from .builder import build_dense_detector
from .dense_head import DenseHead, LevelOutputs
from .detector import DenseDetector
from .losses import focal_loss, one_hot
from .priors import AnchorGenerator
from .registry import register_detector

__all__ = ["RetinaHead"]


class RetinaHead(DenseHead):
    sync_avg_factor = False  # MMDetection's AnchorHead: each process averages by its own positives

    def __init__(self, num_classes: int, *, loss_cls_weight: float = 1.0, loss_bbox_weight: float = 1.0, **kwargs: Any) -> None:
        self.anchor_generator = AnchorGenerator(kwargs.get("strides", (8, 16, 32, 64, 128)), ratios=(0.5, 1.0, 2.0),
                                                octave_base_scale=4, scales_per_octave=3)
        kwargs.setdefault("norm", None)
        super().__init__(num_classes, num_anchors=self.anchor_generator.num_anchors, **kwargs)
        a = self.num_anchors
        self.retina_cls = nn.Conv2d(self.feat_channels, a * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(self.feat_channels, a * 4, 3, padding=1)
        self.coder = DeltaXYWHCoder((1.0, 1.0, 1.0, 1.0))
        self.assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0)
        self.loss_weights = {"cls": loss_cls_weight, "bbox": loss_bbox_weight}
        self.init_weights(self.retina_cls)

    def predict_level(self, cls_feat: torch.Tensor, reg_feat: torch.Tensor, level: int) -> LevelOutputs:
        return {"cls": self.retina_cls(cls_feat), "reg": self.retina_reg(reg_feat)}

    def priors(self, sizes: list[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
        return self.anchor_generator(sizes, device)

    def decode(self, reg, priors, strides, max_shape=None):
        return self.coder.decode(priors, reg, max_shape)

    def assign_single(self, level_priors, boxes):
        return self.assigner(torch.cat(level_priors), boxes)

    def loss(self, outputs, targets, image_sizes):
        priors = torch.cat(self.priors(self.level_sizes(outputs), outputs[0]["cls"].device))
        flat = self.flatten(outputs)
        cls_terms, reg_terms, num_pos = [], [], 0
        for i, (t, assigned) in enumerate(zip(targets, self.assign(outputs, targets, image_sizes))):
            pos = assigned >= 0
            labels = torch.full_like(assigned, self.num_classes)
            labels[pos] = t["labels"][assigned[pos]]
            valid = assigned != IGNORE
            cls_terms.append(focal_loss(flat["cls"][i][valid], one_hot(labels[valid], self.num_classes)).sum())
            target_deltas = self.coder.encode(priors[pos], t["boxes"][assigned[pos]])
            reg_terms.append((flat["reg"][i][pos] - target_deltas).abs().sum())
            num_pos += int(pos.sum())
        avg = self.avg_factor(num_pos, priors.device)
        return {
            "loss_cls": self.loss_weights["cls"] * torch.stack(cls_terms).sum() / avg,
            "loss_bbox": self.loss_weights["bbox"] * torch.stack(reg_terms).sum() / avg,
        }


def _create(backbone: str, **kwargs: Any) -> DenseDetector:
    kwargs.setdefault("add_extra_convs", "on_input")
    kwargs.setdefault("nms_iou", 0.5)
    return build_dense_detector(RetinaHead, backbone=backbone, **kwargs)


@register_detector
def retinanet_r50(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """RetinaNet, ResNet-50 FPN (MMDetection ``retinanet_r50_fpn_1x_coco``)."""
    return _create("resnet50", pretrained=pretrained, **kwargs)


@register_detector
def retinanet_r101(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """RetinaNet, ResNet-101 FPN (MMDetection ``retinanet_r101_fpn_2x_coco``)."""
    return _create("resnet101", pretrained=pretrained, **kwargs)


@register_detector
def retinanet_r18(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """RetinaNet, ResNet-18 FPN-128: a CPU-friendly student."""
    kwargs.setdefault("fpn_channels", 128)
    return _create("resnet18", pretrained=pretrained, **kwargs)


@register_detector
def retinanet_mnv3(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """RetinaNet, MobileNetV3-Large FPN-128: a heterogeneous student."""
    kwargs.setdefault("fpn_channels", 128)
    return _create("mobilenetv3_large_100", pretrained=pretrained, **kwargs)


@register_detector
def retinanet_convnext_t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """RetinaNet, ConvNeXt-T FPN: a heterogeneous teacher."""
    kwargs.setdefault("norm_eval", False)
    return _create("convnext_tiny", pretrained=pretrained, **kwargs)


@register_detector
def retinanet_swin_t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """RetinaNet, Swin-T FPN: the teacher of CrossKD's heterogeneous Swin-T -> R50 setting
    (MMDetection ``retinanet_swin-t-p4-w7_fpn_1x_coco``, the same computation for any input size)."""
    kwargs.setdefault("norm_eval", False)
    kwargs.setdefault("frozen_stages", -1)  # MMDetection's SwinTransformer default: nothing frozen
    # MMDetection's Swin: output LayerNorms norm1..norm3, windows padded before the shift with the
    # masks built per input, window 7 and shift 3 in every stage; drop path 0.2 as in its config.
    kwargs["backbone_kwargs"] = {"out_norms": True, "mmdet_windows": True, "drop_path_rate": 0.2,
                                 **(kwargs.get("backbone_kwargs") or {})}
    return _create("swin_tiny_patch4_window7_224", pretrained=pretrained, **kwargs)

"""RetinaNet (Lin et al. 2017) with MMDetection's defaults: 9 anchors per location, max-IoU
assignment (0.5/0.4), focal loss, L1 on (dx, dy, dw, dh), P6/P7 from C5, NMS 0.5."""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn

from .assigners import MaxIoUAssigner
from .box_ops import DeltaXYWHCoder
from .builder import build_dense_detector, build_detector_with_cfg
from .criterion import Assignment, DenseCriterion
from .dense_head import DenseHead, LevelOutputs
from .detector import DenseDetector
from .priors import AnchorGenerator
from .published import crosskd_cfg, crosskd_teacher_cfg, mmdet_cfg
from .registry import register_alias, register_detector, register_pretrained_cfgs

__all__ = ["RetinaHead", "RetinaCriterion"]


class RetinaCriterion(DenseCriterion):
    """Max-IoU assignment (0.5/0.4); focal loss and L1 on the positives' encoded deltas, both
    averaged by the positives."""

    sync_avg_factor = False  # MMDetection's AnchorHead: each process averages by its own positives

    def __init__(self, num_classes: int, *, coder: DeltaXYWHCoder, loss_weights: dict[str, float]) -> None:
        super().__init__(num_classes, loss_weights=loss_weights)
        self.assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0)
        self.coder = coder

    def assign_single(self, level_priors: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        return self.assigner(torch.cat(level_priors), boxes)

    def loss(self, flat: dict[str, torch.Tensor], priors: torch.Tensor, strides: torch.Tensor,
             assignment: Assignment) -> dict[str, torch.Tensor]:
        return {"loss_cls": self.loss_weights["cls"] * self.loss_cls(flat["cls"], assignment),
                "loss_bbox": self.loss_weights["bbox"] * self.loss_bbox(flat["reg"], priors, assignment)}

    def loss_bbox(self, reg: torch.Tensor, priors: torch.Tensor, assignment: Assignment) -> torch.Tensor:
        """L1 between the positives' deltas and their encoded GT boxes."""
        pos = assignment.positive
        target_deltas = self.coder.encode(priors[None].expand(len(pos), -1, -1)[pos], assignment.pos_gt_boxes)
        return (reg[pos] - target_deltas).abs().sum() / assignment.num_pos


class RetinaHead(DenseHead):
    kd_defaults = dict(layer=3, cls=1.0, reg=1.0, centerness=0.0, pkd=2.0)
    classifier = "retina_cls"  # the layer sized by num_classes (left out of weights for another class count)

    def __init__(self, num_classes: int, *, loss_cls_weight: float = 1.0, loss_bbox_weight: float = 1.0, **kwargs: Any) -> None:
        self.anchor_generator = AnchorGenerator(kwargs.get("strides", (8, 16, 32, 64, 128)), ratios=(0.5, 1.0, 2.0),
                                                octave_base_scale=4, scales_per_octave=3)
        kwargs.setdefault("norm", None)
        super().__init__(num_classes, num_anchors=self.anchor_generator.num_anchors, **kwargs)
        a = self.num_anchors
        self.retina_cls = nn.Conv2d(self.feat_channels, a * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(self.feat_channels, a * 4, 3, padding=1)
        self.coder = DeltaXYWHCoder((1.0, 1.0, 1.0, 1.0))
        self.criterion = RetinaCriterion(num_classes, coder=self.coder,
                                         loss_weights={"cls": loss_cls_weight, "bbox": loss_bbox_weight})
        self.init_weights(self.retina_cls)

    def predict_level(self, cls_feat: torch.Tensor, reg_feat: torch.Tensor, level: int) -> LevelOutputs:
        return {"cls": self.retina_cls(cls_feat), "reg": self.retina_reg(reg_feat)}

    def priors(self, sizes: list[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
        return self.anchor_generator(sizes, device)

    def decode(self, reg, priors, strides, max_shape=None):
        return self.coder.decode(priors, reg, max_shape)


# What every retinanet entry point builds; the recipe checker reads its keyword arguments from it.
BUILD_FN = partial(build_dense_detector, RetinaHead)


def _create(arch: str, backbone: str, pretrained: bool, defaults: dict[str, Any] | None = None,
            **kwargs: Any) -> DenseDetector:
    return build_detector_with_cfg(partial(BUILD_FN, backbone=backbone), arch, pretrained=pretrained,
                                   defaults={"add_extra_convs": "on_input", "nms_iou": 0.5, **(defaults or {})}, **kwargs)


@register_detector
def retinanet_r50(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """RetinaNet, ResNet-50 FPN (MMDetection ``retinanet_r50_fpn_1x_coco``; the CrossKD RetinaNet student, tags ``crosskd_*``, with P6/P7 on the FPN output)."""
    return _create("retinanet_r50", "resnet50", pretrained, **kwargs)


@register_detector
def retinanet_r101(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """RetinaNet, ResNet-101 FPN (MMDetection ``retinanet_r101_fpn_2x_coco``)."""
    return _create("retinanet_r101", "resnet101", pretrained, **kwargs)


@register_detector
def retinanet_r18(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """RetinaNet, ResNet-18 FPN-128: a CPU-friendly student."""
    return _create("retinanet_r18", "resnet18", pretrained, dict(fpn_channels=128), **kwargs)


@register_detector
def retinanet_mnv3(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """RetinaNet, MobileNetV3-Large FPN-128: a heterogeneous student."""
    return _create("retinanet_mnv3", "mobilenetv3_large_100", pretrained, dict(fpn_channels=128), **kwargs)


@register_detector
def retinanet_convnext_t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """RetinaNet, ConvNeXt-T FPN: a heterogeneous teacher."""
    return _create("retinanet_convnext_t", "convnext_tiny", pretrained, dict(norm_eval=False), **kwargs)


@register_detector
def retinanet_swin_t(pretrained: bool = False, **kwargs: Any) -> DenseDetector:
    """RetinaNet, Swin-T FPN: the teacher of CrossKD's heterogeneous Swin-T -> R50 setting
    (MMDetection ``retinanet_swin-t-p4-w7_fpn_1x_coco``, the same computation for any input size)."""
    # MMDetection's Swin: nothing frozen, output LayerNorms norm1..norm3, windows padded before the
    # shift with the masks built per input, window 7 and shift 3 in every stage; drop path 0.2.
    defaults = dict(norm_eval=False, frozen_stages=-1,
                    backbone_kwargs={"out_norms": True, "mmdet_windows": True, "drop_path_rate": 0.2})
    return _create("retinanet_swin_t", "swin_tiny_patch4_window7_224", pretrained, defaults, **kwargs)


# CrossKD's RetinaNet students take P6/P7 from the FPN output; MMDetection's RetinaNet (and the
# teachers) from C5: the release tags build that neck.
_ON_OUTPUT = {"add_extra_convs": "on_output"}
register_pretrained_cfgs({
    "retinanet_r50.mmdet_coco": mmdet_cfg("retinanet", "retinanet_r50_fpn_1x_coco",
                                          "retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth", 36.5),
    "retinanet_r50.mmdet_coco_2x": mmdet_cfg("retinanet", "retinanet_r50_fpn_2x_coco",
                                             "retinanet_r50_fpn_2x_coco_20200131-fdb43119.pth", 37.4),
    "retinanet_r50.crosskd_coco": crosskd_cfg("retinanet_r101.mmdet_coco", 39.7, "1fjwtuoKd4a_b5CHf6X0tKDmSNlwzYfWb",
                                              "crosskd_r50_retinanet_r101_fpn_2x_coco", build_kwargs=_ON_OUTPUT),
    "retinanet_r50.crosskd_pkd_coco": crosskd_cfg("retinanet_r101.mmdet_coco", 39.8, "1Ha9r5DrzaZ_9tz8x9PVxOkGaKAApIBGd",
                                                  "crosskd+pkd_r50_retinanet_r101_fpn_2x_coco", build_kwargs=_ON_OUTPUT),
    # The heterogeneous pair: a Swin-T teacher, 1x schedule.
    "retinanet_r50.crosskd_swin_coco": crosskd_cfg("retinanet_swin_t.crosskd_coco", 38.0, "17rbkcXgqKfVUweRgzK7NtqFcLC-PohKX",
                                                   "crosskd_r50_retinanet_swint_fpn_1x_coco", build_kwargs=_ON_OUTPUT),
    "retinanet_r101.mmdet_coco": mmdet_cfg("retinanet", "retinanet_r101_fpn_2x_coco",
                                           "retinanet_r101_fpn_2x_coco_20200131-5560aee8.pth", 38.9),
    "retinanet_swin_t.crosskd_coco": crosskd_teacher_cfg("retinanet", 37.3, "1W2KGR77XfQ5SRomgIyxCjqUNGJichcgh",
                                                         "retinanet_swin-t-p4-w7_fpn_1x_coco"),
})
register_alias("retinanet_r50_crosskd", "retinanet_r50.crosskd_coco")

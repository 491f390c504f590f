"""The one build path for dense detectors: resolve defaults from the pretrained config and
the family, then assemble backbone, FPN, head and transform."""
from __future__ import annotations

from typing import Any

import torch

from .backbone_weights import create_backbone
from .dense_head import DenseHead, TestCfg
from .detector import DenseDetector
from .fpn import FPN
from .pretrained import PretrainedCfg
from .transform import DetectionTransform

__all__ = ["build_dense_detector"]


def build_dense_detector(
    head_cls: type[DenseHead],
    *,
    backbone: str,
    pretrained_cfg: PretrainedCfg | None = None,
    pretrained: bool = False,
    num_classes: int | None = None,
    backbone_pretrained: bool | str = False,
    backbone_kwargs: dict[str, Any] | None = None,
    frozen_stages: int = 1,
    norm_eval: bool = True,
    freeze_norm: bool = False,
    style: str = "pytorch",
    fpn_channels: int = 256,
    add_extra_convs: str = "on_output",
    relu_before_extra_convs: bool = False,
    feat_channels: int | None = None,
    stacked_convs: int = 4,
    input_size: tuple[int, int] | None = None,
    train_sizes: list[tuple[int, int]] | None = None,
    nms_pre: int = 1000,
    score_thr: float = 0.05,
    nms_iou: float = 0.5,
    max_per_img: int = 100,
    **head_kwargs: Any,
) -> DenseDetector:
    """Keyword arguments mirror MMDetection's config fields (``frozen_stages``, ``norm_eval``,
    ``add_extra_convs``, ``stacked_convs``, ``feat_channels``, test-time ``nms_pre`` ...).
    ``backbone_pretrained``: ``True``, a timm tag (``'tv_in1k'``), an ``open-mmlab://`` name, a URL or
    a file (``kdzoo.backbone_weights``); ignored when the detector's own weights are loaded."""
    cfg = pretrained_cfg or PretrainedCfg()
    num_classes = cfg.num_classes if num_classes is None else num_classes
    body = create_backbone(backbone, weights=False if pretrained else backbone_pretrained, frozen_stages=frozen_stages,
                           norm_eval=norm_eval, freeze_norm=freeze_norm, style=style, **(backbone_kwargs or {}))
    strides = tuple(body.strides) + tuple(body.strides[-1] * 2 ** (i + 1) for i in range(2))
    neck = FPN(body.channels, fpn_channels, num_extra=2, add_extra_convs=add_extra_convs,
               relu_before_extra_convs=relu_before_extra_convs)
    head = head_cls(num_classes, in_channels=fpn_channels, feat_channels=feat_channels or fpn_channels,
                    stacked_convs=stacked_convs, strides=strides,
                    test_cfg=TestCfg(nms_pre=nms_pre, score_thr=score_thr, nms_iou=nms_iou, max_per_img=max_per_img),
                    **head_kwargs)
    transform = DetectionTransform(size=tuple(input_size or cfg.input_size), train_sizes=train_sizes,
                                   mean=cfg.mean, std=cfg.std, bgr=cfg.bgr)
    model = DenseDetector(body, neck, head, transform, pretrained_cfg=cfg)
    # Channels-last weights to match the channels-last input (DenseDetector.preprocess): with
    # oneDNN on CPU a mixed layout costs about 2-3x in inference.
    return model.to(memory_format=torch.channels_last)

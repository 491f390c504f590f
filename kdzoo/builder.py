"""The one build path (timm's ``build_model_with_cfg``): :func:`build_detector_with_cfg` turns an
architecture and its pretrained config into a model with its weights, for every family and every
source (registry names, ``hf-hub:``, ``local-dir:``, run directories, teachers).
:func:`build_dense_detector` assembles the dense families from backbone, FPN, head and transform."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from .backbone_weights import create_backbone
from .dense_head import DenseHead, TestCfg
from .detector import DenseDetector
from .fpn import FPN
from .pretrained import PretrainedCfg, load_pretrained, no_weights_error
from .registry import get_pretrained_cfg
from .transform import DetectionTransform

__all__ = ["build_detector_with_cfg", "build_dense_detector"]


def _merge(defaults: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The caller's kwargs over the architecture's defaults; dict values (``backbone_kwargs``) merge one level."""
    merged = {**defaults, **kwargs}
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
            merged[key] = {**value, **kwargs[key]}
    return merged


def build_detector_with_cfg(
    build_fn: Callable[..., nn.Module],
    arch: str,
    *,
    pretrained: bool = False,
    pretrained_cfg: PretrainedCfg | None = None,
    defaults: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``arch`` with ``build_fn(pretrained_cfg=..., pretrained=..., **kwargs)`` and load its weights.

    ``pretrained_cfg``: the config :func:`kdzoo.create_detector` resolved (tag, overlay, the tag's
    build kwargs already merged into ``kwargs``); ``None`` (an entry point called directly) resolves
    the architecture's default tag the same way. ``defaults``: the architecture's own settings
    (``fpn_channels=128`` of a small member), under ``kwargs``. The model records ``arch_name`` and
    the caller's ``kwargs`` (``build_kwargs``): what ``config.json`` stores to rebuild it.
    ``pretrained=True`` without a weight source fails before anything is built, with one message
    for every architecture.
    """
    if pretrained_cfg is None:
        pretrained_cfg = get_pretrained_cfg(arch)
        kwargs = {**(pretrained_cfg.build_kwargs or {}), **kwargs}
    if pretrained and not pretrained_cfg.has_weights:
        raise no_weights_error(pretrained_cfg)
    model = build_fn(pretrained_cfg=pretrained_cfg, pretrained=pretrained, **_merge(defaults or {}, kwargs))
    model.arch_name = arch
    model.build_kwargs = dict(kwargs)
    if pretrained:
        load_pretrained(model, pretrained_cfg, num_classes=kwargs.get("num_classes"))
    return model


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
    neck = FPN(body.output_shape(), fpn_channels, num_extra=2, add_extra_convs=add_extra_convs,
               relu_before_extra_convs=relu_before_extra_convs)
    levels = list(neck.output_shape().values())
    head = head_cls(num_classes, in_channels=levels[0].channels, feat_channels=feat_channels or fpn_channels,
                    stacked_convs=stacked_convs, strides=tuple(s.stride for s in levels),
                    test_cfg=TestCfg(nms_pre=nms_pre, score_thr=score_thr, nms_iou=nms_iou, max_per_img=max_per_img),
                    **head_kwargs)
    transform = DetectionTransform(size=input_size or cfg.input_size, train_sizes=train_sizes,
                                   mean=cfg.mean, std=cfg.std, bgr=cfg.bgr)
    model = DenseDetector(body, neck, head, transform, pretrained_cfg=cfg)
    # Channels-last weights to match the channels-last input (DenseDetector.preprocess): with
    # oneDNN on CPU a mixed layout costs about 2-3x in inference.
    return model.to(memory_format=torch.channels_last)

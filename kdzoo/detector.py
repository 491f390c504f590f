"""A dense one-stage detector: transform -> backbone -> FPN -> head -> decode -> post-process."""
from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn as nn

from .backbone import TimmBackbone
from .dense_head import DenseHead
from .fpn import FPN
from .pretrained import PretrainedCfg
from .transform import DetectionTransform, ImageBatch

__all__ = ["Detector", "DenseDetector", "check_targets"]


def check_targets(targets: object, num_images: int, num_classes: int) -> None:
    if not isinstance(targets, (list, tuple)) or len(targets) != num_images:
        raise ValueError(f"targets must be a list with one dict per image ({num_images}), got {type(targets).__name__}"
                         + (f" of length {len(targets)}" if isinstance(targets, (list, tuple)) else ""))
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            raise ValueError(f"targets[{i}] must be a dict with 'boxes' [N, 4] and 'labels' [N]")
        boxes, labels = t["boxes"], t["labels"]
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] has shape {tuple(boxes.shape)}; expected [N, 4] xyxy")
        if labels.dim() != 1 or len(labels) != len(boxes):
            raise ValueError(f"targets[{i}]['labels'] has shape {tuple(labels.shape)}; expected [{len(boxes)}]")
        if len(boxes):
            finite = torch.isfinite(boxes).all(dim=1)
            if not finite.all():  # NaN compares false, so the order check below would let it through
                j = int((~finite).nonzero()[0])
                raise ValueError(f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} has non-finite coordinates; "
                                 "expected finite absolute xyxy")
            bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
            if bad.any():
                j = int(bad.nonzero()[0])
                raise ValueError(f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()} has x2 < x1 or y2 < y1; "
                                 "boxes must be absolute xyxy")
            if labels.min() < 0 or labels.max() >= num_classes:
                raise ValueError(f"targets[{i}]['labels'] has values in [{int(labels.min())}, {int(labels.max())}]; "
                                 f"expected 0-based class indices below num_classes={num_classes}")


class Detector(nn.Module):
    """What every kdzoo detector shares: the transform, backbone and neck, the fast inference path,
    saving, and the rebuild information the registry records (``arch_name``, ``build_kwargs``)."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, transform: DetectionTransform, num_classes: int,
                 *, pretrained_cfg: PretrainedCfg | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.transform = transform
        self.pretrained_cfg = pretrained_cfg or PretrainedCfg()
        self.num_classes = num_classes
        self.inference_dtype: torch.dtype | None = None
        # Set by the registry: how to rebuild this model (config.json).
        self.arch_name: str = ""
        self.build_kwargs: dict[str, Any] = {}

    def classifier_keys(self) -> list[str]:
        """State-dict keys whose shape depends on ``num_classes`` (timm's ``classifier``): left out, and
        freshly initialised, when weights trained for another number of classes are loaded."""
        prefixes = tuple(f"{p}." for p in self.classifier_modules())
        return [k for k in self.state_dict() if k.startswith(prefixes)]

    def classifier_modules(self) -> tuple[str, ...]:
        raise NotImplementedError

    def set_inference_precision(self, dtype: torch.dtype | str | None) -> "Detector":
        """Fast path: run backbone, neck and head under autocast (``'bf16'`` on CPUs with AVX-512
        BF16/AMX, ``'fp16'``/``'bf16'`` on GPUs) with channels-last memory; decoding and NMS stay fp32."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"inference precision must be 'bf16', 'fp16', 'fp32' or None, got {dtype!r}")
        self.inference_dtype = dtype
        return self

    def save_pretrained(self, save_directory: str, **kwargs: Any):
        """Write ``model.safetensors``, ``config.json`` and a model card; see :func:`kdzoo.hub.save_pretrained`."""
        from .hub import save_pretrained

        return save_pretrained(self, save_directory, **kwargs)

    def check_training_inputs(self, images: list[torch.Tensor], targets: list[dict] | None) -> None:
        """Training needs one well-formed target per image."""
        if targets is None:
            raise ValueError("targets are required in training mode (call model.eval() for inference)")
        check_targets(targets, len(images), self.num_classes)

    def preprocess(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> tuple[ImageBatch, list[dict] | None]:
        """Normalise, resize and pad (targets follow into the resized frame)."""
        batch, targets = self.transform(images, targets)
        batch.tensors = batch.tensors.contiguous(memory_format=torch.channels_last)
        return batch, targets

    def extract_feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(self.backbone(x))

    @property
    def feature_strides(self) -> tuple[int, ...]:
        """The strides of the :meth:`extract_feats` levels (the neck's ``output_shape()``)."""
        return tuple(s.stride for s in self.neck.output_shape().values())

    def _autocast(self):
        if self.inference_dtype is None or self.training:
            return contextlib.nullcontext()
        device_type = next(self.parameters()).device.type
        return torch.autocast(device_type, dtype=self.inference_dtype)


class DenseDetector(Detector):
    """``model(images: list[Tensor[3,H,W]] in 0..1, targets=None)``.

    Training returns a dict of losses; eval returns ``[{boxes, scores, labels}]`` per image in
    that image's own pixel coordinates (labels are 0-based class indices).
    """

    def __init__(self, backbone: TimmBackbone, neck: FPN, bbox_head: DenseHead, transform: DetectionTransform,
                 *, pretrained_cfg: PretrainedCfg | None = None) -> None:
        super().__init__(backbone, neck, transform, bbox_head.num_classes, pretrained_cfg=pretrained_cfg)
        self.bbox_head = bbox_head

    def classifier_modules(self) -> tuple[str, ...]:
        return (f"bbox_head.{self.bbox_head.classifier}",)

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training:
            self.check_training_inputs(images, targets)
        batch, targets = self.preprocess(images, targets)
        with self._autocast():
            outputs = self.bbox_head(self.extract_feats(batch.tensors))
        if self.training:
            return self.bbox_head.loss(outputs, targets, batch.image_sizes)
        return self.transform.postprocess(self.bbox_head.predict(outputs, batch.image_sizes), batch)

"""Shared structure of the dense heads: two conv towers, per-level predictors, priors, decoding
and post-processing. Families (``retinanet.py``, ``fcos.py``, ``atss.py``, ``gfl.py``) add their
predictors, priors and box decoding; assignment and losses live in each family's criterion
(``head.criterion``, :mod:`kdzoo.criterion`).

The tower API is public and small, so distillers never reach into private modules:

* ``forward_tower(x, branch, start, stop, activate_last)`` runs layers ``start..stop-1`` of the
  ``'cls'`` or ``'reg'`` tower. When ``start > 0`` the input is the output of layer ``start - 1``,
  before or after its ReLU (the ReLU is applied first, which changes nothing on an activated
  feature), so a tower can be split anywhere.
* ``predict_level(cls_feat, reg_feat, level)`` runs the predictors on final tower features.
* ``forward_taps(feats, layer, activated=True)`` also returns the features after layer ``layer``,
  after its ReLU (``activated=False``: before it).

Label assignment skips priors outside each image's own extent (``uses_valid_flags``): they are
``IGNORE`` in the assignment and carry no weight in any loss, as in MMDetection's anchor heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .criterion import Assignment, DenseCriterion
from .layers import ConvModule
from .postprocess import batched_nms_topk, filter_scores_and_topk
from .priors import valid_flags

__all__ = ["DenseHead", "TestCfg", "flatten_levels"]

LevelOutputs = dict[str, torch.Tensor]


@dataclass
class TestCfg:
    """MMDetection's test-time settings for dense heads."""

    nms_pre: int = 1000
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100
    min_bbox_size: float = 0.0


def flatten_levels(outputs: list[LevelOutputs], key: str, channels: int) -> torch.Tensor:
    """[N, A*k, H, W] per level -> [N, sum(H*W*A), k], location-major and anchor-minor like the priors."""
    return torch.cat([o[key].permute(0, 2, 3, 1).reshape(o[key].shape[0], -1, channels) for o in outputs], 1)


class DenseHead(nn.Module):
    #: ``'cls'`` and ``'reg'`` output channels per prior; set by each family
    reg_channels: int = 4
    #: a per-prior quality branch multiplied into the scores at test time (FCOS, ATSS)
    has_centerness: bool = False
    #: priors over batch padding are excluded from assignment and losses (MMDetection's anchor
    #: heads; its FCOS head does not use valid flags)
    uses_valid_flags: bool = True
    #: GFL: ``reg`` holds per-side distribution logits over this many bins (compared as
    #: distributions by CrossKD); ``None``: ``reg`` decodes to boxes with :meth:`decode`
    reg_distribution_bins: int | None = None
    #: CrossKD's reference settings for the family: tower layer, loss weights
    #: (``layer``, ``cls``, ``reg``, ``centerness``, ``pkd``); ``None``: not supported
    kd_defaults: ClassVar[dict[str, float] | None] = None
    classifier: ClassVar[str] = ""  # the class-score layer's attribute name (sized by num_classes)
    #: the family's assignment and losses; set by each family's ``__init__``
    criterion: DenseCriterion

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        strides: tuple[int, ...] = (8, 16, 32, 64, 128),
        norm: str | None = "gn",
        num_anchors: int = 1,
        test_cfg: TestCfg | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.stacked_convs = stacked_convs
        self.strides = tuple(strides)
        self.num_anchors = num_anchors
        self.test_cfg = test_cfg or TestCfg()
        chans = [in_channels] + [feat_channels] * stacked_convs
        self.cls_convs = nn.ModuleList(ConvModule(chans[i], chans[i + 1], norm=norm) for i in range(stacked_convs))
        self.reg_convs = nn.ModuleList(ConvModule(chans[i], chans[i + 1], norm=norm) for i in range(stacked_convs))

    def init_weights(self, cls_predictor: nn.Conv2d, prior_prob: float = 0.01) -> None:
        """MMDetection's head init: N(0, 0.01) convs, classification bias at prior 0.01."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(cls_predictor.bias, -torch.log(torch.tensor((1 - prior_prob) / prior_prob)).item())

    # ----------------------------------------------------------------- tower API
    def tower(self, branch: str) -> nn.ModuleList:
        if branch == "cls":
            return self.cls_convs
        if branch == "reg":
            return self.reg_convs
        raise ValueError(f"branch must be 'cls' or 'reg', got {branch!r}")

    def forward_tower(self, x: torch.Tensor, branch: str, start: int = 0, stop: int | None = None,
                      activate_last: bool = True) -> torch.Tensor:
        convs = self.tower(branch)
        stop = len(convs) if stop is None else stop
        if not 0 <= start <= stop <= len(convs):
            raise ValueError(f"tower layers must satisfy 0 <= start <= stop <= {len(convs)}, got {start}, {stop}")
        if start > 0:
            x = F.relu(x)
        for i in range(start, stop):
            x = convs[i](x, activate=activate_last or i < stop - 1)
        return x

    def predict_level(self, cls_feat: torch.Tensor, reg_feat: torch.Tensor, level: int) -> LevelOutputs:
        raise NotImplementedError

    def forward(self, feats: list[torch.Tensor]) -> list[LevelOutputs]:
        """Per-level raw outputs."""
        return [self.predict_level(self.forward_tower(x, "cls"), self.forward_tower(x, "reg"), level)
                for level, x in enumerate(feats)]

    def forward_taps(self, feats: list[torch.Tensor], layer: int, *,
                     activated: bool = True) -> tuple[list[LevelOutputs], list[dict[str, torch.Tensor]]]:
        """Per-level raw outputs and the tower features after ``layer`` layers (``{'cls', 'reg'}``
        per level; ``layer = 0`` gives the FPN feature), after that layer's ReLU (``activated``) or before it."""
        outputs, taps = [], []
        for level, x in enumerate(feats):
            cls_mid = self.forward_tower(x, "cls", 0, layer, activate_last=activated)
            reg_mid = self.forward_tower(x, "reg", 0, layer, activate_last=activated)
            taps.append({"cls": cls_mid, "reg": reg_mid})
            cls_feat, reg_feat = self.forward_tower(cls_mid, "cls", layer), self.forward_tower(reg_mid, "reg", layer)
            outputs.append(self.predict_level(cls_feat, reg_feat, level))
        return outputs, taps

    # ----------------------------------------------------------- priors and boxes
    def priors(self, sizes: list[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
        """Per-level priors: anchors [H*W*A, 4] or points [H*W, 2]."""
        raise NotImplementedError

    def decode(self, reg: torch.Tensor, priors: torch.Tensor, strides: torch.Tensor,
               max_shape: tuple[int, int] | None = None) -> torch.Tensor:
        """Regression outputs [K, reg_channels] at ``priors`` [K, ...] -> xyxy boxes [K, 4]."""
        raise NotImplementedError

    def valid_flags(self, level_sizes: list[tuple[int, int]], image_size: tuple[int, int], size_divisor: int = 32,
                    device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Per level, the priors over the image's own (``size_divisor``-padded) extent."""
        return valid_flags(level_sizes, self.strides, self.num_anchors, image_size, size_divisor, device)

    def batch_valid_flags(self, outputs: list[LevelOutputs], image_sizes: list[tuple[int, int]] | None,
                          size_divisor: int = 32) -> list[list[torch.Tensor]] | None:
        """Per image, :meth:`valid_flags`; ``None`` without ``image_sizes`` or where the family uses none."""
        if image_sizes is None or not self.uses_valid_flags:
            return None
        sizes, device = self.level_sizes(outputs), outputs[0]["cls"].device
        return [self.valid_flags(sizes, size, size_divisor, device) for size in image_sizes]

    def assign(self, outputs: list[LevelOutputs], targets: list[dict],
               image_sizes: list[tuple[int, int]] | None = None, size_divisor: int = 32) -> Assignment:
        """The assignment the detection losses use (``targets`` in the resized frame). With
        ``image_sizes`` (resized, before batch padding) priors outside an image's extent are
        left out of the assignment (ATSS candidates included) and marked ``IGNORE``."""
        level_priors = self.priors(self.level_sizes(outputs), outputs[0]["cls"].device)
        return self.criterion.assign(level_priors, targets, self.batch_valid_flags(outputs, image_sizes, size_divisor))

    def prior_strides(self, priors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.new_full((len(p),), float(s)) for p, s in zip(priors, self.strides)])

    @staticmethod
    def level_sizes(outputs: list[LevelOutputs]) -> list[tuple[int, int]]:
        return [tuple(o["cls"].shape[-2:]) for o in outputs]

    def flatten(self, outputs: list[LevelOutputs]) -> dict[str, torch.Tensor]:
        flat = {"cls": flatten_levels(outputs, "cls", self.num_classes), "reg": flatten_levels(outputs, "reg", self.reg_channels)}
        if self.has_centerness:
            flat["centerness"] = flatten_levels(outputs, "centerness", 1)[..., 0]
        return flat

    # --------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, outputs: list[LevelOutputs], image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        cfg = self.test_cfg
        priors = self.priors(self.level_sizes(outputs), outputs[0]["cls"].device)
        results = []
        for i, size in enumerate(image_sizes):
            boxes_l, scores_l, labels_l = [], [], []
            for level, (o, pri) in enumerate(zip(outputs, priors)):
                scores = o["cls"][i].permute(1, 2, 0).reshape(-1, self.num_classes).float().sigmoid()
                kept_scores, idx, labels = filter_scores_and_topk(scores, cfg.score_thr, cfg.nms_pre)
                reg = o["reg"][i].permute(1, 2, 0).reshape(-1, self.reg_channels)[idx].float()
                stride = torch.full((len(idx),), float(self.strides[level]), device=reg.device)
                boxes = self.decode(reg, pri[idx], stride, max_shape=size)
                if self.has_centerness:
                    kept_scores = kept_scores * o["centerness"][i].reshape(-1)[idx].float().sigmoid()
                boxes_l.append(boxes)
                scores_l.append(kept_scores)
                labels_l.append(labels)
            boxes, scores, labels = torch.cat(boxes_l), torch.cat(scores_l), torch.cat(labels_l)
            keep = batched_nms_topk(boxes, scores, labels, iou_threshold=cfg.nms_iou, max_num=cfg.max_per_img,
                                    min_bbox_size=cfg.min_bbox_size)
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results

    # ----------------------------------------------------------------- training
    def loss_and_assignment(self, outputs: list[LevelOutputs], targets: list[dict],
                            image_sizes: list[tuple[int, int]]) -> tuple[dict[str, torch.Tensor], Assignment]:
        """Detection losses and the assignment they used (for distillers); ``image_sizes`` are the
        resized sizes before batch padding (valid flags)."""
        level_priors = self.priors(self.level_sizes(outputs), outputs[0]["cls"].device)
        assignment = self.criterion.assign(level_priors, targets, self.batch_valid_flags(outputs, image_sizes))
        losses = self.criterion.loss(self.flatten(outputs), torch.cat(level_priors), self.prior_strides(level_priors),
                                     assignment)
        return losses, assignment

    def loss(self, outputs: list[LevelOutputs], targets: list[dict], image_sizes: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Detection losses; ``image_sizes`` are the resized sizes before batch padding (valid flags)."""
        return self.loss_and_assignment(outputs, targets, image_sizes)[0]

"""Faster R-CNN FPN (Ren et al. 2015; Lin et al. 2017) with MMDetection's defaults
(``faster-rcnn_r50_fpn_1x_coco``) on any timm backbone.

Two stages: an RPN (3 anchors of scale 8 per location on P2-P6, sigmoid objectness) proposes
boxes; a Shared2FC box head classifies RoIAlign 7x7 features pooled from P2-P5 (softmax over
``num_classes + 1`` logits, background *last* as in MMDetection) and refines them with
class-specific deltas.

Why not torchvision's ``RegionProposalNetwork``/``RoIHeads``: their behaviour differs from
MMDetection's in ways that matter for reproducing its numbers (torchvision runs the RPN NMS
class-agnostic across levels, averages the RPN loss differently, puts background first, uses
``MultiScaleRoIAlign``'s canonical level mapping ``k0=4`` at 224 with ``aligned=False``), and
their parameter names cannot be laid out as ``rpn_head.rpn_conv`` / ``roi_head.bbox_head.*``.
We reuse torchvision's ops (``roi_align``, ``batched_nms``, ``box_iou``) and write the small
glue around them, so every parameter maps one to one onto MMDetection's: ``kdzoo.convert``'s
common renames (``backbone.*``, ``neck.lateral_convs``/``fpn_convs``) are the only ones needed, and
``"kdzoo.convert:mmdet_to_kdzoo"`` is the ``filter_fn`` for MMDetection's checkpoints.

The public two-stage API (used by detectors and distillers alike, never private modules):

* ``model.rpn_head(feats)`` -> per-level ``{"cls", "reg"}``; ``model.rpn_proposals(feats, image_sizes)``
* ``model.roi_head.sample(proposals, targets)`` -> :class:`SampledRoIs` (the RoIs after the
  sampler with their assigned GT boxes, labels and regression targets)
* ``model.roi_head.forward_rois(feats, rois)`` -> ``(cls_logits [R, C+1], deltas [R, 4C])``
* ``model.forward_train(feats, targets, image_sizes)`` -> ``(losses, RoIOutputs)``
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import roi_align

from .assigners import NEGATIVE, MaxIoUAssigner
from .backbone import TimmBackbone
from .backbone_weights import create_backbone
from .builder import build_detector_with_cfg
from .box_ops import DeltaXYWHCoder
from .detector import Detector
from .fpn import FPN
from .postprocess import batched_nms_topk, filter_scores_and_topk
from .pretrained import PretrainedCfg
from .priors import AnchorGenerator, valid_flags
from .published import mmdet_cfg
from .registry import register_detector, register_pretrained_cfgs
from .transform import DetectionTransform, ImageBatch

__all__ = [
    "FasterRCNN", "RPNHead", "RoIHead", "Shared2FCBBoxHead", "MMDetRoIExtractor", "ProposalCfg", "RCNNTestCfg",
    "SampledRoIs", "RoIOutputs", "random_sample", "build_faster_rcnn",
]


@dataclass
class ProposalCfg:
    """MMDetection's ``rpn_proposal`` (train: 2000/1000) and ``test_cfg.rpn`` (1000/1000)."""

    nms_pre: int = 1000  # per level, before NMS
    max_per_img: int = 1000
    nms_iou: float = 0.7
    min_bbox_size: float = 0.0


@dataclass
class RCNNTestCfg:
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100


def random_sample(assigned: torch.Tensor, num: int, pos_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MMDetection's ``RandomSampler``: up to ``num * pos_fraction`` positives (``assigned >= 0``),
    the rest of ``num`` filled with negatives; returns (positive, negative) indices."""
    pos = torch.nonzero(assigned >= 0).squeeze(1)
    neg = torch.nonzero(assigned == NEGATIVE).squeeze(1)
    pos = pos[torch.randperm(len(pos), device=pos.device)[: int(num * pos_fraction)]]
    neg = neg[torch.randperm(len(neg), device=neg.device)[: num - len(pos)]]
    return pos, neg


# ----------------------------------------------------------------------------------- RPN
class RPNHead(nn.Module):
    """MMDetection's ``RPNHead``: one shared 3x3 conv + ReLU, 1x1 objectness (sigmoid, one logit per
    anchor) and 1x1 delta predictors; max-IoU 0.7/0.3 with low-quality matches, 256 anchors sampled
    at 1/2 positives, BCE + L1 both averaged over the sampled anchors."""

    def __init__(self, in_channels: int = 256, feat_channels: int = 256, *, strides: tuple[int, ...] = (4, 8, 16, 32, 64),
                 scales: tuple[float, ...] = (8.0,), ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
                 num_samples: int = 256, pos_fraction: float = 0.5, train_cfg: ProposalCfg | None = None,
                 test_cfg: ProposalCfg | None = None, loss_cls_weight: float = 1.0, loss_bbox_weight: float = 1.0) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.anchor_generator = AnchorGenerator(self.strides, ratios=ratios, octave_base_scale=None, scales=scales)
        self.num_anchors = self.anchor_generator.num_anchors
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, self.num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, self.num_anchors * 4, 1)
        self.coder = DeltaXYWHCoder((1.0, 1.0, 1.0, 1.0))
        self.assigner = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True)
        self.num_samples, self.pos_fraction = num_samples, pos_fraction
        self.train_cfg = train_cfg or ProposalCfg(nms_pre=2000, max_per_img=1000)
        self.test_cfg = test_cfg or ProposalCfg(nms_pre=1000, max_per_img=1000)
        self.loss_weights = {"cls": loss_cls_weight, "bbox": loss_bbox_weight}
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):  # MMDetection: Normal(std=0.01) on all RPN convs
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        if len(feats) != len(self.strides):
            raise ValueError(f"RPN expects {len(self.strides)} FPN levels (strides {self.strides}), got {len(feats)}")
        out = []
        for x in feats:
            x = F.relu(self.rpn_conv(x))
            out.append({"cls": self.rpn_cls(x), "reg": self.rpn_reg(x)})
        return out

    def anchors(self, outputs: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        return self.anchor_generator([tuple(o["cls"].shape[-2:]) for o in outputs], outputs[0]["cls"].device)

    def valid_flags(self, outputs: list[dict[str, torch.Tensor]], image_size: tuple[int, int], divisor: int = 32) -> torch.Tensor:
        """Anchors at locations inside the image's own padded extent (``kdzoo.priors.valid_flags``):
        anchors over the padding added for batching are never trained."""
        sizes = [tuple(o["cls"].shape[-2:]) for o in outputs]
        return torch.cat(valid_flags(sizes, self.strides, self.num_anchors, image_size, divisor, outputs[0]["cls"].device))

    @staticmethod
    def _flat(outputs: list[dict[str, torch.Tensor]], key: str, k: int) -> torch.Tensor:
        return torch.cat([o[key].permute(0, 2, 3, 1).reshape(o[key].shape[0], -1, k) for o in outputs], 1)

    def loss(self, outputs: list[dict[str, torch.Tensor]], targets: list[dict], image_sizes: list[tuple[int, int]],
             size_divisor: int = 32) -> dict[str, torch.Tensor]:
        anchors = torch.cat(self.anchors(outputs))
        cls, reg = self._flat(outputs, "cls", 1)[..., 0], self._flat(outputs, "reg", 4)
        cls_terms, reg_terms, num_samples = [], [], 0
        for i, t in enumerate(targets):
            valid = torch.nonzero(self.valid_flags(outputs, image_sizes[i], size_divisor)).squeeze(1)
            assigned = self.assigner(anchors[valid], t["boxes"])
            pos, neg = random_sample(assigned, self.num_samples, self.pos_fraction)
            pos_a, neg_a = valid[pos], valid[neg]
            logits = torch.cat([cls[i][pos_a], cls[i][neg_a]])
            labels = torch.cat([logits.new_ones(len(pos_a)), logits.new_zeros(len(neg_a))])
            cls_terms.append(F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum"))
            target_deltas = self.coder.encode(anchors[pos_a], t["boxes"][assigned[pos]])
            reg_terms.append((reg[i][pos_a].float() - target_deltas).abs().sum())
            num_samples += len(pos_a) + len(neg_a)
        # MMDetection's RPN: the sampled anchors (positives + negatives) of this process's batch, not
        # averaged across processes (docs/crosskd.md, "Loss normalisers").
        avg = anchors.new_tensor(float(num_samples)).clamp(min=1.0)
        return {"loss_rpn_cls": self.loss_weights["cls"] * torch.stack(cls_terms).sum() / avg,
                "loss_rpn_bbox": self.loss_weights["bbox"] * torch.stack(reg_terms).sum() / avg}

    @torch.no_grad()
    def proposals(self, outputs: list[dict[str, torch.Tensor]], image_sizes: list[tuple[int, int]],
                  cfg: ProposalCfg) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image ``(boxes [K, 4], objectness [K])``, best first: the ``nms_pre`` best anchors of
        each level are decoded and clipped, NMS runs per level (MMDetection's ``batched_nms`` with
        level ids), and the ``max_per_img`` best survivors across levels are kept."""
        anchors = self.anchors(outputs)
        results = []
        for i, size in enumerate(image_sizes):
            boxes_l, scores_l, levels_l = [], [], []
            for level, (o, pri) in enumerate(zip(outputs, anchors)):
                scores = o["cls"][i].permute(1, 2, 0).reshape(-1, 1).float().sigmoid()
                scores, idx, _ = filter_scores_and_topk(scores, None, cfg.nms_pre)  # no threshold: top-k only
                deltas = o["reg"][i].permute(1, 2, 0).reshape(-1, 4).float()[idx]
                boxes_l.append(self.coder.decode(pri[idx], deltas, max_shape=size))
                scores_l.append(scores)
                levels_l.append(torch.full_like(scores, level, dtype=torch.long))
            boxes, scores, levels = torch.cat(boxes_l), torch.cat(scores_l), torch.cat(levels_l)
            keep = batched_nms_topk(boxes, scores, levels, iou_threshold=cfg.nms_iou, max_num=cfg.max_per_img,
                                    min_bbox_size=cfg.min_bbox_size)
            results.append((boxes[keep], scores[keep]))
        return results


# ------------------------------------------------------------------------------- RoI head
class MMDetRoIExtractor(nn.Module):
    """MMDetection's ``SingleRoIExtractor``: each RoI is pooled from one level chosen by its scale
    ``sqrt(w * h)``: < 112 -> P2, < 224 -> P3, < 448 -> P4, else P5 (``finest_scale=56``), with
    ``RoIAlign(aligned=True)`` (mmcv's default). We keep this mapping rather than torchvision's
    ``MultiScaleRoIAlign`` (``k0=4`` at 224: < 112 -> P2, < 224 -> P3 ... with ``floor(4 + log2(s/224))``,
    the same thresholds up to an epsilon, but without the half-pixel alignment), so that
    MMDetection's weights see the features they were trained on."""

    def __init__(self, strides: tuple[int, ...] = (4, 8, 16, 32), output_size: int = 7, sampling_ratio: int = 0,
                 finest_scale: float = 56.0) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.finest_scale = finest_scale

    def map_levels(self, boxes: torch.Tensor) -> torch.Tensor:
        scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
        return torch.floor(torch.log2(scale / self.finest_scale + 1e-6)).clamp(0, len(self.strides) - 1).long()

    def forward(self, feats: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """``rois`` [R, 5] = (image index, x1, y1, x2, y2) -> pooled features [R, C, S, S]."""
        if rois.dim() != 2 or rois.shape[1] != 5:
            raise ValueError(f"rois must be [R, 5] (image index, x1, y1, x2, y2), got shape {tuple(rois.shape)}")
        feats = feats[: len(self.strides)]
        levels = self.map_levels(rois[:, 1:])
        rois = rois.float()  # box coordinates stay fp32 under autocast (bf16 would round 523.7 to 524)
        out = rois.new_zeros(len(rois), feats[0].shape[1], self.output_size, self.output_size)
        for level, (f, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.nonzero(levels == level).squeeze(1)
            if len(idx):
                out[idx] = roi_align(f.float(), rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio, aligned=True)
        return out


class Shared2FCBBoxHead(nn.Module):
    """Two shared fully-connected layers, then ``fc_cls`` (``num_classes + 1``, background last) and
    class-specific ``fc_reg`` (``4 * num_classes``); MMDetection's init (Xavier-uniform shared fcs,
    N(0, 0.01) classifier, N(0, 0.001) regressor)."""

    def __init__(self, num_classes: int, in_channels: int = 256, roi_feat_size: int = 7, fc_channels: int = 1024) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.shared_fcs = nn.ModuleList([nn.Linear(in_channels * roi_feat_size ** 2, fc_channels), nn.Linear(fc_channels, fc_channels)])
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, 4 * num_classes)
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


@dataclass
class SampledRoIs:
    """The RoI sampler's output for a batch, positives first within each image.

    ``boxes[i]`` [R_i, 4] are image ``i``'s RoIs; the flat fields below run over all images in order.
    ``labels`` are 0-based classes with ``num_classes`` meaning background; ``gt_boxes`` and
    ``bbox_targets`` (encoded deltas) are meaningful where ``pos_mask`` is set (zeros elsewhere)."""

    boxes: list[torch.Tensor]
    labels: torch.Tensor
    gt_boxes: torch.Tensor
    bbox_targets: torch.Tensor
    pos_mask: torch.Tensor

    @property
    def rois(self) -> torch.Tensor:
        """[R, 5] (image index, x1, y1, x2, y2): MMDetection's ``bbox2roi`` / torchvision's format."""
        return torch.cat([torch.cat([b.new_full((len(b), 1), float(i)), b], 1) for i, b in enumerate(self.boxes)])

    @property
    def roi_boxes(self) -> torch.Tensor:
        return torch.cat(self.boxes)


@dataclass
class RoIOutputs:
    """What one training step of the second stage computed: the sampled RoIs and the box head's raw outputs."""

    sampled: SampledRoIs
    cls_logits: torch.Tensor  # [R, C + 1]
    deltas: torch.Tensor  # [R, 4C]


class RoIHead(nn.Module):
    """MMDetection's ``StandardRoIHead``: max-IoU assignment (0.5/0.5, no low-quality matches) of
    proposals plus the GT boxes, 512 RoIs sampled per image at 1/4 positives, CE over all sampled
    RoIs and L1 on positives' class-specific deltas (stds 0.1, 0.1, 0.2, 0.2), both averaged over
    the number of sampled RoIs; at test time softmax scores, threshold 0.05, per-class NMS 0.5."""

    def __init__(self, num_classes: int, in_channels: int = 256, *, fc_channels: int = 1024, roi_size: int = 7,
                 strides: tuple[int, ...] = (4, 8, 16, 32), num_samples: int = 512, pos_fraction: float = 0.25,
                 add_gt_as_proposals: bool = True, test_cfg: RCNNTestCfg | None = None,
                 loss_cls_weight: float = 1.0, loss_bbox_weight: float = 1.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bbox_roi_extractor = MMDetRoIExtractor(strides, roi_size)
        self.bbox_head = Shared2FCBBoxHead(num_classes, in_channels, roi_size, fc_channels)
        self.coder = DeltaXYWHCoder((0.1, 0.1, 0.2, 0.2))
        self.assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, match_low_quality=False)
        self.num_samples, self.pos_fraction, self.add_gt_as_proposals = num_samples, pos_fraction, add_gt_as_proposals
        self.test_cfg = test_cfg or RCNNTestCfg()
        self.loss_weights = {"cls": loss_cls_weight, "bbox": loss_bbox_weight}

    @torch.no_grad()
    def sample(self, proposals: list[torch.Tensor], targets: list[dict]) -> SampledRoIs:
        """Assign GT to ``proposals`` (per image [K, 4], in the resized frame; the GT boxes are
        prepended as MMDetection's ``add_gt_as_proposals`` does) and sample the training RoIs."""
        if len(proposals) != len(targets):
            raise ValueError(f"got proposals for {len(proposals)} images but targets for {len(targets)}")
        boxes, labels, gts, deltas, pos_masks = [], [], [], [], []
        for props, t in zip(proposals, targets):
            gt, gt_labels = t["boxes"].to(props), t["labels"]
            if self.add_gt_as_proposals:
                props = torch.cat([gt, props])
            assigned = self.assigner(props, gt)
            pos, neg = random_sample(assigned, self.num_samples, self.pos_fraction)
            n_pos, n_neg = len(pos), len(neg)
            boxes.append(torch.cat([props[pos], props[neg]]))
            labels.append(torch.cat([gt_labels[assigned[pos]], gt_labels.new_full((n_neg,), self.num_classes)]))
            pos_gt = gt[assigned[pos]]
            gts.append(torch.cat([pos_gt, props.new_zeros(n_neg, 4)]))
            deltas.append(torch.cat([self.coder.encode(props[pos], pos_gt), props.new_zeros(n_neg, 4)]))
            pos_masks.append(torch.arange(n_pos + n_neg, device=props.device) < n_pos)
        return SampledRoIs(boxes, torch.cat(labels), torch.cat(gts), torch.cat(deltas), torch.cat(pos_masks))

    @property
    def featmap_strides(self) -> tuple[int, ...]:
        """The strides of the FPN levels RoIs are pooled from (P2-P5)."""
        return self.bbox_roi_extractor.strides

    def forward_rois(self, feats: list[torch.Tensor], rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``rois`` [R, 5] from ``feats`` (P2.. levels) and run the box head -> ``(cls [R, C+1], deltas [R, 4C])``."""
        return self.bbox_head(self.bbox_roi_extractor(feats, rois))

    @staticmethod
    def class_deltas(deltas: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The 4 deltas of class ``labels[r]`` in row ``r`` of class-specific ``deltas`` [R, 4C]; ``labels`` must be foreground."""
        # unflatten, not view(len, -1, 4): with no positive RoI in the batch (no GT boxes, or only
        # zero-area ones) R is 0 and view cannot infer the class dimension of an empty tensor.
        return deltas.unflatten(1, (-1, 4))[torch.arange(len(deltas), device=deltas.device), labels]

    def loss(self, cls_logits: torch.Tensor, deltas: torch.Tensor, sampled: SampledRoIs) -> dict[str, torch.Tensor]:
        # MMDetection's BBoxHead: every sampled RoI of this process's batch, not averaged across processes.
        num = cls_logits.new_tensor(float(len(sampled.labels))).clamp(min=1.0)
        loss_cls = F.cross_entropy(cls_logits.float(), sampled.labels, reduction="sum") / num
        pos = sampled.pos_mask
        pos_deltas = self.class_deltas(deltas[pos].float(), sampled.labels[pos])
        loss_bbox = (pos_deltas - sampled.bbox_targets[pos]).abs().sum() / num
        return {"loss_cls": self.loss_weights["cls"] * loss_cls, "loss_bbox": self.loss_weights["bbox"] * loss_bbox}

    def decode(self, boxes: torch.Tensor, deltas: torch.Tensor, max_shape: tuple[int, int] | None = None) -> torch.Tensor:
        """RoI ``boxes`` [R, 4] and class-specific ``deltas`` [R, 4C] -> boxes [R, C, 4]."""
        return self.coder.decode(boxes[:, None, :], deltas.unflatten(1, (-1, 4)), max_shape)  # R may be 0

    def decode_class_deltas(self, boxes: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """RoI ``boxes`` [K, 4] and the deltas of one class each (:meth:`class_deltas`) [K, 4] -> boxes [K, 4]."""
        return self.coder.decode(boxes, deltas)

    @torch.no_grad()
    def predict(self, feats: list[torch.Tensor], proposals: list[torch.Tensor],
                image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        cfg, num_classes = self.test_cfg, self.num_classes
        rois = torch.cat([torch.cat([p.new_full((len(p), 1), float(i)), p], 1) for i, p in enumerate(proposals)])
        cls_logits, deltas = self.forward_rois(feats, rois)
        scores_all = F.softmax(cls_logits.float(), -1).split([len(p) for p in proposals])
        deltas_all = deltas.float().split([len(p) for p in proposals])
        results = []
        for props, scores, d, size in zip(proposals, scores_all, deltas_all, image_sizes):
            boxes = self.decode(props, d, max_shape=size)  # [R, C, 4]
            scores = scores[:, :num_classes]  # background is the last column
            keep = torch.nonzero(scores > cfg.score_thr)
            roi_idx, labels = keep[:, 0], keep[:, 1]
            boxes, scores = boxes[roi_idx, labels], scores[roi_idx, labels]
            keep = batched_nms_topk(boxes, scores, labels, iou_threshold=cfg.nms_iou, max_num=cfg.max_per_img,
                                    min_bbox_size=None)
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results


# ------------------------------------------------------------------------------- detector
class FasterRCNN(Detector):
    """``model(images: list[Tensor[3,H,W]] in 0..1, targets=None)``, the dense detectors' call
    convention: training returns ``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``loss_bbox``;
    eval returns ``[{boxes, scores, labels}]`` per image in its own coordinates."""

    def __init__(self, backbone: TimmBackbone, neck: FPN, rpn_head: RPNHead, roi_head: RoIHead,
                 transform: DetectionTransform, *, pretrained_cfg: PretrainedCfg | None = None) -> None:
        super().__init__(backbone, neck, transform, roi_head.num_classes, pretrained_cfg=pretrained_cfg)
        self.rpn_head = rpn_head
        self.roi_head = roi_head

    def classifier_modules(self) -> tuple[str, ...]:
        # MMDetection's box regression is per class (4 x num_classes outputs): sized by num_classes too.
        return ("roi_head.bbox_head.fc_cls", "roi_head.bbox_head.fc_reg")

    def extract_feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        """FPN levels P2..P6 (strides 4..64); the RoI head pools from P2..P5."""
        return self.neck(self.backbone(x))

    def rpn_proposals(self, feats: list[torch.Tensor], image_sizes: list[tuple[int, int]],
                      rpn_outputs: list[dict[str, torch.Tensor]] | None = None) -> list[torch.Tensor]:
        """Detached proposal boxes per image (train or test settings following ``self.training``)."""
        rpn_outputs = self.rpn_head(feats) if rpn_outputs is None else rpn_outputs
        cfg = self.rpn_head.train_cfg if self.training else self.rpn_head.test_cfg
        return [boxes for boxes, _ in self.rpn_head.proposals(rpn_outputs, image_sizes, cfg)]

    def forward_train(self, feats: list[torch.Tensor], targets: list[dict],
                      image_sizes: list[tuple[int, int]]) -> tuple[dict[str, torch.Tensor], RoIOutputs]:
        """Both stages' losses on features of a preprocessed batch, and the second stage's RoIs and outputs."""
        rpn_outputs = self.rpn_head(feats)
        losses = self.rpn_head.loss(rpn_outputs, targets, image_sizes, self.transform.size_divisor)
        sampled = self.roi_head.sample(self.rpn_proposals(feats, image_sizes, rpn_outputs), targets)
        cls_logits, deltas = self.roi_head.forward_rois(feats, sampled.rois)
        losses.update(self.roi_head.loss(cls_logits, deltas, sampled))
        return losses, RoIOutputs(sampled, cls_logits, deltas)

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training:
            self.check_training_inputs(images, targets)
        batch, targets = self.preprocess(images, targets)
        if self.training:
            return self.forward_train(self.extract_feats(batch.tensors), targets, batch.image_sizes)[0]
        return self.predict_batch(batch)

    @torch.no_grad()
    def predict_batch(self, batch: ImageBatch) -> list[dict[str, torch.Tensor]]:
        with self._autocast():
            feats = self.extract_feats(batch.tensors)
            proposals = self.rpn_proposals(feats, batch.image_sizes)
            detections = self.roi_head.predict(feats, proposals, batch.image_sizes)
        return self.transform.postprocess(detections, batch)


# ------------------------------------------------------------------------------- builders
def build_faster_rcnn(
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
    feat_channels: int | None = None,
    fc_channels: int = 1024,
    input_size: tuple[int, int] | None = None,
    train_sizes: list[tuple[int, int]] | None = None,
    rpn_train_cfg: dict[str, Any] | None = None,
    nms_pre: int = 1000,
    rpn_max_per_img: int = 1000,
    num_rois: int = 512,
    roi_pos_fraction: float = 0.25,
    score_thr: float = 0.05,
    nms_iou: float = 0.5,
    max_per_img: int = 100,
    loss_rpn_cls_weight: float = 1.0,
    loss_rpn_bbox_weight: float = 1.0,
    loss_cls_weight: float = 1.0,
    loss_bbox_weight: float = 1.0,
) -> FasterRCNN:
    """Keyword arguments mirror MMDetection's config fields; ``nms_pre``/``rpn_max_per_img`` are the
    test-time RPN settings, ``rpn_train_cfg`` overrides :class:`ProposalCfg` fields for training."""
    cfg = pretrained_cfg or PretrainedCfg()
    num_classes = cfg.num_classes if num_classes is None else num_classes
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    body = create_backbone(backbone, strides=(4, 8, 16, 32), weights=False if pretrained else backbone_pretrained,
                           frozen_stages=frozen_stages, norm_eval=norm_eval, freeze_norm=freeze_norm, style=style,
                           **(backbone_kwargs or {}))
    neck = FPN(body.output_shape(), fpn_channels, num_extra=1, add_extra_convs=False)  # P6 = max-pool of P5
    rpn = RPNHead(fpn_channels, feat_channels or fpn_channels, strides=neck.strides,
                  train_cfg=ProposalCfg(**{"nms_pre": 2000, "max_per_img": 1000, **(rpn_train_cfg or {})}),
                  test_cfg=ProposalCfg(nms_pre=nms_pre, max_per_img=rpn_max_per_img),
                  loss_cls_weight=loss_rpn_cls_weight, loss_bbox_weight=loss_rpn_bbox_weight)
    roi = RoIHead(num_classes, fpn_channels, fc_channels=fc_channels, strides=neck.strides[:-1],  # P2-P5
                  num_samples=num_rois, pos_fraction=roi_pos_fraction,
                  test_cfg=RCNNTestCfg(score_thr, nms_iou, max_per_img),
                  loss_cls_weight=loss_cls_weight, loss_bbox_weight=loss_bbox_weight)
    transform = DetectionTransform(size=input_size or cfg.input_size, train_sizes=train_sizes,
                                   mean=cfg.mean, std=cfg.std, bgr=cfg.bgr)
    return FasterRCNN(body, neck, rpn, roi, transform, pretrained_cfg=cfg)


# What every faster_rcnn entry point builds; the recipe checker reads its keyword arguments from it.
BUILD_FN = build_faster_rcnn


def _create(arch: str, backbone: str, pretrained: bool, defaults: dict[str, Any] | None = None,
            **kwargs: Any) -> FasterRCNN:
    return build_detector_with_cfg(partial(BUILD_FN, backbone=backbone), arch, pretrained=pretrained,
                                   defaults=defaults, **kwargs)


@register_detector
def faster_rcnn_r50(pretrained: bool = False, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN, ResNet-50 FPN (MMDetection ``faster-rcnn_r50_fpn_1x_coco``, 37.4 box AP)."""
    return _create("faster_rcnn_r50", "resnet50", pretrained, **kwargs)


@register_detector
def faster_rcnn_r101(pretrained: bool = False, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN, ResNet-101 FPN (MMDetection ``faster-rcnn_r101_fpn_1x_coco``, 39.4 box AP)."""
    return _create("faster_rcnn_r101", "resnet101", pretrained, **kwargs)


@register_detector
def faster_rcnn_r18(pretrained: bool = False, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN, ResNet-18 FPN-128 with a 512-wide box head: a CPU-friendly member."""
    return _create("faster_rcnn_r18", "resnet18", pretrained, dict(fpn_channels=128, fc_channels=512), **kwargs)


@register_detector
def faster_rcnn_mnv3s(pretrained: bool = False, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN, MobileNetV3-Small FPN-48 with a 256-wide box head: the shapes TADF student,
    heterogeneous to ``faster_rcnn_r18`` (different backbone family and FPN width)."""
    return _create("faster_rcnn_mnv3s", "mobilenetv3_small_100", pretrained, dict(fpn_channels=48, fc_channels=256),
                   **kwargs)


register_pretrained_cfgs({
    "faster_rcnn_r50.mmdet_coco": mmdet_cfg("faster_rcnn", "faster_rcnn_r50_fpn_1x_coco",
                                            "faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth", 37.4),
    "faster_rcnn_r101.mmdet_coco": mmdet_cfg("faster_rcnn", "faster_rcnn_r101_fpn_1x_coco",
                                             "faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth", 39.4),
})

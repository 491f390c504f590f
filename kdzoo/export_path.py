"""The exportable inference path: the same detections as ``model.eval()(images)`` from a graph with
no data-dependent Python control flow, so that ``torch.export``, the dynamo ONNX exporter and
OpenVINO can take it.

:class:`ExportableDetector` wraps any kdzoo detector (dense heads and Faster R-CNN) and computes

    boxes [N, M, 4], scores [N, M], labels [N, M], num_dets [N] = exportable(images, image_sizes)

* ``images`` ``[N, 3, H, W]`` float32, RGB, values in 0..1, already resized by the caller (keep
  ratio, as :class:`kdzoo.transform.DetectionTransform` does) and zero-padded bottom/right;
  ``H`` and ``W`` are multiples of the size divisor (32). ``image_sizes`` ``[N, 2]`` int64 holds
  each image's ``(h, w)`` before padding. Inside the graph: BGR flip if the model wants it,
  normalisation with the model's mean/std, and zeros over the padding (the eager transform pads
  *after* normalising), so the network sees exactly the eager batch.
* ``M`` is ``max_per_img`` (100 by default). Rows past ``num_dets[i]`` are padding: boxes and
  scores 0, labels -1. Real rows are sorted by score, boxes are in the input (resized) frame,
  clipped to the image's own size; :mod:`kdzoo.export` maps them back to original pixels.

How post-processing is made static (every shape depends only on the input's shape):

* per level, the best ``nms_pre`` (prior, class) pairs are taken by ``topk`` over all pairs (the
  list is padded with ``nms_pre`` entries scoring -1, so ``k`` is a constant even for a level with
  fewer pairs); the score threshold becomes a mask instead of a filter. This keeps the same set as
  "threshold, then the ``nms_pre`` best".
* NMS: one ``torchvision.ops.nms`` call (the op exports: ONNX ``NonMaxSuppression``, a fake kernel
  for ``torch.export``) over all candidates of all images, groups (image, class) kept apart by
  offsetting boxes on a 2-D grid of canvas-sized cells (coordinates stay small; the eager path
  offsets by class too, or loops over classes for large candidate sets, so only an IoU within
  float rounding of the threshold can be decided differently). Masked-out candidates all become one identical
  tiny box in a group of their own, scored below every real one: they cannot suppress a real box,
  and the first of them suppresses the rest, so NMS costs no more than with the filtered list.
  Its variable-length output only scatters into a fixed-size keep mask.
* the final ``max_per_img`` are a ``topk`` over the masked scores.
* Faster R-CNN: the RPN keeps exactly ``rpn max_per_img`` proposal slots (unused ones masked),
  RoIAlign runs once per FPN level on every slot with RoIs of other levels replaced by a tiny box
  (same pooled values as pooling each level's subset), and the second stage's candidates above
  the threshold are bounded by ``rcnn_nms_pre`` (5000 by default, a usual deployment bound); with
  more candidates above the threshold than that (rare), results can differ from eager.

Exact ties are left to each runtime, as in any export: equal scores at the ``nms_pre``/top-k cut
(the large uniform padded area of a mixed-size batch gives many for a random-init model) may keep
different candidates than eager ``topk`` does.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dense_head import DenseHead

__all__ = ["ExportableDetector", "fixed_batched_nms", "select_topk", "OUTPUT_NAMES", "INPUT_NAMES"]

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_dets")


def _clip(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """Clip [N, K, 4] xyxy boxes to each image's (h, w) from ``image_sizes`` [N, 2]."""
    hw = image_sizes.to(boxes.dtype)
    upper = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], -1)[:, None, :]
    return torch.minimum(boxes.clamp(min=0), upper)


def _valid_size(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    wh = boxes[..., 2:] - boxes[..., :2]
    return (wh > min_size).all(-1)


def select_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of ``scores`` [N, P] along dim 1 as ``(values, indices)``, ``k`` a constant:
    the row is padded with ``k`` entries scoring -1 (indices >= P), so P < k needs no branch."""
    pad = scores.new_full((scores.shape[0], k), -1.0)
    return torch.cat([scores, pad], 1).topk(k, dim=1)


def fixed_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor,
                      iou_threshold: float, num_groups: int, canvas: tuple) -> torch.Tensor:
    """Per (image, group) NMS of ``boxes`` [N, K, 4] (inside ``canvas`` = (H, W)), ``scores`` [N, K],
    ``groups`` [N, K] in ``0..num_groups-1`` among the ``valid`` [N, K] candidates -> keep mask [N, K].

    One ``nms`` call: each (image, group) is moved to its own cell of a grid of (H+1) x (W+1) cells,
    ``gx`` groups per row, images below each other. Invalid candidates are one tiny box in the
    extra group ``num_groups``, scored -1."""
    n, k = scores.shape
    height, width = canvas
    gx = math.ceil(math.sqrt(num_groups + 1))
    gy = math.ceil((num_groups + 1) / gx)
    g = torch.where(valid, groups, torch.full_like(groups, num_groups))
    image_row = torch.arange(n, device=boxes.device)[:, None] * gy
    col = (g % gx).to(boxes.dtype) * (width + 1)
    row = (image_row + g // gx).to(boxes.dtype) * (height + 1)
    offsets = torch.stack([col, row, col, row], -1)
    tiny = boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    b = torch.where(valid[..., None], boxes, tiny) + offsets
    s = torch.where(valid, scores, torch.full_like(scores, -1.0))
    keep = torch.ops.torchvision.nms(b.reshape(-1, 4), s.reshape(-1), float(iou_threshold))
    mask = torch.zeros(n * k, dtype=torch.bool, device=boxes.device).index_fill(0, keep, True)
    return mask.reshape(n, k) & valid


def _final(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
           max_per_img: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``max_per_img`` best kept candidates, padded (boxes/scores 0, labels -1), and their count."""
    k = boxes.shape[1]
    if k < max_per_img:  # a static shape test: candidates are nms_pre per level, all constants
        pad = max_per_img - k
        boxes = F.pad(boxes, (0, 0, 0, pad))
        scores = F.pad(scores, (0, pad))
        labels = F.pad(labels, (0, pad))
        keep = F.pad(keep.to(torch.uint8), (0, pad)).bool()
    masked = torch.where(keep, scores, torch.full_like(scores, -1.0))
    top, idx = masked.topk(max_per_img, dim=1)
    ok = top >= 0
    out_boxes = torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4))
    out_boxes = torch.where(ok[..., None], out_boxes, torch.zeros_like(out_boxes))
    out_scores = torch.where(ok, top, torch.zeros_like(top))
    out_labels = torch.where(ok, torch.gather(labels, 1, idx), torch.full_like(idx, -1))
    return out_boxes, out_scores, out_labels, ok.sum(1)


def _per_image(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x`` [N, P, D] gathered at ``idx`` [N, K] -> [N, K, D]."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


class ExportableDetector(nn.Module):
    """``forward(images, image_sizes) -> (boxes, scores, labels, num_dets)``; see the module docstring.

    ``max_per_img`` / ``score_thr`` override the model's test settings; ``rcnn_nms_pre`` bounds
    the second-stage candidates of Faster R-CNN."""

    def __init__(self, model: nn.Module, *, max_per_img: int | None = None, score_thr: float | None = None,
                 rcnn_nms_pre: int = 5000) -> None:
        super().__init__()
        self.model = model
        self.two_stage = hasattr(model, "rpn_head") and hasattr(model, "roi_head")
        if not self.two_stage and not isinstance(getattr(model, "bbox_head", None), DenseHead):
            raise TypeError(f"cannot export {type(model).__name__}: expected a kdzoo dense detector or Faster R-CNN")
        cfg = model.roi_head.test_cfg if self.two_stage else model.bbox_head.test_cfg
        if max_per_img is not None and (isinstance(max_per_img, bool) or not isinstance(max_per_img, int)
                                        or max_per_img < 1):
            raise ValueError(f"max_per_img must be a positive integer (detections kept per image), got {max_per_img!r}")
        if score_thr is not None and not 0.0 <= float(score_thr) < 1.0:
            raise ValueError(f"score_thr must be in [0, 1) (a threshold of 1 or more keeps no detection), got {score_thr!r}")
        self.max_per_img = int(cfg.max_per_img if max_per_img is None else max_per_img)
        self.score_thr = float(cfg.score_thr if score_thr is None else score_thr)
        self.rcnn_nms_pre = int(rcnn_nms_pre)
        t = model.transform
        self.bgr = bool(t.bgr)
        self.register_buffer("mean", t.mean.detach().clone().reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", t.std.detach().clone().reshape(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ pre-processing
    def normalize(self, images: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        x = images.flip(1) if self.bgr else images
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        rows = torch.arange(h, device=x.device)[None, :] < image_sizes[:, :1]
        cols = torch.arange(w, device=x.device)[None, :] < image_sizes[:, 1:]
        inside = rows[:, None, :, None] & cols[:, None, None, :]
        return torch.where(inside, x, torch.zeros_like(x))

    @property
    def net_dtype(self) -> torch.dtype:
        """The network's dtype (fp16 for a half-precision export); decoding and NMS always run in fp32."""
        return next(self.model.parameters()).dtype

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor):
        image_sizes = image_sizes.to(torch.int64)
        x = self.normalize(images.float(), image_sizes)
        # The eager detector's layout (channels-last input and weights); no-op for the exported graph's meaning.
        x = x.to(self.net_dtype).contiguous(memory_format=torch.channels_last)
        feats = self.model.extract_feats(x)
        canvas = (x.shape[-2], x.shape[-1])
        if self.two_stage:
            return self._two_stage(feats, image_sizes, canvas)
        return self._dense(feats, image_sizes, canvas)

    # ------------------------------------------------------------------ dense heads
    def _dense(self, feats, image_sizes, canvas):
        head: DenseHead = self.model.bbox_head
        cfg = head.test_cfg
        outputs = head(feats)
        priors = head.priors(head.level_sizes(outputs), outputs[0]["cls"].device)
        c = head.num_classes
        boxes_l, scores_l, labels_l, valid_l = [], [], [], []
        for level, (o, pri) in enumerate(zip(outputs, priors)):
            n = o["cls"].shape[0]
            scores = o["cls"].permute(0, 2, 3, 1).reshape(n, -1).float().sigmoid()  # (prior, class) pairs
            top, idx = select_topk(scores, cfg.nms_pre)
            valid = top > self.score_thr
            idx = torch.where(valid, idx, torch.zeros_like(idx))
            prior_idx, labels = idx // c, idx % c
            reg = _per_image(o["reg"].permute(0, 2, 3, 1).reshape(n, -1, head.reg_channels).float(), prior_idx)
            pri = pri[prior_idx]
            flat_reg = reg.reshape(-1, head.reg_channels)
            strides = flat_reg.new_full((flat_reg.shape[0],), float(head.strides[level]))
            boxes = head.decode(flat_reg, pri.reshape(-1, pri.shape[-1]), strides).reshape(n, -1, 4)
            if head.has_centerness:
                ctr = o["centerness"].permute(0, 2, 3, 1).reshape(n, -1).float().sigmoid()
                top = top * torch.gather(ctr, 1, prior_idx)
            boxes_l.append(_clip(boxes, image_sizes))
            scores_l.append(top)
            labels_l.append(labels)
            valid_l.append(valid)
        boxes, scores = torch.cat(boxes_l, 1), torch.cat(scores_l, 1)
        labels, valid = torch.cat(labels_l, 1), torch.cat(valid_l, 1)
        valid = valid & _valid_size(boxes, cfg.min_bbox_size)
        keep = fixed_batched_nms(boxes, scores, labels, valid, cfg.nms_iou, c, canvas)
        return _final(boxes, scores, labels, keep, self.max_per_img)

    # ------------------------------------------------------------------ Faster R-CNN
    def _proposals(self, rpn_outputs, image_sizes, canvas):
        rpn = self.model.rpn_head
        cfg = rpn.test_cfg
        anchors = rpn.anchors(rpn_outputs)
        boxes_l, scores_l, levels_l, valid_l = [], [], [], []
        for level, (o, pri) in enumerate(zip(rpn_outputs, anchors)):
            n = o["cls"].shape[0]
            scores = o["cls"].permute(0, 2, 3, 1).reshape(n, -1).float().sigmoid()
            deltas = o["reg"].permute(0, 2, 3, 1).reshape(n, -1, 4).float()
            top, idx = select_topk(scores, cfg.nms_pre)
            valid = top >= 0  # the -1 padding of a level with fewer anchors than nms_pre
            idx = torch.where(valid, idx, torch.zeros_like(idx))
            d = _per_image(deltas, idx)
            boxes = rpn.coder.decode(pri[idx].reshape(-1, 4), d.reshape(-1, 4)).reshape(n, -1, 4)
            boxes_l.append(_clip(boxes, image_sizes))
            scores_l.append(top)
            levels_l.append(torch.full_like(idx, level))
            valid_l.append(valid)
        boxes, scores = torch.cat(boxes_l, 1), torch.cat(scores_l, 1)
        levels, valid = torch.cat(levels_l, 1), torch.cat(valid_l, 1)
        valid = valid & _valid_size(boxes, cfg.min_bbox_size)
        keep = fixed_batched_nms(boxes, scores, levels, valid, cfg.nms_iou, len(rpn_outputs), canvas)
        props, _, _, count = _final(boxes, scores, levels, keep, cfg.max_per_img)
        slots = torch.arange(cfg.max_per_img, device=props.device)[None, :]
        return props, slots < count[:, None]

    def _pool(self, feats, rois):
        """RoIAlign of ``rois`` [R, 5] from each RoI's own FPN level, one call per level on all RoIs."""
        ext = self.model.roi_head.bbox_roi_extractor
        levels = ext.map_levels(rois[:, 1:])
        tiny = torch.cat([rois[:, :1], torch.zeros_like(rois[:, 1:3]), torch.ones_like(rois[:, 3:5])], 1)
        out = None
        for level, (f, stride) in enumerate(zip(feats[: len(ext.strides)], ext.strides)):
            here = levels == level
            r = torch.where(here[:, None], rois, tiny)
            pooled = torch.ops.torchvision.roi_align(f.float(), r, 1.0 / stride, ext.output_size, ext.output_size,
                                                     ext.sampling_ratio, True)
            out = pooled if out is None else torch.where(here[:, None, None, None], pooled, out)
        return out.to(self.net_dtype)

    def _two_stage(self, feats, image_sizes, canvas):
        roi_head = self.model.roi_head
        cfg = roi_head.test_cfg
        c = roi_head.num_classes
        props, prop_valid = self._proposals(self.model.rpn_head(feats), image_sizes, canvas)
        n, r = props.shape[:2]
        batch_idx = torch.arange(n, device=props.device, dtype=props.dtype)[:, None, None].expand(-1, r, 1)
        rois = torch.cat([batch_idx, props], 2).reshape(-1, 5)
        cls_logits, deltas = roi_head.bbox_head(self._pool(feats, rois))
        scores = F.softmax(cls_logits.float(), -1)[:, :c].reshape(n, r * c)
        boxes = roi_head.coder.decode(rois[:, None, 1:], deltas.float().reshape(n * r, c, 4)).reshape(n, r * c, 4)
        valid = (scores > self.score_thr) & prop_valid[:, :, None].expand(-1, -1, c).reshape(n, r * c)
        scores = torch.where(valid, scores, torch.full_like(scores, -1.0))
        k = min(self.rcnn_nms_pre, r * c)
        top, idx = scores.topk(k, dim=1)
        valid = top > self.score_thr
        boxes = _clip(_per_image(boxes, idx), image_sizes)
        labels = idx % c
        keep = fixed_batched_nms(boxes, top, labels, valid, cfg.nms_iou, c, canvas)
        return _final(boxes, top, labels, keep, self.max_per_img)

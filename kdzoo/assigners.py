"""Label assignment. Each assigner returns, per prior, the index of its GT box,
``NEGATIVE`` (-1, background) or ``IGNORE`` (-2, excluded from the losses)."""
from __future__ import annotations

import torch
from torchvision.ops import box_iou

__all__ = ["MaxIoUAssigner", "ATSSAssigner", "fcos_assign", "NEGATIVE", "IGNORE"]

NEGATIVE = -1
IGNORE = -2


class MaxIoUAssigner:
    """MMDetection's ``MaxIoUAssigner`` (RetinaNet: pos 0.5, neg 0.4, min_pos_iou 0)."""

    def __init__(self, pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.4, min_pos_iou: float = 0.0,
                 match_low_quality: bool = True, gt_max_assign_all: bool = True) -> None:
        self.pos_iou_thr, self.neg_iou_thr, self.min_pos_iou = pos_iou_thr, neg_iou_thr, min_pos_iou
        self.match_low_quality, self.gt_max_assign_all = match_low_quality, gt_max_assign_all

    def __call__(self, priors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        assigned = torch.full((len(priors),), IGNORE, dtype=torch.long, device=priors.device)
        if len(gt_boxes) == 0:
            return assigned.fill_(NEGATIVE)
        ious = box_iou(gt_boxes, priors)  # [G, A]
        max_iou, argmax = ious.max(0)
        assigned[(max_iou >= 0) & (max_iou < self.neg_iou_thr)] = NEGATIVE
        pos = max_iou >= self.pos_iou_thr
        assigned[pos] = argmax[pos]
        if self.match_low_quality:
            gt_max, gt_arg = ious.max(1)
            for g in range(len(gt_boxes)):
                # A GT with zero overlap everywhere would otherwise claim every prior (IoU == max == 0).
                if gt_max[g] >= self.min_pos_iou and gt_max[g] > 0:
                    if self.gt_max_assign_all:
                        assigned[ious[g] == gt_max[g]] = g
                    else:
                        assigned[gt_arg[g]] = g
        return assigned


class ATSSAssigner:
    """Adaptive training sample selection (Zhang et al. 2020), as in MMDetection's ``ATSSAssigner``.

    Per GT: take the ``topk`` priors closest by centre distance on each level, threshold their
    IoUs at mean + std (unbiased), keep those whose centre lies inside the GT; a prior claimed
    by several GTs goes to the one with the highest IoU.
    """

    def __init__(self, topk: int = 9) -> None:
        self.topk = topk

    def __call__(self, priors: torch.Tensor, num_per_level: list[int], gt_boxes: torch.Tensor) -> torch.Tensor:
        num_priors, num_gt = len(priors), len(gt_boxes)
        assigned = torch.full((num_priors,), NEGATIVE, dtype=torch.long, device=priors.device)
        if num_gt == 0:
            return assigned
        ious = box_iou(priors, gt_boxes)  # [A, G]
        prior_c = (priors[:, :2] + priors[:, 2:]) / 2
        gt_c = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        dist = torch.cdist(prior_c, gt_c)  # [A, G]
        candidates, start = [], 0
        for n in num_per_level:
            k = min(self.topk, n)
            candidates.append(dist[start:start + n].topk(k, dim=0, largest=False).indices + start)
            start += n
        cand = torch.cat(candidates, 0)  # [K, G]
        cand_ious = ious[cand, torch.arange(num_gt, device=priors.device)]
        thr = cand_ious.mean(0) + cand_ious.std(0)
        is_pos = cand_ious >= thr[None]
        cx, cy = prior_c[cand, 0], prior_c[cand, 1]  # [K, G]
        inside = torch.stack([cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy]).amin(0) > 0.01
        is_pos &= inside
        masked = torch.full_like(ious, -float("inf"))
        gt_idx = torch.arange(num_gt, device=priors.device).expand_as(cand)
        masked[cand[is_pos], gt_idx[is_pos]] = ious[cand[is_pos], gt_idx[is_pos]]
        best, arg = masked.max(1)
        hit = best != -float("inf")
        assigned[hit] = arg[hit]
        return assigned


def fcos_assign(points: torch.Tensor, ranges: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """FCOS: a point is positive for the smallest-area GT that contains it and whose largest
    side distance falls in the point's level range (no centre sampling, MMDetection's default)."""
    assigned = torch.full((len(points),), NEGATIVE, dtype=torch.long, device=points.device)
    if len(gt_boxes) == 0:
        return assigned
    x, y = points[:, 0:1], points[:, 1:2]
    d = torch.stack([x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y], -1)  # [P, G, 4]
    inside = d.amin(-1) > 0
    max_d = d.amax(-1)
    in_range = (max_d >= ranges[:, 0:1]) & (max_d <= ranges[:, 1:2])
    areas = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None].expand(len(points), -1).clone()
    areas[~(inside & in_range)] = float("inf")
    min_area, arg = areas.min(1)
    hit = min_area != float("inf")
    assigned[hit] = arg[hit]
    return assigned

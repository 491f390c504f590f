"""Test-time post-processing shared by the dense heads and the RPN (MMDetection's semantics).

* :func:`filter_scores_and_topk`: per level, threshold the (prior, class) scores, then keep the
  ``topk`` best (MMDetection's ``filter_scores_and_topk``; the RPN passes no threshold).
* :func:`batched_nms_topk`: drop boxes not wider and taller than ``min_bbox_size``, NMS within
  each group (class, or level for the RPN) and keep the ``max_num`` best.

``kdzoo.export_path`` re-implements both with static shapes for export.
"""
from __future__ import annotations

import torch
from torchvision.ops import batched_nms

__all__ = ["filter_scores_and_topk", "batched_nms_topk"]


def filter_scores_and_topk(scores: torch.Tensor, score_thr: float | None,
                           topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``scores`` [P, C] -> the kept ``(scores [K], prior indices [K], labels [K])``: the pairs above
    ``score_thr`` (all pairs when ``None``) in prior-major order, or their ``topk`` best, best first."""
    if score_thr is None:
        keep = torch.nonzero(torch.ones_like(scores, dtype=torch.bool))
    else:
        keep = torch.nonzero(scores > score_thr)
    kept = scores[keep[:, 0], keep[:, 1]]
    if len(kept) > topk:
        kept, order = kept.topk(topk)
        keep = keep[order]
    return kept, keep[:, 0], keep[:, 1]


def batched_nms_topk(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, *, iou_threshold: float,
                     max_num: int, min_bbox_size: float | None = 0.0) -> torch.Tensor:
    """Indices into ``boxes`` [K, 4] of the ``max_num`` best boxes surviving NMS within each of
    ``groups`` [K], best first; with ``min_bbox_size`` (not ``None``) smaller boxes are dropped first."""
    idx = torch.arange(len(boxes), device=boxes.device)
    if min_bbox_size is not None:
        wh = boxes[:, 2:] - boxes[:, :2]
        idx = idx[(wh > min_bbox_size).all(1)]
    keep = batched_nms(boxes[idx], scores[idx], groups[idx], iou_threshold)[:max_num]
    return idx[keep]

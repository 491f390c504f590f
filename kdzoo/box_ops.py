"""Box coders and aligned box geometry (torchvision's ``box_iou`` covers the pairwise case)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DeltaXYWHCoder", "distance2bbox", "bbox2distance", "aligned_iou", "Integral", "clip_boxes"]


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Clip xyxy boxes to an image of ``size`` (h, w)."""
    h, w = size
    return torch.stack(
        [boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], -1
    )


class DeltaXYWHCoder:
    """MMDetection's ``DeltaXYWHBBoxCoder``: (dx, dy, dw, dh) relative to a prior box, normalised by stds."""

    max_ratio = abs(math.log(16 / 1000))

    def __init__(self, stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> None:
        self.stds = stds

    def encode(self, priors: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
        px, py = priors[:, 0] + 0.5 * pw, priors[:, 1] + 0.5 * ph
        gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
        gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], -1)
        return deltas / deltas.new_tensor(self.stds)

    def decode(self, priors: torch.Tensor, deltas: torch.Tensor, max_shape: tuple[int, int] | None = None) -> torch.Tensor:
        deltas = deltas * deltas.new_tensor(self.stds)
        pxy = (priors[..., :2] + priors[..., 2:]) * 0.5
        pwh = priors[..., 2:] - priors[..., :2]
        gxy = pxy + pwh * deltas[..., :2]
        gwh = pwh * deltas[..., 2:].clamp(-self.max_ratio, self.max_ratio).exp()
        boxes = torch.cat([gxy - 0.5 * gwh, gxy + 0.5 * gwh], -1)
        return clip_boxes(boxes, max_shape) if max_shape is not None else boxes


def distance2bbox(points: torch.Tensor, distance: torch.Tensor, max_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """(left, top, right, bottom) distances from points -> xyxy boxes."""
    boxes = torch.cat([points - distance[..., :2], points + distance[..., 2:]], -1)
    return clip_boxes(boxes, max_shape) if max_shape is not None else boxes


def bbox2distance(points: torch.Tensor, boxes: torch.Tensor, max_dis: float | None = None, eps: float = 0.1) -> torch.Tensor:
    """xyxy boxes -> (l, t, r, b) distances from points, clamped to ``max_dis - eps``: GFL's DFL targets,
    ``reg_max - 0.1`` as MMDetection's ``DistancePointBBoxCoder.encode``."""
    d = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], -1)
    return d.clamp(0, max_dis - eps) if max_dis is not None else d


def aligned_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """IoU of a[i] with b[i] (same shape [..., 4])."""
    lt = torch.max(a[..., :2], b[..., :2])
    rb = torch.min(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=eps)


class Integral(nn.Module):
    """GFL's integral: expected value of a softmax over ``reg_max + 1`` bins, per box side."""

    def __init__(self, reg_max: int = 16) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prob = F.softmax(x.reshape(*x.shape[:-1], 4, self.reg_max + 1).float(), dim=-1)
        return prob @ self.project.type_as(prob)

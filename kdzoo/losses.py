"""Detection losses with MMDetection's definitions. All return per-element losses; heads
apply weights and averaging factors. Focal and GIoU use torchvision's ops."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .box_ops import aligned_iou

__all__ = ["focal_loss", "quality_focal_loss", "distribution_focal_loss", "giou_loss", "iou_loss", "one_hot"]


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels in [0, C] with C meaning background -> [N, C] float targets (background all zero)."""
    return F.one_hot(labels, num_classes + 1)[:, :num_classes].float()


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")


def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """QFL (GFL, Li et al. 2020): BCE against an IoU-valued soft target on the GT class and 0
    elsewhere, modulated by |sigmoid - target|^beta. ``labels == C`` is background. Returns [N]."""
    num_classes = logits.shape[1]
    sig = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * sig.pow(beta)
    pos = torch.nonzero(labels < num_classes).squeeze(1)
    if len(pos):
        pl = labels[pos]
        target = scores[pos].to(logits.dtype)
        loss[pos, pl] = F.binary_cross_entropy_with_logits(logits[pos, pl], target, reduction="none") * (target - sig[pos, pl]).abs().pow(beta)
    return loss.sum(1)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL: cross-entropy on the two bins around a continuous target, weighted by proximity. [N]."""
    left = target.long()
    right = left + 1
    w_left = right.float() - target
    w_right = target - left.float()
    return F.cross_entropy(logits, left, reduction="none") * w_left + F.cross_entropy(logits, right, reduction="none") * w_right


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return generalized_box_iou_loss(pred, target, reduction="none", eps=1e-6)


def iou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MMDetection's ``IoULoss`` in its default 'log' mode: -log(IoU)."""
    return -aligned_iou(pred, target).clamp(min=eps).log()

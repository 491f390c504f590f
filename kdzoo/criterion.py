"""Training criteria of the dense heads: label assignment and losses, split from the heads (DETR's
model / criterion split). A head owns its criterion (``head.criterion``) and hands it flattened
outputs and priors; the criterion returns its :class:`Assignment`, so distillers reuse the very
positives and normalisers the detection losses used.

A criterion is a plain object, not an ``nn.Module``: it holds no state of its own (GFL's
``Integral`` stays the head's), so checkpoints keep MMDetection's key names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from .assigners import IGNORE
from .distributed import reduce_mean
from .losses import focal_loss, giou_loss, one_hot

__all__ = ["Assignment", "DenseCriterion"]


@dataclass
class Assignment:
    """One batch's label assignment and the normalisers derived from it. Flat fields over the
    positives (``pos_*``) run in ``positive``'s row-major order (image, then prior)."""

    gt_index: torch.Tensor  # [N, P] long: the prior's GT index, NEGATIVE or IGNORE
    labels: torch.Tensor  # [N, P] long: the GT class of positives, num_classes elsewhere
    pos_gt_boxes: torch.Tensor  # [K, 4] the positives' GT boxes
    num_pos: torch.Tensor  # the classification avg factor: positives (mean over processes where synced), >= 1
    # FCOS/ATSS: the positives' centerness targets [K] and their sum as an avg factor
    centerness_targets: torch.Tensor | None = None
    centerness_avg: torch.Tensor | None = None

    @property
    def positive(self) -> torch.Tensor:
        return self.gt_index >= 0

    @property
    def valid(self) -> torch.Tensor:
        """False where the assigner ignores the prior or it lies over batch padding (MMDetection's label weights)."""
        return self.gt_index != IGNORE


class DenseCriterion:
    """Assignment and losses of one dense family; subclasses implement :meth:`assign_single` and
    :meth:`loss` (one ``loss_*`` method per term)."""

    #: the positives count that averages the losses is averaged over processes (ATSS, GFL, FCOS);
    #: MMDetection's RetinaNet (``AnchorHead``) uses each process's own count
    sync_avg_factor: ClassVar[bool] = True
    #: CrossKD compares decoded boxes with this loss (families whose ``reg`` decodes to boxes)
    kd_box_loss: ClassVar[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = staticmethod(giou_loss)
    #: the lower bound of the centerness-target avg factor (FCOS: 1e-6)
    centerness_avg_minimum: ClassVar[float] = 1.0

    def __init__(self, num_classes: int, *, loss_weights: dict[str, float]) -> None:
        self.num_classes = num_classes
        self.loss_weights = dict(loss_weights)

    def avg_factor(self, count: torch.Tensor | float, device: torch.device, minimum: float = 1.0) -> torch.Tensor:
        """A loss normaliser: averaged over processes when ``sync_avg_factor``, >= ``minimum``."""
        count = torch.as_tensor(count, dtype=torch.float32, device=device)
        return (reduce_mean(count) if self.sync_avg_factor else count).clamp(min=minimum)

    def assign_single(self, level_priors: list[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """One image's assignment: per prior, the index of its GT box, ``NEGATIVE`` or ``IGNORE``."""
        raise NotImplementedError

    def centerness_targets(self, pos_priors: torch.Tensor, pos_gt_boxes: torch.Tensor) -> torch.Tensor | None:
        """The positives' centerness targets, for families with a centerness branch."""
        return None

    def assign(self, level_priors: list[torch.Tensor], targets: list[dict],
               valid_flags: list[list[torch.Tensor]] | None = None) -> Assignment:
        """Assign every image's ``targets`` (resized frame) to ``level_priors``; with per-image
        ``valid_flags`` only the flagged priors take part and the others are ``IGNORE``."""
        gt_index = []
        for i, t in enumerate(targets):
            if valid_flags is None:
                gt_index.append(self.assign_single(level_priors, t["boxes"]))
                continue
            flags = valid_flags[i]
            inside = self.assign_single([p[f] for p, f in zip(level_priors, flags)], t["boxes"])
            assigned = inside.new_full((sum(len(p) for p in level_priors),), IGNORE)
            assigned[torch.cat(flags)] = inside
            gt_index.append(assigned)
        gt_index = torch.stack(gt_index)
        positive = gt_index >= 0
        labels = torch.full_like(gt_index, self.num_classes)
        pos_gt = []
        for i, t in enumerate(targets):
            matched = gt_index[i][positive[i]]
            labels[i][positive[i]] = t["labels"][matched]
            pos_gt.append(t["boxes"][matched])
        pos_gt = torch.cat(pos_gt)
        device = gt_index.device
        assignment = Assignment(gt_index, labels, pos_gt, self.avg_factor(int(positive.sum()), device))
        ctr = self.centerness_targets(torch.cat(level_priors)[None].expand(len(targets), -1, -1)[positive], pos_gt)
        if ctr is not None:
            assignment.centerness_targets = ctr
            assignment.centerness_avg = self.avg_factor(ctr.sum().detach(), device, minimum=self.centerness_avg_minimum)
        return assignment

    def loss(self, flat: dict[str, torch.Tensor], priors: torch.Tensor, strides: torch.Tensor,
             assignment: Assignment) -> dict[str, torch.Tensor]:
        """The weighted losses from the head's flattened outputs (``DenseHead.flatten``), the
        concatenated priors [P, ...] with their strides [P], and the batch's assignment."""
        raise NotImplementedError

    def loss_cls(self, cls: torch.Tensor, assignment: Assignment) -> torch.Tensor:
        """Focal loss over the valid priors (``cls`` [N, P, C]), averaged by the positives."""
        valid = assignment.valid.reshape(-1)
        labels = assignment.labels.reshape(-1)[valid]
        return focal_loss(cls.reshape(-1, self.num_classes)[valid], one_hot(labels, self.num_classes)).sum() / assignment.num_pos

    @staticmethod
    def loss_centerness(pos_centerness: torch.Tensor, assignment: Assignment) -> torch.Tensor:
        """BCE of the positives' centerness logits against their targets, averaged by the positives."""
        return F.binary_cross_entropy_with_logits(pos_centerness, assignment.centerness_targets,
                                                  reduction="sum") / assignment.num_pos

    def kd_avg_factor(self, assignment: Assignment) -> torch.Tensor:
        """What CrossKD averages its terms by: the number of positives (FCOS: its bbox normaliser)."""
        return assignment.num_pos


class CenternessCriterion(DenseCriterion):
    """The families with a centerness branch (FCOS, ATSS): focal classification, a box loss on the
    positives weighted by their centerness targets (:meth:`loss_bbox`, the family's), and the
    centerness BCE."""

    def loss(self, flat: dict[str, torch.Tensor], priors: torch.Tensor, strides: torch.Tensor,
             assignment: Assignment) -> dict[str, torch.Tensor]:
        pos, n = assignment.positive, len(assignment.positive)
        pos_priors = priors[None].expand(n, -1, -1)[pos]
        pos_pred, pos_ctr = flat["reg"][pos], flat["centerness"][pos]
        if pos.any():
            loss_bbox = self.loss_bbox(pos_priors, pos_pred, assignment)
            loss_ctr = self.loss_centerness(pos_ctr, assignment)
        else:  # no positive in the batch: zero, still connected to the graph
            loss_bbox = pos_pred.sum() * 0
            loss_ctr = pos_ctr.sum() * 0
        return {
            "loss_cls": self.loss_weights["cls"] * self.loss_cls(flat["cls"], assignment),
            "loss_bbox": self.loss_weights["bbox"] * loss_bbox,
            "loss_centerness": self.loss_weights["centerness"] * loss_ctr,
        }

    def loss_bbox(self, pos_priors: torch.Tensor, pos_pred: torch.Tensor, assignment: Assignment) -> torch.Tensor:
        """The box loss of the positives (their priors and regression outputs), centerness-weighted."""
        raise NotImplementedError

"""Task-adaptive distillation (TADF, Sun et al. 2020; docs/tadf.md) for Faster R-CNN FPN and RetinaNet.

The student borrows from the frozen teacher only where it does worse, at three levels:

* ``feat``: Gaussian-masked MSE between a learned 1x1 adapter of each student FPN level and
  the teacher's (:func:`gaussian_fg_mask`, :func:`masked_feature_loss`);
* ``cls``: temperature-softened KL on positive regions where the teacher gives the GT class a
  higher probability than the student (:func:`teacher_better_cls_mask`, :func:`soft_label_kl`);
* ``reg``: L1 pulling the student's deltas to the teacher's on positive regions where the
  teacher's decoded box overlaps the GT more (:func:`teacher_better_reg_mask`).

Teacher and student are compared on the same regions ("region proposal sharing"): for Faster
R-CNN the student's sampled RoIs are pooled from the teacher's FPN and run through the teacher's
box head; for RetinaNet both share the anchor layout and the student's assignment. The total
distillation weight follows :func:`decay_factor` of the training progress set with
``set_progress(t)``. The paper's code is not public: every choice below that the paper leaves
open is an option with a documented default.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..box_ops import aligned_iou
from ..detector import DenseDetector, check_targets
from ..distributed import reduce_mean
from ..faster_rcnn import FasterRCNN, RoIHead
from ..retinanet import RetinaHead
from . import Distiller, check_weight, register_distiller, teacher_inputs

__all__ = [
    "TADF",
    "TERMS",
    "DECAY_SCHEDULES",
    "decay_factor",
    "gaussian_fg_mask",
    "masked_feature_loss",
    "soft_label_kl",
    "teacher_better_cls_mask",
    "teacher_better_reg_mask",
]

TERMS = ("feat", "cls", "reg")
DECAY_SCHEDULES = ("linear", "cosine", "constant")


# ------------------------------------------------------------------------------- pieces
def decay_factor(t: float, schedule: str = "linear") -> float:
    """docs/tadf.md, "Decay": the multiplier of the distillation weight at progress ``t`` in [0, 1]:
    ``1 - t`` (linear, the default), ``(1 + cos(pi t)) / 2`` (cosine) or ``1`` (constant)."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"progress t must be in [0, 1], got {t}")
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"decay schedule must be one of {DECAY_SCHEDULES}, got {schedule!r}")


def gaussian_fg_mask(boxes: torch.Tensor, feat_size: tuple[int, int], stride: int, sigma_ratio: float = 0.25) -> torch.Tensor:
    """docs/tadf.md, "Feature term": the [H, W] mask of one image on one FPN level.

    Each feature cell is the image point at its centre ``((x + 0.5) * stride, (y + 0.5) * stride)``.
    A box (xyxy, pixels of the network input) contributes ``exp(-dx^2 / 2 sx^2 - dy^2 / 2 sy^2)``
    with ``(dx, dy)`` the offset from the box centre and ``(sx, sy) = sigma_ratio * (w, h)`` (the
    project's default 0.25 leaves exp(-2) = 0.14 at the box edge), and 0 at cells whose centre lies
    outside the box; overlapping boxes take the maximum. Its peak is 1 where a cell centre
    coincides with a box centre.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] xyxy, got shape {tuple(boxes.shape)}")
    if sigma_ratio <= 0:
        raise ValueError(f"sigma_ratio must be > 0, got {sigma_ratio}")
    h, w = feat_size
    mask = boxes.new_zeros(h, w)
    if len(boxes) == 0:
        return mask
    ys = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    xs = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    x1, y1, x2, y2 = (boxes[:, i, None] for i in range(4))  # [N, 1]
    sx = ((x2 - x1) * sigma_ratio).clamp(min=1e-6)
    sy = ((y2 - y1) * sigma_ratio).clamp(min=1e-6)
    gx = torch.exp(-((xs[None] - (x1 + x2) / 2) ** 2) / (2 * sx ** 2)) * ((xs[None] >= x1) & (xs[None] <= x2))  # [N, W]
    gy = torch.exp(-((ys[None] - (y1 + y2) / 2) ** 2) / (2 * sy ** 2)) * ((ys[None] >= y1) & (ys[None] <= y2))  # [N, H]
    return (gy[:, :, None] * gx[:, None, :]).amax(0)


def masked_feature_loss(feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
                        masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mask-weighted MSE (mean over channels) summed over levels and locations, divided by the
    sum of the masks (docs/tadf.md); ``masks[l]`` is [N, H, W] for level ``l``."""
    num, den = feats[0].new_zeros(()), feats[0].new_zeros(())
    for level, (f, tf, m) in enumerate(zip(feats, teacher_feats, masks)):
        if f.shape != tf.shape:
            raise ValueError(f"FPN level {level}: adapted student feature {tuple(f.shape)} and teacher feature "
                             f"{tuple(tf.shape)} differ; student and teacher need the same strides and input frame")
        num = num + (((f.float() - tf.float()) ** 2).mean(1) * m).sum()
        den = den + m.sum()
    return num / reduce_mean(den.detach()).clamp(min=1.0)


def soft_label_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  use_sigmoid: bool = False) -> torch.Tensor:
    """Per-region KL(teacher || student) of the temperature-softened class distributions, scaled
    by T^2 (Hinton et al.) -> [K]. Softmax heads (Faster R-CNN, background included) use one
    categorical distribution per region; sigmoid heads (RetinaNet) one Bernoulli per class, summed."""
    s, t = student_logits.float() / temperature, teacher_logits.float().detach() / temperature
    if use_sigmoid:
        p = t.sigmoid()
        kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    else:
        kl = F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))
    return kl.sum(-1) * temperature ** 2


def teacher_better_cls_mask(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                            use_sigmoid: bool = False) -> torch.Tensor:
    """docs/tadf.md, "Classification term": True where the teacher's probability of the GT
    class ``labels`` (at T = 1) strictly exceeds the student's. [K, C] logits, [K] labels -> [K] bool."""
    if len(labels) != len(student_logits) or student_logits.shape != teacher_logits.shape:
        raise ValueError(f"expected student/teacher logits of one shape [K, C] and labels [K]; got "
                         f"{tuple(student_logits.shape)}, {tuple(teacher_logits.shape)}, {tuple(labels.shape)}")
    prob = torch.sigmoid if use_sigmoid else (lambda x: F.softmax(x, -1))
    rows = torch.arange(len(labels), device=labels.device)
    return prob(teacher_logits.float())[rows, labels] > prob(student_logits.float())[rows, labels]


def teacher_better_reg_mask(student_boxes: torch.Tensor, teacher_boxes: torch.Tensor, gt_boxes: torch.Tensor,
                            margin: float = 0.0) -> torch.Tensor:
    """docs/tadf.md, "Regression term": True where IoU(teacher box, GT) > IoU(student box, GT)
    + ``margin``. All [K, 4] xyxy -> [K] bool."""
    if not student_boxes.shape == teacher_boxes.shape == gt_boxes.shape:
        raise ValueError(f"student, teacher and GT boxes must share one shape [K, 4]; got {tuple(student_boxes.shape)}, "
                         f"{tuple(teacher_boxes.shape)}, {tuple(gt_boxes.shape)}")
    return aligned_iou(teacher_boxes.float(), gt_boxes.float()) > aligned_iou(student_boxes.float(), gt_boxes.float()) + margin


# ---------------------------------------------------------------------------- distiller
def _check_pair(student: nn.Module, teacher: nn.Module) -> str:
    """'two_stage' or 'retinanet'; fails naming both values when the pair cannot share regions."""
    if isinstance(student, FasterRCNN) and isinstance(teacher, FasterRCNN):
        s, t = student.roi_head, teacher.roi_head
        pairs = {"num_classes": (s.num_classes, t.num_classes), "FPN strides": (student.feature_strides, teacher.feature_strides),
                 "RoI strides": (s.featmap_strides, t.featmap_strides)}
        kind = "two_stage"
    elif isinstance(student, DenseDetector) and isinstance(teacher, DenseDetector) and \
            isinstance(student.bbox_head, RetinaHead) and isinstance(teacher.bbox_head, RetinaHead):
        s, t = student.bbox_head, teacher.bbox_head
        sizes = [(2, 3)] * len(s.strides)
        pairs = {"num_classes": (s.num_classes, t.num_classes), "strides": (s.strides, t.strides),
                 "anchors": tuple((g.scales, g.ratios) for g in (s.anchor_generator, t.anchor_generator))}
        if pairs["strides"][0] == pairs["strides"][1] and not all(
                torch.equal(a, b) for a, b in zip(s.priors(sizes, "cpu"), t.priors(sizes, "cpu"))):
            raise ValueError(f"student and teacher anchor layouts differ: {pairs['anchors']}")
        kind = "retinanet"
    else:
        raise TypeError("TADF pairs a Faster R-CNN student with a Faster R-CNN teacher, or a RetinaNet with a RetinaNet; "
                        f"got student {type(student).__name__} and teacher {type(teacher).__name__}"
                        + (f" (heads {type(getattr(student, 'bbox_head', None)).__name__}, "
                           f"{type(getattr(teacher, 'bbox_head', None)).__name__})" if hasattr(student, "bbox_head") else ""))
    for what, (a, b) in pairs.items():
        if a != b:
            raise ValueError(f"student and teacher differ in {what}: student {a}, teacher {b}")
    return kind


@register_distiller("tadf")
class TADF(Distiller):
    """``build_distiller('tadf', student, teacher, terms=('feat', 'cls', 'reg'), decay='linear', ...)``.

    Args:
        terms: which distillation terms run (any of ``TERMS``); the detection losses always do.
        loss_feat_weight, loss_cls_weight, loss_reg_weight: lambda_0 of each term (project defaults 1.0).
        decay: ``'linear'`` (the default, docs/tadf.md), ``'cosine'`` or ``'constant'``; multiplies all terms.
        adaptive: ``False`` distils every positive region (the ablation without the teacher-wins rule).
        temperature: softening of the classification KL (project default 2.0, T^2-scaled).
        sigma_ratio: Gaussian sigma as a fraction of the box width/height (project default 0.25).
        reg_margin: the teacher's IoU must beat the student's by more than this (default 0).
        reg_loss: ``'l1'`` (Faster R-CNN's box loss, default) or ``'smooth_l1'`` (beta ``smooth_l1_beta``).

    The 1x1 adapter (student FPN width -> teacher FPN width, shared by all levels as the FPN levels
    share their heads) is trained with the student and excluded from :meth:`student_state_dict`.
    Classification and regression terms are averaged over the student's positive regions (all of
    them, not only the selected ones, so a term fades as the student overtakes the teacher).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, terms: Sequence[str] = TERMS,
                 loss_feat_weight: float = 1.0, loss_cls_weight: float = 1.0, loss_reg_weight: float = 1.0,
                 decay: str = "linear", adaptive: bool = True, temperature: float = 2.0, sigma_ratio: float = 0.25,
                 reg_margin: float = 0.0, reg_loss: str = "l1", smooth_l1_beta: float = 1.0) -> None:
        super().__init__(student, teacher)
        self.kind = _check_pair(student, teacher)
        terms = (terms,) if isinstance(terms, str) else tuple(terms)
        unknown = [t for t in terms if t not in TERMS]
        if unknown:
            raise ValueError(f"terms must be a subset of {TERMS}, got unknown {unknown}")
        if not terms:
            raise ValueError(f"terms must name at least one of {TERMS}, got none: without a term the teacher would run "
                             "every step and teach nothing (train the student recipe for a baseline)")
        decay_factor(0.0, decay)  # validates the name
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not (isinstance(sigma_ratio, (int, float)) and math.isfinite(sigma_ratio) and sigma_ratio > 0):
            raise ValueError(f"sigma_ratio must be > 0 (the Gaussian's sigma as a share of the box size), got {sigma_ratio!r}")
        check_weight("smooth_l1_beta", smooth_l1_beta)
        if not (isinstance(reg_margin, (int, float)) and math.isfinite(reg_margin)):
            raise ValueError(f"reg_margin must be a finite number, got {reg_margin!r}")
        if reg_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"reg_loss must be 'l1' or 'smooth_l1', got {reg_loss!r}")
        self.terms = terms
        self.loss_weights = {"feat": check_weight("loss_feat_weight", loss_feat_weight),
                             "cls": check_weight("loss_cls_weight", loss_cls_weight),
                             "reg": check_weight("loss_reg_weight", loss_reg_weight)}
        self.decay, self.adaptive, self.temperature = decay, adaptive, temperature
        self.sigma_ratio, self.reg_margin, self.reg_loss, self.smooth_l1_beta = sigma_ratio, reg_margin, reg_loss, smooth_l1_beta
        self.adapter = nn.Conv2d(student.neck.out_channels, teacher.neck.out_channels, 1) if "feat" in terms else None
        # Per step, the share of positive regions the teacher-wins rule keeps for each term (the
        # trainer logs it as kept_cls / kept_reg; docs/tadf.md).
        self.step_stats: dict[str, float] = {}
        self.to(next(student.parameters()).device)

    @property
    def strides(self) -> tuple[int, ...]:
        """The strides of the student's FPN levels (P2-P6 for Faster R-CNN, P3-P7 for RetinaNet)."""
        return self.student.feature_strides

    # ------------------------------------------------------------------ terms
    def feature_loss(self, feats: list[torch.Tensor], teacher_feats: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
        masks = [torch.stack([gaussian_fg_mask(t["boxes"].float(), f.shape[-2:], stride, self.sigma_ratio) for t in targets])
                 for f, stride in zip(feats, self.strides)]
        return masked_feature_loss([self.adapter(f) for f in feats], teacher_feats, masks)

    def classification_loss(self, logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, num_pos: torch.Tensor,
                 use_sigmoid: bool) -> torch.Tensor:
        kl = soft_label_kl(logits, teacher_logits, self.temperature, use_sigmoid)
        if self.adaptive:
            mask = teacher_better_cls_mask(logits.detach(), teacher_logits, labels, use_sigmoid)
            kl = kl * mask
            self.step_stats["kept_cls"] = float(mask.float().mean()) if mask.numel() else math.nan
        return kl.sum() / num_pos

    def regression_loss(self, deltas: torch.Tensor, teacher_deltas: torch.Tensor, boxes: torch.Tensor,
                    teacher_boxes: torch.Tensor, gt_boxes: torch.Tensor, num_pos: torch.Tensor) -> torch.Tensor:
        if self.reg_loss == "l1":
            loss = (deltas.float() - teacher_deltas.float().detach()).abs().sum(-1)
        else:
            loss = F.smooth_l1_loss(deltas.float(), teacher_deltas.float().detach(), beta=self.smooth_l1_beta,
                                    reduction="none").sum(-1)
        if self.adaptive:
            mask = teacher_better_reg_mask(boxes.detach(), teacher_boxes, gt_boxes, self.reg_margin)
            loss = loss * mask
            self.step_stats["kept_reg"] = float(mask.float().mean()) if mask.numel() else math.nan
        return loss.sum() / num_pos

    # ---------------------------------------------------------------- forward
    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        student, teacher = self.student, self.teacher
        if targets is None:
            raise ValueError("TADF returns training losses and needs targets; call distiller.student(images) for inference")
        check_targets(targets, len(images), student.num_classes)
        self.step_stats = {}
        batch, targets = student.preprocess(images, targets)
        feats = student.extract_feats(batch.tensors)
        with torch.no_grad():
            t_feats = teacher.extract_feats(teacher_inputs(batch, student.transform, teacher.transform))
        if len(feats) != len(t_feats):
            raise ValueError(f"student FPN has {len(feats)} levels, teacher FPN {len(t_feats)}")
        pair = self._two_stage if self.kind == "two_stage" else self._retinanet
        losses, kd = pair(feats, t_feats, targets, batch.image_sizes)
        if "feat" in self.terms:
            kd["feat"] = self.feature_loss(feats, t_feats, targets)
        factor = decay_factor(self.progress, self.decay)
        losses.update({f"loss_kd_{name}": factor * self.loss_weights[name] * kd[name] for name in self.terms})
        return losses

    def _two_stage(self, feats, t_feats, targets, image_sizes) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Region proposal sharing: the student's sampled RoIs through the teacher's RoI head."""
        losses, out = self.student.forward_train(feats, targets, image_sizes)
        sampled = out.sampled
        kd: dict[str, torch.Tensor] = {}
        if not {"cls", "reg"} & set(self.terms):
            return losses, kd
        with torch.no_grad():
            t_cls, t_deltas = self.teacher.roi_head.forward_rois(t_feats, sampled.rois)
        pos = sampled.pos_mask
        labels = sampled.labels[pos]
        num_pos = reduce_mean(pos.sum().float()).clamp(min=1.0)
        if "cls" in self.terms:
            kd["cls"] = self.classification_loss(out.cls_logits[pos], t_cls[pos], labels, num_pos, use_sigmoid=False)
        if "reg" in self.terms:
            d = RoIHead.class_deltas(out.deltas[pos].float(), labels)
            td = RoIHead.class_deltas(t_deltas[pos].float(), labels)
            rois = sampled.roi_boxes[pos]
            roi_head = self.student.roi_head
            kd["reg"] = self.regression_loss(d, td, roi_head.decode_class_deltas(rois, d.detach()),
                                             roi_head.decode_class_deltas(rois, td), sampled.gt_boxes[pos], num_pos)
        return losses, kd

    def _retinanet(self, feats, t_feats, targets, image_sizes) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Shared anchors and the student's assignment: the same positive anchors index both heads."""
        head = self.student.bbox_head
        outputs = head(feats)
        losses, assignment = head.loss_and_assignment(outputs, targets, image_sizes)
        kd: dict[str, torch.Tensor] = {}
        if not {"cls", "reg"} & set(self.terms):
            return losses, kd
        with torch.no_grad():
            t_outputs = self.teacher.bbox_head(t_feats)
        pos, n = assignment.positive, len(targets)
        flat, t_flat = head.flatten(outputs), head.flatten(t_outputs)
        cls, t_cls = flat["cls"][pos], t_flat["cls"][pos]
        labels, gt = assignment.labels[pos], assignment.pos_gt_boxes
        num_pos = reduce_mean(pos.sum().float()).clamp(min=1.0)
        if "cls" in self.terms:
            kd["cls"] = self.classification_loss(cls, t_cls, labels, num_pos, use_sigmoid=True)
        if "reg" in self.terms:
            reg, t_reg = flat["reg"][pos].float(), t_flat["reg"][pos].float()
            level_priors = head.priors(head.level_sizes(outputs), feats[0].device)
            pri = torch.cat(level_priors)[None].expand(n, -1, -1)[pos]
            strides = head.prior_strides(level_priors)[None].expand(n, -1)[pos]
            kd["reg"] = self.regression_loss(reg, t_reg, head.decode(reg.detach(), pri, strides),
                                             head.decode(t_reg, pri, strides), gt, num_pos)
        return losses, kd

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, terms={self.terms}, loss_weights={self.loss_weights}, decay={self.decay!r}, "
                f"adaptive={self.adaptive}, temperature={self.temperature}")

"""CrossKD: cross-head knowledge distillation (docs/crosskd.md) for GFL, ATSS, RetinaNet and FCOS.

The student's head feature after tower layer ``layer`` (after that layer's ReLU, as the
reference code computes it; ``tap='pre_relu'`` for the reading of its text) is aligned to the
teacher's per-channel statistics and run through the *frozen teacher's* remaining tower
layers and predictors; the KD losses compare that cross-head prediction with the teacher's
own prediction, so the student's later head layers see only detection losses.

One code path, four modes (``mode=``), so the baselines differ from CrossKD by one switch:

* ``'crosskd'``      KD losses on the cross-head predictions (the method);
* ``'mimic'``        the same KD losses on the student's own predictions (prediction mimicking);
* ``'pkd'``          the PKD feature loss on the FPN levels only;
* ``'crosskd+pkd'``  and ``'mimic+pkd'``: both terms.

Weights, reductions and normalisers follow the reference implementation's code
(docs/crosskd.md, "What the reference code does"); where it is silent the choice is documented
at the loss.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..criterion import Assignment
from ..dense_head import DenseHead, LevelOutputs
from ..detector import check_targets
from . import Distiller, check_weight, register_distiller, teacher_inputs

__all__ = [
    "CrossKD",
    "align_statistics",
    "distribution_kl_loss",
    "kd_quality_focal_loss",
    "pkd_loss",
]

MODES = ("crosskd", "mimic", "pkd", "crosskd+pkd", "mimic+pkd")
#: Where the tower feature is tapped: after the layer's ReLU (what the reference computes, its
#: in-place ReLU overwriting the held tensor) or before it (what the reference's code reads as).
TAPS = ("post_relu", "pre_relu")
BRANCHES = ("cls", "reg")


# ------------------------------------------------------------------------------------ losses
def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over (N, H, W); unbiased like the reference, except on a single
    element (a 1x1 P7 map of one image) where the unbiased std is undefined."""
    correction = 1 if x.numel() // x.shape[1] > 1 else 0
    var, mean = torch.var_mean(x, (0, 2, 3), correction=correction, keepdim=True)  # one pass over x
    return mean, var.sqrt()


def _standardise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean, std = _channel_stats(x)
    return (x - mean) / (std + eps)


def align_statistics(student_feat: torch.Tensor, teacher_feat: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """docs/crosskd.md, "Alignment": standardise the student feature per channel over (N, H, W) and
    rescale it to the teacher's per-channel mean/std at the same tower position (no parameters)."""
    if student_feat.shape[1] != teacher_feat.shape[1]:
        raise ValueError(f"student feature has {student_feat.shape[1]} channels, teacher feature "
                         f"{teacher_feat.shape[1]}; an adapter must map one onto the other first")
    t_mean, t_std = _channel_stats(teacher_feat.detach())
    return _standardise(student_feat, eps) * t_std + t_mean


def kd_quality_focal_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """KD quality focal loss, element-wise [K, C]: BCE-with-logits against the teacher's sigmoid
    scores, modulated by |sigmoid(logits) - target|^beta (no temperature)."""
    target = teacher_logits.detach().sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce * (logits.sigmoid() - target).abs().pow(beta)


def distribution_kl_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                         bin_reduction: str = "sum") -> torch.Tensor:
    """KL(teacher || student) between softmax distributions over the last dim, per row [K].

    The per-bin terms are *summed* over the bins (every CrossKD GFL config sets
    ``KnowledgeDistillationKLDivLoss(class_reduction='sum')``; ``bin_reduction='mean'`` gives
    1/bins of it) and scaled by T^2."""
    if bin_reduction not in ("sum", "mean"):
        raise ValueError(f"bin_reduction must be 'sum' or 'mean', got {bin_reduction!r}")
    target = F.softmax(teacher_logits.detach() / temperature, -1)
    kl = F.kl_div(F.log_softmax(logits / temperature, -1), target, reduction="none")
    kl = kl.sum(-1) if bin_reduction == "sum" else kl.mean(-1)
    return kl * temperature ** 2


def pkd_loss(feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """PKD (docs/crosskd.md, "+PKD"): both maps normalised per channel over (N, H, W), then MSE / 2."""
    return F.mse_loss(_standardise(feat), _standardise(teacher_feat.detach())) / 2


# ------------------------------------------------------------------------------ distiller
def _head_channels(head: DenseHead, layer: int) -> int:
    return head.feat_channels if layer > 0 else head.in_channels


def check_pair(student: nn.Module, teacher: nn.Module) -> tuple[DenseHead, DenseHead]:
    """Fail early, naming both values, when the teacher's predictions cannot be compared with
    the student's location by location (different families, classes, strides, priors, bins)."""
    for role, model in (("student", student), ("teacher", teacher)):
        head = getattr(model, "bbox_head", None)
        if not isinstance(head, DenseHead) or head.kd_defaults is None:
            raise TypeError(f"CrossKD supports dense detectors whose head defines kd_defaults (GFL, ATSS, RetinaNet, "
                            f"FCOS); the {role} has bbox_head of type {type(head).__name__}")
    s, t = student.bbox_head, teacher.bbox_head
    if type(s) is not type(t):
        raise ValueError(f"student and teacher heads must be the same family: student {type(s).__name__}, "
                         f"teacher {type(t).__name__}")
    for attr in ("num_classes", "strides", "num_anchors", "reg_channels", "reg_distribution_bins"):
        if getattr(s, attr) != getattr(t, attr):
            raise ValueError(f"student and teacher differ in {attr}: student {getattr(s, attr)}, "
                             f"teacher {getattr(t, attr)}")
    sizes = [(2, 3)] * len(s.strides)
    if not all(torch.equal(a, b) for a, b in zip(s.priors(sizes, "cpu"), t.priors(sizes, "cpu"))):
        layout = lambda h: {k: getattr(h.anchor_generator, k) for k in ("scales", "ratios")}  # noqa: E731
        raise ValueError(f"student and teacher anchor layouts differ: student {layout(s)}, teacher {layout(t)}")
    return s, t


@register_distiller("crosskd")
class CrossKD(Distiller):
    """``build_distiller('crosskd', student, teacher, mode='crosskd', layer=None, ...)``.

    Args:
        mode: one of ``MODES`` (see the module docstring).
        layer: tower layer whose output feeds the teacher's head (``0``: the FPN feature); defaults
            3, and 2 for FCOS.
        tap: ``'post_relu'`` (default: the feature after layer ``layer``'s ReLU, student and teacher,
            the reference's effective behaviour) or ``'pre_relu'`` (after conv + norm, before the ReLU).
        loss_cls_weight, loss_reg_weight, loss_centerness_weight, loss_pkd_weight: ``None``
            takes the family's reference weight (``bbox_head.kd_defaults``).
        beta: KD-QFL modulation exponent. temperature: GFL distribution KL temperature (student
            and teacher alike, loss scaled by T^2, as in the reference).
        teacher_cls_temperature, teacher_reg_temperature: divide the *teacher's* class logits (its
            box-distribution logits, GFL) wherever the KD losses read them (the KD-QFL targets, the
            box terms' per-location weights, the distribution KL targets); the student's side is
            unchanged. ``1`` (default) is the reference; below 1 sharpens the targets, above 1
            softens them, without changing the teacher's ranking of locations (the
            sharpness experiment of docs/distill_results.md).
        kl_bin_reduction: ``'sum'`` (the reference configs) or ``'mean'`` over GFL's 17 bins.
        align: per-channel statistics alignment of the student feature (the reference: on).

    Different head widths (or FPN widths when ``layer=0``) are bridged by a learned 1x1 conv
    per branch on the student's tap feature; different FPN widths by one 1x1 conv for PKD.
    Both are trained with the student and left out of :meth:`student_state_dict`.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, mode: str = "crosskd", layer: int | None = None,
                 loss_cls_weight: float | None = None, loss_reg_weight: float | None = None,
                 loss_centerness_weight: float | None = None, loss_pkd_weight: float | None = None,
                 beta: float = 1.0, temperature: float = 1.0, align: bool = True, tap: str = "post_relu",
                 kl_bin_reduction: str = "sum", teacher_cls_temperature: float = 1.0,
                 teacher_reg_temperature: float = 1.0) -> None:
        super().__init__(student, teacher)
        s_head, t_head = check_pair(student, teacher)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        parts = set(mode.split("+"))
        self.mode = mode
        self.cross_head, self.mimic, self.pkd = "crosskd" in parts, "mimic" in parts, "pkd" in parts
        defaults = s_head.kd_defaults
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
            raise ValueError(f"layer must be an integer (the head conv after which to cross), got {layer!r}")
        self.layer = int(defaults["layer"] if layer is None else layer)
        depth = min(s_head.stacked_convs, t_head.stacked_convs)
        if self.cross_head and not 0 <= self.layer <= depth:
            raise ValueError(f"layer must be in [0, {depth}] (student stacked_convs {s_head.stacked_convs}, "
                             f"teacher stacked_convs {t_head.stacked_convs}), got {self.layer}")
        given = {"cls": loss_cls_weight, "reg": loss_reg_weight, "centerness": loss_centerness_weight, "pkd": loss_pkd_weight}
        self.loss_weights = {k: check_weight(f"loss_{k}_weight", defaults[k] if v is None else v) for k, v in given.items()}
        check_weight("beta", beta)
        if loss_pkd_weight is not None and not self.pkd:
            raise ValueError(f"loss_pkd_weight applies to the modes with PKD ({[m for m in MODES if 'pkd' in m]}); "
                             f"mode is {mode!r}: set mode to switch PKD on, or leave the weight out")
        if loss_centerness_weight is not None and not s_head.has_centerness:
            raise ValueError(f"loss_centerness_weight applies to heads with a centerness branch (ATSS, FCOS); the "
                             f"{type(s_head).__name__} head has none")
        if s_head.reg_distribution_bins is None and (temperature != 1 or kl_bin_reduction != "sum"):
            raise ValueError(f"temperature and kl_bin_reduction apply to box distributions (GFL); the "
                             f"{type(s_head).__name__} head regresses boxes directly, got temperature={temperature}, "
                             f"kl_bin_reduction={kl_bin_reduction!r}")
        for name, value in (("temperature", temperature), ("teacher_cls_temperature", teacher_cls_temperature),
                            ("teacher_reg_temperature", teacher_reg_temperature)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if teacher_reg_temperature != 1 and s_head.reg_distribution_bins is None:
            raise ValueError(f"teacher_reg_temperature applies to box distributions (GFL); the "
                             f"{type(s_head).__name__} head regresses boxes directly, got {teacher_reg_temperature}")
        if tap not in TAPS:
            raise ValueError(f"tap must be one of {TAPS}, got {tap!r}")
        if kl_bin_reduction not in ("sum", "mean"):
            raise ValueError(f"kl_bin_reduction must be 'sum' or 'mean', got {kl_bin_reduction!r}")
        self.tap, self.kl_bin_reduction = tap, kl_bin_reduction
        self.beta, self.temperature, self.align = beta, temperature, align
        self.teacher_cls_temperature, self.teacher_reg_temperature = float(teacher_cls_temperature), float(teacher_reg_temperature)

        s_ch, t_ch = _head_channels(s_head, self.layer), _head_channels(t_head, self.layer)
        self.tap_adapters = (nn.ModuleDict({b: nn.Conv2d(s_ch, t_ch, 1) for b in BRANCHES})
                             if self.cross_head and s_ch != t_ch else None)
        s_fpn, t_fpn = student.neck.out_channels, teacher.neck.out_channels
        self.feat_adapter = nn.Conv2d(s_fpn, t_fpn, 1) if self.pkd and s_fpn != t_fpn else None
        self.to(next(student.parameters()).device)

    # ------------------------------------------------------------------ pieces
    def cross_head_predictions(self, student_taps: list[dict[str, torch.Tensor]],
                               teacher_taps: list[dict[str, torch.Tensor]]) -> list[LevelOutputs]:
        """The student's tap features through the teacher's tower layers ``layer..`` and predictors
        (with the teacher's per-level ``Scale``), per level."""
        head = self.teacher.bbox_head
        outputs = []
        for level, (s_tap, t_tap) in enumerate(zip(student_taps, teacher_taps)):
            feats = {}
            for branch in BRANCHES:
                x = s_tap[branch]
                if self.tap_adapters is not None:
                    x = self.tap_adapters[branch](x)
                if self.align:
                    x = align_statistics(x, t_tap[branch])
                feats[branch] = head.forward_tower(x, branch, start=self.layer)
            outputs.append(head.predict_level(feats["cls"], feats["reg"], level))
        return outputs

    def prediction_kd_losses(self, preds: list[LevelOutputs], teacher_outputs: list[LevelOutputs],
                             assignment: Assignment) -> dict[str, torch.Tensor]:
        """The KD losses (docs/crosskd.md) between ``preds`` (cross-head or the student's own) and
        the teacher's outputs, taken over every location (no region selection), averaged over the
        student's ``assignment`` (the one its detection losses used)."""
        head = self.student.bbox_head
        p, t = head.flatten(preds), head.flatten(teacher_outputs)
        if self.teacher_cls_temperature != 1:  # sharpened (< 1) or softened (> 1) targets; teacher only
            t = {**t, "cls": t["cls"] / self.teacher_cls_temperature}
        if self.teacher_reg_temperature != 1:
            t = {**t, "reg": t["reg"] / self.teacher_reg_temperature}
        valid = assignment.valid.to(p["cls"].dtype)
        # The reference averages FCOS's KD terms by the sum of centerness targets (its bbox-loss
        # normaliser) and the other families' by the number of positives.
        norm = head.criterion.kd_avg_factor(assignment)
        w = self.loss_weights
        cls_kd = kd_quality_focal_loss(p["cls"], t["cls"], self.beta) * valid[..., None]
        losses = {"loss_kd_cls": w["cls"] * cls_kd.sum() / norm}
        # Per-location confidence of the teacher weights the box terms; ignored priors get 0.
        t_score = t["cls"].detach().amax(-1).sigmoid() * valid
        bins = head.reg_distribution_bins
        if bins is not None:
            kl = distribution_kl_loss(p["reg"].reshape(-1, bins), t["reg"].reshape(-1, bins), self.temperature,
                                      self.kl_bin_reduction)
            # Reference: KL summed over the bins, sides summed / 4, divided by the sum of the location weights.
            kl = kl.reshape(*t_score.shape, 4).mean(-1)
            losses["loss_kd_reg"] = w["reg"] * (kl * t_score).sum() / t_score.sum().clamp(min=1e-6)
        else:
            level_priors = head.priors(head.level_sizes(preds), p["cls"].device)
            n = p["reg"].shape[0]
            priors = torch.cat(level_priors).repeat(n, 1)
            strides = head.prior_strides(level_priors).repeat(n)
            boxes = head.decode(p["reg"].reshape(-1, head.reg_channels), priors, strides)
            t_boxes = head.decode(t["reg"].detach().reshape(-1, head.reg_channels), priors, strides)
            box_loss = head.criterion.kd_box_loss(boxes, t_boxes)
            losses["loss_kd_reg"] = w["reg"] * (box_loss * t_score.reshape(-1)).sum() / norm
        if w["centerness"] > 0 and head.has_centerness:
            pos = assignment.positive
            ctr = F.binary_cross_entropy_with_logits(p["centerness"][pos], t["centerness"][pos].detach().sigmoid(),
                                                     reduction="sum")
            losses["loss_kd_centerness"] = w["centerness"] * ctr / assignment.num_pos
        return losses

    def feature_kd_loss(self, feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
        """PKD summed over the FPN levels (the reference adds one term per level)."""
        if self.feat_adapter is not None:
            feats = [self.feat_adapter(f) for f in feats]
        return self.loss_weights["pkd"] * sum(pkd_loss(f, tf) for f, tf in zip(feats, teacher_feats))

    # ----------------------------------------------------------------- forward
    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        student, teacher = self.student, self.teacher
        if targets is None:
            raise ValueError("CrossKD returns training losses and needs targets; call distiller.student(images) "
                             "for inference")
        check_targets(targets, len(images), student.num_classes)
        batch, targets = student.preprocess(images, targets)
        activated = self.tap == "post_relu"
        # No graph through the teacher's backbone, neck or towers; only the cross-head path below
        # builds one through its later layers.
        with torch.no_grad():
            t_feats = teacher.extract_feats(teacher_inputs(batch, student.transform, teacher.transform))
            if self.cross_head:
                t_out, t_taps = teacher.bbox_head.forward_taps(t_feats, self.layer, activated=activated)
            else:
                t_out = teacher.bbox_head(t_feats)
        s_feats = student.extract_feats(batch.tensors)
        if self.cross_head:
            s_out, s_taps = student.bbox_head.forward_taps(s_feats, self.layer, activated=activated)
        else:
            s_out = student.bbox_head(s_feats)
        # The KD terms average over the positives the detection losses used.
        losses, assignment = student.bbox_head.loss_and_assignment(s_out, targets, batch.image_sizes)
        if self.cross_head or self.mimic:
            preds = self.cross_head_predictions(s_taps, t_taps) if self.cross_head else s_out
            losses.update(self.prediction_kd_losses(preds, t_out, assignment))
        if self.pkd:
            losses["loss_kd_feat"] = self.feature_kd_loss(s_feats, t_feats)
        return losses

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)}" for k in ("teacher_cls_temperature", "teacher_reg_temperature")
                        if getattr(self, k) != 1)
        return f"mode={self.mode!r}, layer={self.layer}, tap={self.tap!r}, loss_weights={self.loss_weights}{extra}"

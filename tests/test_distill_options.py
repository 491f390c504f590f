"""Distiller options that would corrupt training without an error are refused when the distiller is
built: shared student/teacher tensors, negative or non-finite weights, TADF without a term, CrossKD
options that do nothing for the student's head or mode."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import kdzoo
from kdzoo.distill import build_distiller

SMALL = dict(num_classes=3, input_size=(96, 96), fpn_channels=16, stacked_convs=3)  # CrossKD crosses after conv 3


def mk(name: str, **kw):
    torch.manual_seed(0)
    return kdzoo.create_detector(name, **{**SMALL, **kw})


def test_student_and_teacher_sharing_tensors_is_refused() -> None:
    s, t = mk("gfl_r18"), mk("gfl_r18")
    s.backbone = t.backbone  # "initialise the student from the teacher" by assignment
    trainable = sum(p.requires_grad for p in s.parameters())
    with pytest.raises(ValueError, match=r"student and teacher share \d+ parameter\(s\)/buffer\(s\), e.g. \['backbone"):
        build_distiller("crosskd", s, t)
    assert sum(p.requires_grad for p in s.parameters()) == trainable and s.backbone.training  # nothing frozen
    s = mk("gfl_r18")
    with pytest.raises(ValueError, match="shallow copy"):
        build_distiller("crosskd", s, copy.copy(s))
    build_distiller("crosskd", s, copy.deepcopy(s))  # a deep copy is a teacher of its own


@pytest.mark.parametrize("option, value", [("loss_cls_weight", -1.0), ("loss_reg_weight", math.nan),
                                           ("loss_pkd_weight", -0.5), ("beta", -1.0), ("beta", math.inf)])
def test_crosskd_weights_must_be_finite_and_non_negative(option: str, value: float) -> None:
    mode = "crosskd+pkd" if option == "loss_pkd_weight" else "crosskd"
    with pytest.raises(ValueError, match=rf"{option} must be a finite number >= 0"):
        build_distiller("crosskd", mk("gfl_r18"), mk("gfl_r18", fpn_channels=24), mode=mode, **{option: value})


@pytest.mark.parametrize("student, options, message", [
    ("gfl_r18", {"loss_pkd_weight": 2.0}, r"loss_pkd_weight applies to the modes with PKD .*mode is 'crosskd'"),
    ("gfl_r18", {"loss_centerness_weight": 5.0}, "loss_centerness_weight applies to heads with a centerness branch"),
    ("atss_r18", {"temperature": 5.0}, "temperature and kl_bin_reduction apply to box distributions"),
    ("retinanet_r18", {"kl_bin_reduction": "mean"}, "the RetinaHead head regresses boxes directly"),
    ("gfl_r18", {"layer": 1.5}, "layer must be an integer"),
])
def test_crosskd_options_that_would_do_nothing_are_refused(student: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_distiller("crosskd", mk(student), mk(student, fpn_channels=24), **options)
    # the same options where they apply are accepted
    if "loss_pkd_weight" in options:
        build_distiller("crosskd", mk(student), mk(student, fpn_channels=24), mode="crosskd+pkd", **options)


@pytest.mark.parametrize("options, message", [
    ({"terms": []}, r"terms must name at least one of \('feat', 'cls', 'reg'\), got none"),
    ({"loss_feat_weight": -1.0}, "loss_feat_weight must be a finite number >= 0"),
    ({"loss_reg_weight": math.nan}, "loss_reg_weight must be a finite number >= 0"),
    ({"sigma_ratio": 0.0}, "sigma_ratio must be > 0"),
    ({"smooth_l1_beta": -1.0}, "smooth_l1_beta must be a finite number >= 0"),
    ({"reg_margin": math.inf}, "reg_margin must be a finite number"),
])
def test_tadf_options_checked_when_built(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_distiller("tadf", mk("retinanet_r18"), mk("retinanet_r18", fpn_channels=24), **options)

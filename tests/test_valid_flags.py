"""Priors outside an image's own extent (batch padding) and where loss normalisers are averaged
over processes: MMDetection's behaviour, which kdzoo's heads and CrossKD follow."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import kdzoo
from kdzoo.assigners import IGNORE
from kdzoo.distill import build_distiller
from kdzoo.priors import valid_flags

SMALL = {"num_classes": 3, "fpn_channels": 32, "input_size": (96, 96), "norm_eval": False, "frozen_stages": -1}
ANCHOR_HEADS = {"gfl": "gfl_r18", "atss": "atss_r18", "retinanet": "retinanet_r18"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_valid_flags_by_hand() -> None:
    # A 40x70 image padded to 64x96 (divisor 32) in a 96x128 batch: stride 8 gives 12x16 cells of which
    # ceil(64 / 8) = 8 rows and ceil(96 / 8) = 12 columns are over the image's own padded extent.
    flags = valid_flags([(12, 16), (2, 2)], (8, 64), 2, (40, 70))
    f = flags[0].view(12, 16, 2)
    assert f[:8, :12].all() and not f[8:].any() and not f[:, 12:].any()
    assert flags[0].sum() == 8 * 12 * 2
    # stride 64: ceil(64 / 64) = 1 row, ceil(96 / 64) = 2 columns
    assert flags[1].view(2, 2, 2)[:, :, 0].tolist() == [[True, True], [False, False]]


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = kdzoo.create_detector(name, **SMALL)
    for m in model.bbox_head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.1)
    return model


def _batch():
    # The second image is wide and low (96x30 after the keep-ratio resize, 96x32 padded): two thirds
    # of its 96x96 batch slot is padding.
    images = [torch.rand(3, 96, 96), torch.rand(3, 30, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[2.0, 3.0, 40.0, 28.0]]), "labels": torch.tensor([2])}]
    return images, targets


def _perturbed_outside(model, outputs, image_sizes):
    """The head outputs with every value at the second image's padded priors replaced by noise."""
    head = model.bbox_head
    flags = head.valid_flags(head.level_sizes(outputs), image_sizes[1])
    out = []
    for o, f in zip(outputs, flags):
        h, w = o["cls"].shape[-2:]
        cell = f.view(h, w, -1)[..., 0]  # flags are per location
        new = {}
        for k, v in o.items():
            v = v.clone()
            noise = torch.randn_like(v[1]) * 5
            v[1] = torch.where(cell[None], v[1], noise)
            new[k] = v
        out.append(new)
    return out


@pytest.mark.parametrize("family", ANCHOR_HEADS)
def test_padded_priors_carry_no_detection_loss(family: str) -> None:
    model = _model(ANCHOR_HEADS[family]).train()
    images, targets = _batch()
    batch, targets = model.preprocess(images, targets)
    with torch.no_grad():
        outputs = model.bbox_head(model.extract_feats(batch.tensors))
        assigned = model.bbox_head.assign(outputs, targets, batch.image_sizes).gt_index
        base = model.bbox_head.loss(outputs, targets, batch.image_sizes)
        moved = model.bbox_head.loss(_perturbed_outside(model, outputs, batch.image_sizes), targets, batch.image_sizes)
    flags = torch.cat(model.bbox_head.valid_flags(model.bbox_head.level_sizes(outputs), batch.image_sizes[1]))
    assert (assigned[1][~flags] == IGNORE).all() and (~flags).sum() > 0
    assert (assigned[1][flags] != IGNORE).any()
    for k in base:
        assert torch.allclose(base[k], moved[k], rtol=1e-5, atol=1e-6), (family, k)
    # Without valid flags (the old behaviour) the padded priors are negatives and change the loss.
    with torch.no_grad():
        model.bbox_head.uses_valid_flags = False
        try:
            old = model.bbox_head.loss(_perturbed_outside(model, outputs, batch.image_sizes), targets, batch.image_sizes)
        finally:
            model.bbox_head.uses_valid_flags = True
    assert not torch.allclose(base["loss_cls"], old["loss_cls"])


def test_atss_candidates_exclude_padded_priors() -> None:
    """ATSS picks its top-9 candidates per level among the image's own priors only: a GT box at the
    image's edge would otherwise draw candidates (and the IoU threshold) from the padding."""
    model = _model("atss_r18")
    head = model.bbox_head
    sizes = [(12, 12), (6, 6), (3, 3), (2, 2), (1, 1)]
    priors = head.priors(sizes, "cpu")
    outputs = [{"cls": torch.zeros(1, 3, h, w)} for h, w in sizes]
    box = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    assigned = head.assign(outputs, [{"boxes": box, "labels": torch.tensor([0])}], [(40, 40)]).gt_index[0]
    flags = torch.cat(head.valid_flags(sizes, (40, 40)))
    inside = head.criterion.assign_single([p[f] for p, f in zip(priors, head.valid_flags(sizes, (40, 40)))], box)
    assert torch.equal(assigned[flags], inside)
    assert (assigned[~flags] == IGNORE).all()


def test_fcos_keeps_every_point_as_mmdetection() -> None:
    model = _model("fcos_r18")
    images, targets = _batch()
    batch, targets = model.preprocess(images, targets)
    with torch.no_grad():
        outputs = model.bbox_head(model.extract_feats(batch.tensors))
    assert not (model.bbox_head.assign(outputs, targets, batch.image_sizes).gt_index == IGNORE).any()


@pytest.mark.parametrize("family", ["gfl", "retinanet"])
def test_padded_priors_carry_no_kd_loss(family: str) -> None:
    student, teacher = _model(ANCHOR_HEADS[family]), _model(ANCHOR_HEADS[family])
    torch.manual_seed(1)
    for p in teacher.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    distiller = build_distiller("crosskd", student, teacher, mode="mimic").train()
    images, targets = _batch()
    batch, targets = student.preprocess(images, targets)
    head = student.bbox_head
    with torch.no_grad():
        s_out = head(student.extract_feats(batch.tensors))
        t_out = teacher.bbox_head(teacher.extract_feats(batch.tensors))
        assignment = head.assign(s_out, targets, batch.image_sizes)
        base = distiller.prediction_kd_losses(s_out, t_out, assignment)
        moved = distiller.prediction_kd_losses(_perturbed_outside(student, s_out, batch.image_sizes), t_out, assignment)
    for k in base:
        assert torch.allclose(base[k], moved[k], rtol=1e-5, atol=1e-6), (family, k)


def test_reduce_mean_only_where_mmdetection_applies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """GFL/ATSS/FCOS average their normalisers over processes; RetinaNet (AnchorHead), the RPN and the
    RoI head use each process's own counts. A fake 'other process' doubling every reduced value
    shows which losses depend on it."""
    import kdzoo.criterion

    images, targets = _batch()
    results = {}
    for family in ("gfl", "retinanet"):
        model = _model(ANCHOR_HEADS[family]).train()
        torch.manual_seed(0)
        plain = model(images, targets)
        monkeypatch.setattr(kdzoo.criterion, "reduce_mean", lambda t: t * 2)
        torch.manual_seed(0)
        doubled = model(images, targets)
        monkeypatch.undo()
        results[family] = (plain["loss_cls"].item(), doubled["loss_cls"].item())
    assert results["gfl"][1] == pytest.approx(results["gfl"][0] / 2, rel=1e-5)
    assert results["retinanet"][1] == pytest.approx(results["retinanet"][0], rel=1e-6)
    import kdzoo.faster_rcnn

    assert not hasattr(kdzoo.faster_rcnn, "reduce_mean")  # the two-stage losses never average over processes

"""Weights trained for another class count (timm's classifier rule): the layers sized by
``num_classes`` start afresh, everything else loads exactly; teachers always load strictly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import kdzoo


@pytest.mark.parametrize("arch, fresh", [
    ("gfl_r18", {"bbox_head.gfl_cls.weight", "bbox_head.gfl_cls.bias"}),
    ("faster_rcnn_r18", {"roi_head.bbox_head.fc_cls.weight", "roi_head.bbox_head.fc_cls.bias",
                         "roi_head.bbox_head.fc_reg.weight", "roi_head.bbox_head.fc_reg.bias"}),
])
def test_weights_for_other_classes_load_all_but_the_classifier(arch: str, fresh: set[str], tmp_path: Path) -> None:
    torch.manual_seed(0)
    coco = kdzoo.create_detector(arch, num_classes=80, fpn_channels=32)
    weights = tmp_path / "coco.pth"
    torch.save(coco.state_dict(), weights)
    model = kdzoo.create_detector(arch, pretrained=True, pretrained_cfg_overlay={"file": str(weights)},
                                  num_classes=3, fpn_channels=32)
    assert set(model.classifier_keys()) == fresh
    source, own = coco.state_dict(), model.state_dict()
    for k, v in own.items():
        if k in fresh:
            assert v.shape[0] in (3, 3 + 1, 3 * 4) and v.shape != source[k].shape, k  # scores (+ background), deltas
        else:
            assert torch.equal(v, source[k]), k
    if arch == "gfl_r18":  # focal-loss prior on the fresh class scores (MMDetection's bias_init_with_prob(0.01))
        assert torch.allclose(own["bbox_head.gfl_cls.bias"], torch.full((3,), -4.59512), atol=1e-4)
    assert model.num_classes == 3 and model.pretrained_cfg.num_classes == 3 and model.pretrained_cfg.categories == ()
    # the same class count loads strictly, as before
    same = kdzoo.create_detector(arch, pretrained=True, pretrained_cfg_overlay={"file": str(weights)},
                                 num_classes=80, fpn_channels=32)
    assert all(torch.equal(v, source[k]) for k, v in same.state_dict().items())
    # other mismatches are still errors naming the weights
    with pytest.raises(RuntimeError, match=r"(?s)weights of .* does not match .*shape mismatch"):
        kdzoo.create_detector(arch, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, num_classes=3,
                              fpn_channels=64)


def test_a_teacher_file_for_other_classes_is_refused(tmp_path: Path) -> None:
    from kdzoo.checkpoint import CheckpointError
    from kdzoo.engine.build import build_teacher
    from kdzoo.recipe import recipe_from_dict

    torch.manual_seed(0)
    weights = tmp_path / "teacher.pth"
    torch.save(kdzoo.create_detector("gfl_r18", num_classes=80, fpn_channels=32).state_dict(), weights)
    recipe = recipe_from_dict({"model": {"name": "gfl_r18"}, "data": {"root": "x"}, "output_dir": str(tmp_path / "o"),
                               "schedule": {"iters": 1},
                               "teacher": {"name": "gfl_r18", "checkpoint": str(weights), "kwargs": {"fpn_channels": 32}},
                               "distill": {"method": "crosskd"}})
    with pytest.raises(CheckpointError, match=rf"(?s){weights}.*teacher.checkpoint.*shape mismatch.*gfl_cls"):
        build_teacher(recipe, num_classes=3)
    assert build_teacher(recipe, num_classes=80).num_classes == 80

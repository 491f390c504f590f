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


def test_a_training_checkpoint_loads_as_the_weights_its_run_would_save(tmp_path: Path) -> None:
    """A run's checkpoint.pt (e.g. a teacher part-way through training) loads as a weights file: a
    plain detector's weights, a distiller's student without its adapters, or the EMA student when the
    run averages (the weights it evaluates and saves)."""
    from kdzoo.checkpoint import rng_state, save_checkpoint
    from kdzoo.engine.build import build_teacher
    from kdzoo.recipe import recipe_from_dict

    def make(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return kdzoo.create_detector("gfl_r18", num_classes=3, fpn_channels=32)

    def save(path: Path, model: torch.nn.Module, **hooks) -> Path:
        save_checkpoint(path, iteration=7, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        scheduler={}, scaler=torch.amp.GradScaler("cpu", enabled=False), rngs=[rng_state()],
                        recipe={}, hooks=hooks or None)
        return path

    def load(path: Path) -> dict[str, torch.Tensor]:
        return kdzoo.create_detector("gfl_r18", pretrained=True, num_classes=3, fpn_channels=32,
                                     pretrained_cfg_overlay={"file": str(path), "num_classes": 3}).state_dict()

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    plain, other = make(0), make(1)
    assert not same(plain.state_dict(), other.state_dict())
    assert same(load(save(tmp_path / "plain.pt", plain)), plain.state_dict())

    distiller = torch.nn.Module()  # what a distiller checkpoints: its student and adapters, never the teacher
    distiller.student, distiller.tap_adapters = plain, torch.nn.ModuleList([torch.nn.Conv2d(8, 32, 1)])
    assert same(load(save(tmp_path / "kd.pt", distiller)), plain.state_dict())

    ema = save(tmp_path / "ema.pt", plain, ema={"module": other.state_dict(), "updates": 3})
    assert same(load(ema), other.state_dict())

    recipe = recipe_from_dict({"model": {"name": "gfl_r18"}, "data": {"root": "x"}, "output_dir": str(tmp_path / "o"),
                               "schedule": {"iters": 1}, "distill": {"method": "crosskd"},
                               "teacher": {"name": "gfl_r18", "checkpoint": str(tmp_path / "plain.pt"),
                                           "kwargs": {"fpn_channels": 32}}})
    assert same(build_teacher(recipe, num_classes=3).state_dict(), plain.state_dict())
    # an unfinished run directory is refused with the way to use its checkpoint
    (tmp_path / "running").mkdir()
    save(tmp_path / "running" / "checkpoint.pt", plain)
    recipe.teacher.checkpoint = str(tmp_path / "running")
    with pytest.raises(FileNotFoundError, match=r"not a finished kdzoo run directory.*teacher.checkpoint to its "
                                                r"checkpoint.pt \(or a checkpoint_iter\{N\}.pt it kept, recipe key "
                                                r"keep_checkpoints\) and teacher.name"):
        build_teacher(recipe, num_classes=3)

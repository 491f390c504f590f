"""Distilling for your own data, as docs/custom_data.md tells a user: the recipes/custom chain
(fine-tune a teacher, distil a student) on a YOLO folder, and a YOLO copy of a COCO dataset trains
exactly the model the COCO JSON trains."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdzoo.data.shapes import generate_shapes
from kdzoo.data.yolo import write_yolo
from kdzoo.engine import train
from kdzoo.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("own")
    coco = generate_shapes(root / "coco", num_train=12, num_val=6, image_size=96, seed=0, workers=1)
    yolo = root / "yolo"
    for split in ("train", "val"):
        write_yolo(coco / "annotations" / f"instances_{split}.json", coco / split, yolo, split)
    return coco, yolo


# Small enough for the CPU test suite; everything else is the recipe as shipped.
TINY = ["schedule.epochs=null", "schedule.iters=4", "schedule.warmup_iters=2", "batch_size=2", "workers=0",
        "data.input_size=[96, 96]", "eval_interval=2", "checkpoint_interval=2", "log_interval=2"]


@pytest.mark.slow  # a ResNet-50 teacher: about 40 s on 2 cores (make test-slow)
def test_custom_recipes_fine_tune_then_distil_on_a_yolo_folder(data: tuple[Path, Path], tmp_path: Path) -> None:
    _, yolo = data
    runs = tmp_path / "runs"
    teacher = load_recipe(REPO / "recipes" / "custom" / "teacher.yaml", [
        f"data.root={yolo}", f"output_dir={runs / 'teacher'}", "model.pretrained=false", *TINY])
    assert (teacher.model.name, teacher.data.format, teacher.best.metric, teacher.tensorboard) == (
        "gfl_r50.mmdet_coco", "yolo", "AP", True)
    train(teacher)
    for name in ("config.json", "model.safetensors", "best.safetensors", "best.json", "eval.json"):
        assert (runs / "teacher" / name).is_file(), name
    assert any((runs / "teacher" / "tensorboard").iterdir())
    config = json.loads((runs / "teacher" / "config.json").read_text())
    assert config["pretrained_cfg"]["num_classes"] == 8 and config["pretrained_cfg"]["categories"][0] == "circle"

    kd = load_recipe(REPO / "recipes" / "custom" / "crosskd.yaml", [
        f"data.root={yolo}", f"output_dir={runs / 'crosskd'}", f"teacher.checkpoint={runs / 'teacher'}",
        "model.kwargs.backbone_pretrained=false", *TINY])
    assert (kd.model.name, kd.distill.method) == ("gfl_r18", "crosskd")
    metrics = train(kd)
    assert metrics is not None and 0.0 <= metrics["AP"] <= 100.0
    student = json.loads((runs / "crosskd" / "config.json").read_text())
    assert student["architecture"] == "gfl_r18" and student["pretrained_cfg"]["num_classes"] == 8


def test_a_yolo_copy_trains_the_same_model_as_the_coco_json(data: tuple[Path, Path], tmp_path: Path) -> None:
    coco, yolo = data
    common = ["model.name=gfl_r18", "model.kwargs={fpn_channels: 32, frozen_stages: -1, norm_eval: false}",
              "schedule.iters=3", "batch_size=2", "workers=0", "seed=0"]
    base = REPO / "recipes" / "shapes" / "gfl_student.yaml"
    a = load_recipe(base, [f"data.root={coco}", "data.shapes=null", f"output_dir={tmp_path / 'coco'}", *common])
    b = load_recipe(base, [f"data.root={yolo}", "data.shapes=null", "data.format=yolo", f"output_dir={tmp_path / 'yolo'}",
                           *common])
    ma, mb = train(a), train(b)
    assert ma["AP"] == mb["AP"] and ma["per_class"] == mb["per_class"]
    from safetensors.torch import load_file

    wa, wb = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("coco", "yolo"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
